"""A criterion's YAML value, read with its line: the reader every criterion parser uses.

Every accessor returns what it promises, or ``None`` after recording one
problem at the offending line (``file:line: where: message``). A parser
returns ``None`` as soon as one of its reads did, so a criterion is only
ever built from values that were all valid, and nobody counts problems.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import yaml

from proxy.config.reader import Doc, node_kind

_CONSTRUCTOR = yaml.SafeLoader("")


def plain_value(node: yaml.Node) -> object:
    """The Python value of a YAML node (for claim operands and fixture claims)."""
    value = _CONSTRUCTOR.construct_object(node, deep=True)
    _CONSTRUCTOR.constructed_objects.clear()
    return value


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


class Operand:
    """One YAML value (a criterion's, or a field of it) and where it sits."""

    __slots__ = ("doc", "node", "where")

    def __init__(self, doc: Doc, node: yaml.Node, where: str) -> None:
        self.doc = doc
        self.node = node
        self.where = where

    def fail(self, message: str, node: yaml.Node | None = None) -> None:
        """Record a problem at this value (or at ``node`` inside it)."""
        self.doc.error(node if node is not None else self.node, f"{self.where}: {message}")

    # -- shapes ------------------------------------------------------------------
    @property
    def is_mapping(self) -> bool:
        return isinstance(self.node, yaml.MappingNode)

    @property
    def is_list(self) -> bool:
        return isinstance(self.node, yaml.SequenceNode)

    def value(self) -> object:
        return plain_value(self.node)

    def kind(self) -> str:
        return node_kind(self.node)

    # -- scalars -----------------------------------------------------------------
    def text(self) -> str | None:
        value = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        if isinstance(value, str):
            return value
        self.fail(f"expected a string, got {self.kind()}")
        return None

    def flag(self) -> bool | None:
        value = self.value() if isinstance(self.node, yaml.ScalarNode) else None
        if isinstance(value, bool):
            return value
        self.fail(f"expected true or false, got {self.kind()}")
        return None

    def true(self) -> Literal[True] | None:
        """Only ``true``: a criterion that ``false`` would merely switch off."""
        value = self.flag()
        if value is False:
            self.fail("only 'true' has a meaning; remove the key instead")
        return True if value else None

    def choice(self, options: tuple[str, ...]) -> str | None:
        value = self.text()
        if value is None or value in options:
            return value
        self.fail(f"must be one of {', '.join(options)}, got {value!r}")
        return None

    # -- collections ---------------------------------------------------------------
    def strings(self) -> list[str] | None:
        """A non-empty list of strings; one string stands for a list of one."""
        if _is_null(self.node):
            self.fail("must not be empty")
            return None
        if isinstance(self.node, yaml.MappingNode):
            self.fail("expected a list of strings")
            return None
        nodes = self.node.value if isinstance(self.node, yaml.SequenceNode) else [self.node]
        if not nodes:
            self.fail("must not be empty")
            return None
        out: list[str] = []
        for item in nodes:
            value = plain_value(item) if isinstance(item, yaml.ScalarNode) else None
            if not isinstance(value, str):
                self.fail(f"expected a string, got {node_kind(item)}", item)
                return None
            out.append(value)
        return out

    def items(self) -> list[Operand] | None:
        """The entries of a non-empty list, each with its own position."""
        if not isinstance(self.node, yaml.SequenceNode) or not self.node.value:
            self.fail("must be a non-empty list")
            return None
        return [
            Operand(self.doc, node, f"{self.where}[{index}]")
            for index, node in enumerate(self.node.value)
        ]

    def fields(self, known: Iterable[str]) -> dict[str, Operand] | None:
        """A mapping whose keys are all ``known``, each value as an operand."""
        if not isinstance(self.node, yaml.MappingNode):
            self.fail(f"expected a mapping, got {self.kind()}")
            return None
        allowed = tuple(known)
        out: dict[str, Operand] = {}
        valid = True
        for key_node, value_node in self.node.value:
            key = plain_value(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.fail("keys must be strings", key_node)
                valid = False
            elif key in out:
                self.fail(f"duplicate key '{key}'", key_node)
                valid = False
            elif key not in allowed:
                self.fail(f"unknown key '{key}' (known keys: {', '.join(allowed)})", key_node)
                valid = False
            else:
                out[key] = Operand(self.doc, value_node, f"{self.where}.{key}")
        return out if valid else None
