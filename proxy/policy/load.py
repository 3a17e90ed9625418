"""Loading policy files into a compiled :class:`PolicySet`, or every problem at once.

The steps live in their own modules: :mod:`~proxy.policy.files` finds and
composes the files (and hashes them into the version),
:mod:`~proxy.policy.rules` compiles named rules and rule lists through the
criterion registry, :mod:`~proxy.policy.routes` builds each route. The file
format is documented in the README's policy reference.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from proxy.config.reader import Mapping, Problems
from proxy.policy.evaluate import PolicySet
from proxy.policy.files import compose_all
from proxy.policy.routes import RouteCompiler
from proxy.policy.rules import RuleCompiler


def load_policies(
    paths: Sequence[Path] | Path,
    backends: Collection[str] | None = None,
    *,
    websocket: bool = True,
) -> PolicySet:
    """Load, validate and compile policy files; raise ConfigError with every problem.

    ``backends``, when given, are the backend names routes may use.
    ``websocket=False`` (a decision listener, which never forwards) refuses
    routes with ``websocket: true``.
    """
    problems = Problems()
    composed = compose_all(paths, problems)
    rules = RuleCompiler(composed.version)
    routes = RouteCompiler(rules, backends, websocket=websocket)
    tops: list[Mapping] = []
    for doc, node in composed.documents:
        top = Mapping.of(doc, node, "policy file")
        if top is None:
            continue
        tops.append(top)
        named = top.mapping("rules")
        if named is not None:
            rules.collect(doc, named)
    rules.compile_named()
    for top in tops:
        for index, node in enumerate(top.nodes("routes", required=True)):
            m = Mapping.of(top.doc, node, f"routes[{index}]")
            if m is not None:
                routes.add(top.doc, m)
        top.close()
    problems.raise_if_any()
    return PolicySet(tuple(routes.routes), composed.version, tuple(map(str, composed.files)))
