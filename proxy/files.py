"""Replacing a file so that nobody sees it half-written or readable by others.

The new content goes to ``<file>.tmp``, created new (``O_EXCL``), never
through a symlink (``O_NOFOLLOW``; with ``O_EXCL`` a symlink at the name is an
error wherever it points) and private to its owner from the first byte, then is
renamed over the file. Writing in place instead (``write_bytes`` then
``chmod``) leaves a private key readable under the default umask 022 until
the ``chmod``, and follows a symlink planted at the name.
"""

from __future__ import annotations

import os
from pathlib import Path

_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temporary_of(path: Path) -> Path:
    """Where :func:`replace_file` writes before renaming."""
    return path.with_name(path.name + ".tmp")


def replace_file(path: Path, data: bytes, *, sync: bool = True, take_over: bool = False) -> None:
    """Put ``data`` at ``path`` atomically, readable and writable by its owner only (0600).

    ``sync``: on disk before it replaces the old content (keys; not worth it for
    files rewritten every second). A ``<file>.tmp`` already there raises
    FileExistsError (another writer, an interrupted one, or a planted link),
    unless ``take_over``: then it is removed first (for a single writer, whose
    leftover it can only be; unlinking a symlink removes the link, not its target).
    """
    tmp = temporary_of(path)
    if take_over:
        tmp.unlink(missing_ok=True)
    fd = os.open(tmp, _CREATE_NEW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
