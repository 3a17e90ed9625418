"""Files holding private keys and secrets must not be readable by other users.

Checked at start-up, on the permission bits (so the check holds for root too).
Other users may never read or write such a file. Its group may read it only
when root owns it: that is how Kubernetes Secret volumes (owned by root, group
``fsGroup``, ``defaultMode: 0440``) and Debian's ``ssl-cert`` group hand keys
to an unprivileged process, and the rule PostgreSQL applies to its server key.

Files that hold no secret but decide who a caller is (the API-key file) may be
read by anyone, but written only by their owner: whoever can change one can
give a key any subject and groups.
"""

from __future__ import annotations

import os
from pathlib import Path

from proxy.config.reader import Mapping, SecretRef

_OTHERS = 0o007
_GROUP = 0o070
_GROUP_READ = 0o040
_WRITE_BY_OTHERS = 0o022


def exposure(mode: int, owner: int) -> str | None:
    """Why a secret file with permission bits ``mode`` owned by uid ``owner`` is exposed."""
    bits = mode & 0o777
    if bits & _OTHERS:
        return f"is accessible to every user (mode {bits:04o}): chmod 600 it"
    if bits & _GROUP and (owner != 0 or bits & _GROUP != _GROUP_READ):
        return (
            f"is accessible to its group (mode {bits:04o}): chmod 600 it "
            "(a group may only read a key file that root owns)"
        )
    return None


def alterability(mode: int) -> str | None:
    """Why a file with permission bits ``mode`` can be changed by users other than its owner."""
    bits = mode & 0o777
    if bits & _WRITE_BY_OTHERS:
        return f"can be written by other users (mode {bits:04o}): chmod go-w it"
    return None


def _status(path: Path) -> os.stat_result | None:
    """None when ``path`` cannot be examined (a missing file is reported elsewhere)."""
    try:
        return path.stat()
    except OSError:
        return None


def key_file_problem(path: Path) -> str | None:
    """:func:`exposure` of ``path``."""
    status = _status(path)
    return exposure(status.st_mode, status.st_uid) if status is not None else None


def trusted_file_problem(path: Path) -> str | None:
    """:func:`alterability` of ``path``."""
    status = _status(path)
    return alterability(status.st_mode) if status is not None else None


def _report(m: Mapping, key: str, path: Path | None, problem: str | None) -> None:
    if problem:
        m.error(key, f"{m.where}.{key}: {path} {problem}")


def check_key_file(m: Mapping, key: str, path: Path | None) -> None:
    """Report ``m.<key>`` at its line when the file it names is exposed."""
    _report(m, key, path, key_file_problem(path) if path is not None else None)


def check_trusted_file(m: Mapping, key: str, path: Path | None) -> None:
    """Report ``m.<key>`` at its line when users other than its owner can change the file."""
    _report(m, key, path, trusted_file_problem(path) if path is not None else None)


def check_secret(m: Mapping, key: str, ref: SecretRef | None) -> SecretRef | None:
    """``ref`` as :meth:`Mapping.secret` returned it, after checking a ``<key>_file``."""
    if ref is not None and ref.kind == "file":
        check_key_file(m, f"{key}_file", Path(ref.name))
    return ref
