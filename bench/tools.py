"""External tools the harness uses (wrk, nginx, Caddy, HAProxy), installed with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx", "caddy": "caddy", "haproxy": "haproxy"}


@dataclass(frozen=True, slots=True)
class Tools:
    wrk: str | None
    nginx: str | None
    gatehouse: str | None
    py_spy: str | None = None
    caddy: str | None = None
    haproxy: str | None = None


def _which(name: str) -> str | None:
    # nginx lives in /usr/sbin, which is not always on a non-root PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def _venv_tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def install_missing(names: list[str]) -> None:
    """Best effort ``apt-get install``; every failure is reported and tolerated."""
    if not names:
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        why = "apt-get not found" if apt is None else "not running as root"
        _say(f"{', '.join(names)} missing and cannot be installed ({why}); using fallbacks")
        return
    pkgs = [_APT_PACKAGES[n] for n in names]
    _say(f"installing {' '.join(pkgs)} with apt-get (once; fallbacks are used if this fails)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(
            [apt, "update", "-qq"], env=env, check=True, timeout=300, capture_output=True
        )
        subprocess.run(
            [apt, "install", "-y", "-qq", "--no-install-recommends", *pkgs],
            env=env,
            check=True,
            timeout=600,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as e:
        _say(f"apt-get failed ({type(e).__name__}); using fallbacks")


def find_tools(
    *,
    install: bool,
    want_wrk: bool = True,
    want_nginx: bool = True,
    want_references: bool = True,
) -> Tools:
    wanted = {
        "wrk": want_wrk,
        "nginx": want_nginx,
        "caddy": want_references,
        "haproxy": want_references,
    }
    missing = [n for n, want in wanted.items() if want and not _which(n)]
    if install:
        install_missing(missing)
    return Tools(
        wrk=_which("wrk") if want_wrk else None,
        nginx=_which("nginx") if want_nginx else None,
        gatehouse=_venv_tool("gatehouse"),
        py_spy=_venv_tool("py-spy"),
        caddy=_which("caddy") if want_references else None,
        haproxy=_which("haproxy") if want_references else None,
    )
