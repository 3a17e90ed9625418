"""Parse one configuration section from YAML text, the way the loader does.

Section parsers take the reader's line-aware ``Mapping``; tests hand them a
real file so every problem carries its ``file:line``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from proxy.config.reader import ConfigError, Mapping, Problems, load_document

T = TypeVar("T")


def parse_yaml(tmp_path: Path, text: str, read: Callable[[Mapping], T]) -> T:
    """Write ``text`` as gatehouse.yaml, let ``read`` take what it needs from the root,
    report unknown top-level keys, and raise ConfigError listing every problem."""
    path = tmp_path / "gatehouse.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    problems = Problems()
    doc, node = load_document(path, problems)
    root = Mapping.of(doc, node, "config")
    assert root is not None, problems.items
    value = read(root)
    root.close()
    problems.raise_if_any()
    return value


def problems_of(tmp_path: Path, text: str, read: Callable[[Mapping], object]) -> list[str]:
    """Every problem ``parse_yaml`` reports, as ``file:line: message`` strings."""
    with pytest.raises(ConfigError) as info:
        parse_yaml(tmp_path, text, read)
    return [str(p) for p in info.value.problems]


def backends_of(root: Mapping) -> Iterator[tuple[str, Mapping]]:
    """Each ``backends.<name>`` mapping, as the loader walks them (closed by the caller)."""
    backends = root.mapping("backends")
    if backends is None:
        return
    for name, value in backends.items():
        m = Mapping.of(backends.doc, value, f"backends.{name}")
        if m is not None:
            yield name, m
