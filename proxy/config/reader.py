"""Typed, line-aware reading of YAML documents.

Configuration is validated completely before anything starts: every problem is
collected as ``file:line: message`` instead of stopping at the first one, so an
operator fixes a file in one pass. The reader works on PyYAML's composed node
tree because only nodes carry line numbers.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator
from collections.abc import Mapping as EnvMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """Raised once, after validation, carrying every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(slots=True)
class Problems:
    """Collects problems across all files of one load."""

    items: list[ConfigProblem] = field(default_factory=list)

    def add(self, file: str | Path, line: int, message: str) -> None:
        self.items.append(ConfigProblem(str(file), line, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(sorted(self.items, key=lambda p: (p.file, p.line)))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_duration(text: str) -> float | None:
    """``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"90d"`` or a number of seconds."""
    m = _DURATION.match(text)
    if not m:
        return None
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    """``8h``, ``1h30m``, ``45s``: a duration for people to read, in its two largest
    units (whole seconds); one in a single unit reads back with :func:`parse_duration`."""
    whole = round(seconds)
    if whole <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2])


def parse_size(text: str) -> int | None:
    """``"10MiB"``, ``"1GB"``, ``"512"`` (bytes)."""
    m = _SIZE.match(text)
    if not m:
        return None
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A secret named by reference; the value itself never sits in config objects.

    ``kind`` is ``"file"`` (path to a file holding the secret) or ``"env"``
    (name of an environment variable).
    """

    kind: str
    name: str

    def read(self) -> str:
        if self.kind == "file":
            return Path(self.name).read_text(encoding="utf-8").strip()
        value = os.environ.get(self.name)
        if value is None:
            raise KeyError(f"environment variable {self.name} is not set")
        return value

    def describe(self) -> str:
        return f"{self.kind}:{self.name}"


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, or None when it can (opened, not read)."""
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"


class Doc:
    """One YAML file: its path, base directory and the shared problem list.

    ``environ`` is set for the main configuration file only: its scalars have
    had ``${VAR}`` substituted from it, and a non-secret value written as an
    ``env:NAME`` reference is refused (only secrets are read by reference).
    ``offline`` skips checks of files that exist only where Gatehouse runs
    (secrets, certificates), for CI.
    """

    def __init__(
        self,
        path: Path,
        problems: Problems,
        *,
        environ: EnvMapping[str, str] | None = None,
        offline: bool = False,
    ) -> None:
        self.path = path
        self.problems = problems
        self.environ = environ
        self.offline = offline

    def error(self, node: yaml.Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.add(self.path, line, message)

    def resolve_path(self, text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else (self.path.parent / p)


def load_document(
    path: Path,
    problems: Problems,
    *,
    environ: EnvMapping[str, str] | None = None,
    offline: bool = False,
) -> tuple[Doc, yaml.Node | None]:
    """Compose ``path`` into a node tree, recording a missing file or bad YAML.

    With ``environ``, ``${VAR}`` and ``${VAR:-default}`` in scalar values are
    replaced from it (see :func:`substitute_environment`).
    """
    doc = Doc(path, problems, environ=environ, offline=offline)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.add(path, 1, "file not found")
        return doc, None
    except OSError as exc:
        problems.add(path, 1, f"cannot read file: {exc.strerror}")
        return doc, None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problems.add(path, line, f"invalid YAML: {exc.problem or exc.context}")
        return doc, None
    except yaml.YAMLError as exc:
        problems.add(path, 1, f"invalid YAML: {exc}")
        return doc, None
    if environ is not None and node is not None:
        substitute_environment(doc, node, environ)
    return doc, node


_CONSTRUCTOR = yaml.SafeLoader("")

# ${NAME} or ${NAME:-default}; "$${" is a literal "${".
_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_REFERENCE = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]*")


def expand_variables(text: str, environ: EnvMapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with ``${VAR}``/``${VAR:-default}`` replaced, and the unset names.

    As in the shell, the default applies when the variable is unset or empty.
    """
    missing: list[str] = []

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        value = environ.get(m.group(1), "")
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)
        if m.group(1) not in environ:
            missing.append(m.group(1))
        return ""

    return _VARIABLE.sub(replace, text), missing


def substitute_environment(doc: Doc, root: yaml.Node, environ: EnvMapping[str, str]) -> None:
    """Replace variables in every scalar value of the tree, in place.

    Done on the composed nodes, so every later problem still names the line
    the value was written on. A plain scalar is typed again after the
    substitution (``port: ${PORT}`` is an integer); a quoted one stays a string.
    """
    stack: list[tuple[yaml.Node, str]] = [(root, "config")]
    seen: set[int] = set()
    while stack:
        node, where = stack.pop()
        if id(node) in seen:  # an alias shares its anchor's node
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack.append((value, f"{where}.{name}"))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, yaml.ScalarNode) and "${" in node.value:
            _substitute_scalar(doc, node, where, environ)


def _substitute_scalar(
    doc: Doc, node: yaml.ScalarNode, where: str, environ: EnvMapping[str, str]
) -> None:
    value, missing = expand_variables(node.value, environ)
    for name in missing:
        doc.error(
            node,
            f"{where}: environment variable {name} is not set "
            f"(write ${{{name}:-default}} to give a default)",
        )
    if "${" in _VARIABLE.sub("", node.value):
        doc.error(
            node,
            f"{where}: expected ${{NAME}} or ${{NAME:-default}} after '${{' "
            "(write $${ for a literal ${)",
        )
    if node.style is None:  # plain: typed by its new text, as YAML would have
        node.tag = _CONSTRUCTOR.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    node.value = value


def _scalar_value(node: yaml.ScalarNode) -> object:
    """The typed value PyYAML's safe loader would give this scalar (str, int, bool...)."""
    if node.tag == "tag:yaml.org,2002:str":
        return node.value  # the common case, without the constructor machinery
    value = _CONSTRUCTOR.construct_object(node, deep=True)
    _CONSTRUCTOR.constructed_objects.clear()
    return value


def node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = _scalar_value(node)  # type: ignore[arg-type]
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__
    )


class Mapping:
    """Typed accessors over a YAML mapping node.

    Every accessor records the key as consumed; :meth:`close` reports keys
    nobody asked for. On a problem an accessor records it and returns the
    default, so validation carries on and reports everything in one pass.
    """

    def __init__(self, doc: Doc, node: yaml.Node, where: str) -> None:
        self.doc = doc
        self.node = node
        self.where = where
        self._items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self._used: set[str] = set()
        for key_node, value_node in node.value:
            key = _scalar_value(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                doc.error(key_node, f"{where}: keys must be strings")
                continue
            if key in self._items:
                doc.error(key_node, f"{where}: duplicate key '{key}'")
                continue
            self._items[key] = (key_node, value_node)

    @classmethod
    def of(cls, doc: Doc, node: yaml.Node | None, where: str) -> Mapping | None:
        if node is None:
            return None
        if not isinstance(node, yaml.MappingNode):
            doc.error(node, f"{where}: expected a mapping, got {node_kind(node)}")
            return None
        return cls(doc, node, where)

    # -- basics -----------------------------------------------------------
    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def keys(self) -> list[str]:
        return list(self._items)

    def has(self, key: str) -> bool:
        return key in self._items

    def node_of(self, key: str) -> yaml.Node | None:
        item = self._items.get(key)
        return item[1] if item else None

    def error(self, key: str | None, message: str) -> None:
        """Report at the value of ``key`` (or at the mapping itself)."""
        node = self.node_of(key) if key else self.node
        self.doc.error(node if node is not None else self.node, message)

    def key_error(self, key: str, message: str) -> None:
        """Report at the line of the key itself (for problems with a name)."""
        item = self._items.get(key)
        self.doc.error(item[0] if item else self.node, message)

    def _take(self, key: str, required: bool) -> yaml.Node | None:
        self._used.add(key)
        item = self._items.get(key)
        if item is None:
            if required:
                self.doc.error(self.node, f"{self.where}: missing required key '{key}'")
            return None
        value = item[1]
        if isinstance(value, yaml.ScalarNode) and _scalar_value(value) is None:
            if required:
                self.doc.error(value, f"{self.where}.{key}: must not be empty")
            return None
        return value

    def _is_reference(self, value: object) -> bool:
        """An ``env:NAME`` where a plain value belongs (main configuration only)."""
        return (
            self.doc.environ is not None
            and isinstance(value, str)
            and _REFERENCE.fullmatch(value) is not None
        )

    def _refuse_reference(self, node: yaml.Node, where: str, value: str) -> None:
        # Taken literally, "env:AZURE_CLIENT_ID" would be sent as a client id.
        name = value[4:]
        self.doc.error(
            node,
            f"{where}: '{value}' references are read for secrets only; "
            f"write '${{{name}}}' to take this value from the environment",
        )

    def close(self, allowed_extra: tuple[str, ...] = ()) -> None:
        for key, (key_node, _) in self._items.items():
            if key not in self._used and key not in allowed_extra:
                known = sorted(self._used | set(allowed_extra))
                hint = f" (known keys: {', '.join(known)})" if known else ""
                self.doc.error(key_node, f"{self.where}: unknown key '{key}'{hint}")

    # -- scalars ----------------------------------------------------------
    def _typed(
        self,
        key: str,
        required: bool,
        want: tuple[type, ...],
        what: str,
        *,
        reference: bool = False,
    ) -> tuple[object, yaml.Node] | None:
        node = self._take(key, required)
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode):
            self.doc.error(node, f"{self.where}.{key}: expected {what}, got {node_kind(node)}")
            return None
        value = _scalar_value(node)
        if not reference and self._is_reference(value):
            self._refuse_reference(node, f"{self.where}.{key}", str(value))
            return None
        # bool is an int subclass; never accept it where a number is wanted.
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            self.doc.error(node, f"{self.where}.{key}: expected {what}, got {node_kind(node)}")
            return None
        return value, node

    def text(
        self,
        key: str,
        default: T = None,  # type: ignore[assignment]
        *,
        required: bool = False,
    ) -> str | T:
        got = self._typed(key, required, (str,), "a string")
        return default if got is None else str(got[0])

    def flag(self, key: str, default: bool = False) -> bool:
        got = self._typed(key, False, (bool,), "true or false")
        return default if got is None else bool(got[0])

    def integer(
        self,
        key: str,
        default: T = None,  # type: ignore[assignment]
        *,
        minimum: int | None = None,
    ) -> int | T:
        got = self._typed(key, False, (int,), "an integer")
        if got is None:
            return default
        value = got[0]
        assert isinstance(value, int)
        if minimum is not None and value < minimum:
            self.doc.error(got[1], f"{self.where}.{key}: must be at least {minimum}")
            return default
        return value

    def duration(
        self,
        key: str,
        default: T = None,  # type: ignore[assignment]
        *,
        required: bool = False,
    ) -> float | T:
        got = self._typed(key, required, (str, int, float), "a duration like 30s, 5m or 250ms")
        if got is None:
            return default
        value, node = got
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
        if seconds is None or seconds < 0:
            self.doc.error(
                node,
                f"{self.where}.{key}: expected a duration like 30s, 5m or 250ms, got {value!r}",
            )
            return default
        return seconds

    def size(self, key: str, default: T = None) -> int | T:  # type: ignore[assignment]
        got = self._typed(key, False, (str, int), "a size like 10MiB")
        if got is None:
            return default
        value, node = got
        size = value if isinstance(value, int) else parse_size(str(value))
        if size is None or size < 0:
            self.doc.error(node, f"{self.where}.{key}: expected a size like 10MiB, got {value!r}")
            return default
        return int(size)

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """An integer or decimal number, within ``minimum`` and ``maximum`` when given."""
        got = self._typed(key, False, (int, float), "a number")
        if got is None:
            return default
        raw, node = got
        assert isinstance(raw, int | float)
        value = float(raw)
        low = minimum if minimum is not None else -math.inf
        high = maximum if maximum is not None else math.inf
        if low <= value <= high:
            return value
        if minimum is not None and maximum is not None:
            bound = f"between {minimum:g} and {maximum:g}"
        else:
            bound = f"at least {minimum:g}" if minimum is not None else f"at most {maximum:g}"
        self.doc.error(node, f"{self.where}.{key}: must be {bound}")
        return default

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        got = self._typed(key, False, (str,), "a string")
        if got is None:
            return default
        value = str(got[0])
        if value not in choices:
            self.doc.error(
                got[1], f"{self.where}.{key}: must be one of {', '.join(choices)}, got {value!r}"
            )
            return default
        return value

    def path(
        self,
        key: str,
        *,
        required: bool = False,
        must_exist: bool = True,
    ) -> Path | None:
        """A file path, relative to the YAML file's directory, optionally checked to exist."""
        got = self._typed(key, required, (str,), "a file path")
        if got is None:
            return None
        path = self.doc.resolve_path(str(got[0]))
        if must_exist and not self.doc.offline:
            problem = unreadable(path)
            if problem is not None:
                self.doc.error(got[1], f"{self.where}.{key}: {problem}")
        return path

    def secret(self, key: str, *, required: bool = False) -> SecretRef | None:
        """A secret by reference only: ``<key>_file: PATH`` or ``<key>: env:NAME``.

        Inline values are refused so secrets never live in config files, in
        version control, or in the objects built from them.
        """
        file_key = f"{key}_file"
        if self.has(file_key):
            path = self.path(file_key)
            self._used.add(key)
            if self.has(key):
                self.error(key, f"{self.where}: give either '{key}' or '{file_key}', not both")
            return SecretRef("file", str(path)) if path is not None else None
        got = self._typed(key, False, (str,), "a reference like env:NAME", reference=True)
        if got is None:
            if required:
                self.doc.error(
                    self.node, f"{self.where}: missing '{file_key}: PATH' or '{key}: env:NAME'"
                )
            return None
        text, node = str(got[0]), got[1]
        if text.startswith("env:") and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text[4:]):
            return SecretRef("env", text[4:])
        # Never echo the value: it is probably the secret itself.
        self.doc.error(
            node,
            f"{self.where}.{key}: inline secrets are refused; "
            f"reference it with '{file_key}: /path/to/file' or '{key}: env:VARIABLE'",
        )
        return None

    # -- collections ------------------------------------------------------
    def take(self, key: str, *, required: bool = False) -> yaml.Node | None:
        """The value node of ``key`` (None when absent or null), for a shape no typed
        accessor reads, such as "a mapping or a list of them"; the caller checks it."""
        return self._take(key, required)

    def mapping(self, key: str, *, required: bool = False) -> Mapping | None:
        node = self._take(key, required)
        return Mapping.of(self.doc, node, f"{self.where}.{key}")

    def nodes(self, key: str, *, required: bool = False) -> list[yaml.Node]:
        node = self._take(key, required)
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.doc.error(node, f"{self.where}.{key}: expected a list, got {node_kind(node)}")
            return []
        return list(node.value)

    def str_list(
        self,
        key: str,
        *,
        required: bool = False,
        allow_scalar: bool = True,
    ) -> list[str]:
        """A list of strings; a single string is accepted as a one-item list."""
        node = self._take(key, required)
        if node is None:
            return []
        items: list[yaml.Node]
        if isinstance(node, yaml.ScalarNode) and allow_scalar:
            items = [node]
        elif isinstance(node, yaml.SequenceNode):
            items = list(node.value)
        else:
            self.doc.error(node, f"{self.where}.{key}: expected a list of strings")
            return []
        out: list[str] = []
        for item in items:
            value = _scalar_value(item) if isinstance(item, yaml.ScalarNode) else None
            if self._is_reference(value):
                self._refuse_reference(item, f"{self.where}.{key}", str(value))
            elif isinstance(value, str):
                out.append(value)
            else:
                self.doc.error(
                    item, f"{self.where}.{key}: expected a string, got {node_kind(item)}"
                )
        return out

    def cidr_list(self, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        nets = []
        for text in self.str_list(key):
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.error(key, f"{self.where}.{key}: not an IP network: {text!r}")
        return tuple(nets)

    def items(self) -> Iterator[tuple[str, yaml.Node]]:
        """Iterate a mapping used as a dictionary of named entries (e.g. backends)."""
        for key, (_, value) in self._items.items():
            self._used.add(key)
            yield key, value


def each_mapping(
    doc: Doc, nodes: list[yaml.Node], where: str, fn: Callable[[Mapping, int], T | None]
) -> list[T]:
    """Apply ``fn`` to every mapping in a list, reporting non-mapping items."""
    out: list[T] = []
    for index, node in enumerate(nodes):
        m = Mapping.of(doc, node, f"{where}[{index}]")
        if m is None:
            continue
        value = fn(m, index)
        if value is not None:
            out.append(value)
    return out
