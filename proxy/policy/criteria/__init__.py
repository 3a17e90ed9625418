"""Rule criteria: one module per criterion, each adding itself to the registry.

To add a criterion, write one module here (the compiled class, its parser
over :class:`~proxy.policy.criteria.operand.Operand`, and a
:func:`~proxy.policy.criteria.base.register` call) and its test in
``tests/policy/criteria/``. Importing this package imports every module in
it, so the loader, ``CRITERIA`` and the README's criterion table
(:func:`reference_table`, checked by a test) all see it.

Outcomes are three-valued (see :mod:`proxy.policy.criteria.base`).
Access for anonymous callers is never implied: an allow rule admits a
caller without identity only through ``public: true``, so neither
``method: [GET]`` alone nor ``not: {source_ip: [...]}`` opens a route to
the world; they restrict callers who have an identity.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

from proxy.policy.criteria.base import REGISTRY, Criterion, Kind, Outcome

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# Every YAML key a rule mapping may hold as a criterion.
CRITERIA: tuple[str, ...] = tuple(sorted(REGISTRY))

_SECTIONS = (
    ("caller", "About the caller"),
    ("request", "About the request"),
    ("composition", "Combining rules"),
)


def reference_table() -> str:
    """The README's criterion table, generated from the registry."""
    lines = ["| criterion | example | holds when |", "|---|---|---|"]
    for about, title in _SECTIONS:
        lines.append(f"| **{title}** | | |")
        for kind in sorted(REGISTRY.values(), key=lambda k: k.key):
            if kind.about == about:
                lines.append(f"| `{kind.key}` | `{kind.syntax}` | {kind.holds} |")
    return "\n".join(lines) + "\n"


def walk(criterion: Criterion, depth: int = 0) -> Iterator[tuple[int, Criterion]]:
    """Every node of a criterion tree with its depth, parents first."""
    yield depth, criterion
    for child in criterion.children:
        yield from walk(child, depth + 1)


__all__ = [
    "CRITERIA",
    "REGISTRY",
    "Criterion",
    "Kind",
    "Outcome",
    "reference_table",
    "walk",
]
