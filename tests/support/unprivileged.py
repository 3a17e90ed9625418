"""Child processes that cannot read a file just because they run as root.

Tests here often run as root, and root reads a mode-000 file anyway (through
CAP_DAC_OVERRIDE). Dropping that capability, and CAP_DAC_READ_SEARCH, from
the bounding set before ``exec`` makes the child obey file modes like any
user, so "an unreadable file" is unreadable for the real ``gatehouse`` process.
"""

from __future__ import annotations

import ctypes
import os

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def obey_file_modes() -> None:
    """A ``preexec_fn``: no-op for a normal user, drops the override for root."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_CAPBSET_DROP): {os.strerror(errno)}")
