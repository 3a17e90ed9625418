"""Running the ``gatehouse`` command as a real process from tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
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


def gatehouse_command(
    *args: str,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI and wait for it (a check, a key command): its output as text.

    ``env`` replaces the environment when given; otherwise the child gets this
    process's.
    """
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )
