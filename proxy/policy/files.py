"""Finding policy files and composing them into YAML node trees (with line marks).

Files are read from a directory's ``*.yaml``/``*.yml`` (symlinks followed,
hidden entries such as Kubernetes' ``..data`` and subdirectories such as
``tests/`` skipped). An empty file is an error: a truncated file must never
silently drop routes. A policy file, or a directory of them, that every user
may write is refused: whoever can write the policy decides who gets in. The
policy version is a hash of every file's name and
bytes, so any edit (a comment too) makes a new version.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from proxy.config.reader import Doc, Problems

# libyaml composes the same node tree (with line marks) about 20x faster: it
# matters at thousands of routes, where every reload parses everything again.
_COMPOSER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)


@dataclass(frozen=True, slots=True)
class Composed:
    """The files of one load: each readable file's node tree, and the version hash."""

    files: tuple[Path, ...]
    documents: tuple[tuple[Doc, yaml.Node], ...]
    version: str


def policy_files(paths: Sequence[Path] | Path, problems: Problems) -> list[Path]:
    """The policy files named by ``paths``: files as given, directories expanded."""
    items = [paths] if isinstance(paths, Path) else list(paths)
    out: list[Path] = []
    for path in items:
        if path.is_dir():
            _refuse_if_anyone_may_write(path, problems)
            for entry in sorted(path.iterdir(), key=lambda p: p.name):
                if entry.name.startswith(".") or entry.suffix not in (".yaml", ".yml"):
                    continue
                if entry.is_symlink() and not entry.exists():
                    problems.add(entry, 1, "broken symlink")
                elif entry.is_file():
                    _refuse_if_anyone_may_write(entry, problems)
                    out.append(entry)
        elif path.exists():
            _refuse_if_anyone_may_write(path, problems)
            out.append(path)
        else:
            problems.add(path, 1, "policy file or directory not found")
    return out


def _refuse_if_anyone_may_write(path: Path, problems: Problems) -> None:
    # Group write is left to the operator (a deliberate shared group); write
    # for every user never is. The mode of a symlink's target is what counts.
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reported where the file is read
    if mode & stat.S_IWOTH:
        what = "directory" if stat.S_ISDIR(mode) else "file"
        problems.add(
            path,
            1,
            f"policy {what} can be written by every user (mode {mode & 0o777:04o}): chmod o-w it",
        )


def compose_all(paths: Sequence[Path] | Path, problems: Problems) -> Composed:
    """Every policy file read and composed; problems recorded, bad files left out."""
    files = policy_files(paths, problems)
    digest = hashlib.sha256()
    documents: list[tuple[Doc, yaml.Node]] = []
    for path in files:
        data = _read(path, problems)
        digest.update(path.name.encode() + b"\0" + (data or b"") + b"\0")
        node = _compose(path, data, problems) if data is not None else None
        if node is not None:
            documents.append((Doc(path, problems), node))
    return Composed(tuple(files), tuple(documents), digest.hexdigest()[:12])


def _read(path: Path, problems: Problems) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.add(path, 1, f"cannot read file: {exc.strerror}")
        return None


def _compose(path: Path, data: bytes, problems: Problems) -> yaml.Node | None:
    try:
        node = yaml.compose(data.decode("utf-8"), Loader=_COMPOSER)
    except UnicodeDecodeError:
        problems.add(path, 1, "file is not UTF-8")
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problems.add(path, line, f"invalid YAML: {exc.problem or exc.context}")
        return None
    except yaml.YAMLError as exc:
        problems.add(path, 1, f"invalid YAML: {exc}")
        return None
    if node is None:
        problems.add(path, 1, "policy file is empty (write 'routes: []' for no routes)")
    return node
