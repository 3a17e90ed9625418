"""Running the ``gatehouse`` command as a real process from tests."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


async def gatehouse_async(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop: the test's peers serve meanwhile.

    The child gets this process's environment plus ``env``, without
    ``GATEHOUSE_CONFIG`` or Azure's variables (a test names the ones it means).
    """
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k != "GATEHOUSE_CONFIG" and not k.startswith(("AZURE_", "IDENTITY_", "MSI_"))
    }
    env = {**inherited, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
