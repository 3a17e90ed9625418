"""Compiling rules: named rules, a route's ``allow``/``deny`` lists, nested rule bodies.

A rule is a mapping of criteria that must all hold (keys from the criterion
registry, plus ``name`` and ``mode`` at the top of a route's rule), or the
name of a named rule from any file's ``rules:``. A named rule with
``mode: audit`` stays in audit mode wherever it is cited: cited directly in
``allow``/``deny`` it is an audit rule; cited inside ``any``/``all``/``not``
the citing rule is enforced without it and reports what it would change
(:mod:`proxy.policy.criteria.citation`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import yaml

from proxy.config.reader import Doc, Mapping
from proxy.policy.criteria import CRITERIA, REGISTRY, Criterion
from proxy.policy.criteria.citation import AuditCitation, enforced_part
from proxy.policy.criteria.logic import conjunction
from proxy.policy.criteria.operand import Operand, plain_value
from proxy.policy.model import Decision, Rule

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MODES = ("enforce", "audit")
Mode = Literal["enforce", "audit"]
Effect = Literal["allow", "deny"]


@dataclass(slots=True)
class _Named:
    doc: Doc
    node: yaml.Node
    source: str
    criterion: Criterion | None = None
    mode: Mode = "enforce"
    state: Literal["new", "compiling", "done"] = "new"


def is_name(text: str) -> bool:
    """Route and rule names: letters, digits, ``_ . -``; up to 64 characters."""
    return NAME.fullmatch(text) is not None


class RuleCompiler:
    """Compiles rule bodies for one policy version; named rules are shared by all files."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.named: dict[str, _Named] = {}
        # Rules being compiled, innermost last (see Rules.rule_name).
        self._compiling: list[str] = []

    @property
    def rule_name(self) -> str:
        return self._compiling[-1] if self._compiling else ""

    # -- named rules ------------------------------------------------------------
    def collect(self, doc: Doc, rules: Mapping) -> None:
        """Remember a file's ``rules:`` (compiled once every file's are known)."""
        for name, node in rules.items():
            source = f"{doc.path}:{node.start_mark.line + 1}"
            if not is_name(name):
                doc.error(node, f"rules: invalid rule name {name!r} (letters, digits, _ . -)")
            elif name in self.named:
                doc.error(
                    node, f"rules: rule '{name}' already defined at {self.named[name].source}"
                )
            else:
                self.named[name] = _Named(doc, node, source)

    def compile_named(self) -> None:
        """Compile every named rule, cited or not, so each one's problems are reported."""
        for name, named in sorted(self.named.items()):
            self._resolve(named, name)

    def _resolve(self, named: _Named, name: str) -> Criterion | None:
        if named.state == "compiling":
            named.doc.error(named.node, "rules: rule refers to itself (directly or indirectly)")
            return None
        if named.state == "new":
            named.state = "compiling"
            operand = Operand(named.doc, named.node, f"rules.{name}")
            fields = operand.fields((*CRITERIA, "mode"))
            if fields is not None:
                mode = fields["mode"].choice(MODES) if "mode" in fields else "enforce"
                self._compiling.append(name)
                criterion = self.criteria(operand, fields)
                self._compiling.pop()
                named.mode = _mode(mode or "enforce")
                named.criterion = criterion if mode is not None else None
            named.state = "done"
        return named.criterion

    def _cite(self, operand: Operand) -> tuple[str, _Named, Criterion] | None:
        """A named rule cited by name, compiled."""
        name = operand.value()
        if not isinstance(name, str):
            operand.fail("expected a rule mapping or a rule name")
            return None
        named = self.named.get(name)
        if named is None:
            operand.fail(f"unknown rule '{name}'")
            return None
        criterion = self._resolve(named, name)
        return (name, named, criterion) if criterion is not None else None

    # -- bodies ---------------------------------------------------------------------
    def criteria(self, operand: Operand, fields: dict[str, Operand]) -> Criterion | None:
        """The criteria of a rule mapping, which must all hold (in the order written)."""
        keys = [key for key in fields if key in REGISTRY]
        if not keys:
            operand.fail("a rule needs at least one criterion (nothing is implied)")
            return None
        parts = [REGISTRY[key].parse(fields[key], self) for key in keys]
        found = [part for part in parts if part is not None]
        return conjunction(found) if len(found) == len(parts) else None

    def nested(self, operand: Operand) -> Criterion | None:
        """An item of ``any``/``all`` or the body of ``not``: criteria or a rule's name."""
        if isinstance(operand.node, yaml.ScalarNode):
            cited = self._cite(operand)
            if cited is None:
                return None
            name, named, criterion = cited
            return criterion if named.mode == "enforce" else AuditCitation(name, criterion)
        if operand.is_list:
            operand.fail("expected a rule mapping or a rule name")
            return None
        fields = operand.fields(CRITERIA)
        return self.criteria(operand, fields) if fields is not None else None

    # -- a route's allow/deny -----------------------------------------------------------
    def rule_list(
        self, doc: Doc, route: Mapping, effect: Effect, route_name: str
    ) -> tuple[Rule, ...]:
        """A route's ``allow`` or ``deny`` rules, in order; names are unique per list."""
        out: list[Rule] = []
        seen: set[str] = set()
        for index, node in enumerate(route.nodes(effect)):
            operand = Operand(doc, node, f"{route.where}.{effect}[{index}]")
            rule = self._rule(operand, f"{route.where}.{effect}", effect, route_name)
            if rule is None:
                continue
            if rule.name in seen:
                doc.error(node, f"{operand.where}: rule '{rule.name}' appears twice in {effect}")
                continue
            seen.add(rule.name)
            out.append(rule)
        return tuple(out)

    def _rule(self, operand: Operand, where: str, effect: Effect, route: str) -> Rule | None:
        if isinstance(operand.node, yaml.ScalarNode):
            cited = self._cite(operand)
            if cited is None:
                return None
            name, named, criterion = cited
            return self._build(name, effect, criterion, named.source, named.mode, route)
        return self._written(operand, where, effect, route)

    def _written(self, operand: Operand, where: str, effect: Effect, route: str) -> Rule | None:
        """A rule written in place: ``name``, optional ``mode``, and its criteria."""
        name = _peek_name(operand)
        if name:
            operand = Operand(operand.doc, operand.node, f"{where} '{name}'")
        fields = operand.fields((*CRITERIA, "name", "mode"))
        if fields is None:
            return None
        if "name" not in fields:
            operand.fail("missing required key 'name'")
        elif fields["name"].text() is not None and not is_name(name):
            fields["name"].fail(f"invalid rule name {name!r}")
        mode = fields["mode"].choice(MODES) if "mode" in fields else "enforce"
        self._compiling.append(name)
        criterion = self.criteria(operand, fields)
        self._compiling.pop()
        if criterion is None or mode is None or not is_name(name):
            return None
        source = f"{operand.doc.path}:{operand.node.start_mark.line + 1}"
        return self._build(name, effect, criterion, source, _mode(mode), route)

    def _build(
        self, name: str, effect: Effect, criterion: Criterion, source: str, mode: Mode, route: str
    ) -> Rule:
        dry_run: Criterion | None = None
        if mode == "enforce":
            enforced = enforced_part(criterion)
            if enforced is None:
                # Made only of audit rules: an audit rule itself. Kept as the
                # rule as written too, so the lint can say so.
                mode, dry_run = "audit", criterion
            elif enforced is not criterion:
                criterion, dry_run = enforced, criterion
        verb = "allowed" if effect == "allow" else "denied"
        decision = Decision(effect == "allow", f"{verb}:{name}", route, self.version)
        return Rule(name, effect, criterion, source, mode, decision, dry_run)


def _peek_name(operand: Operand) -> str:
    """A rule mapping's ``name`` if it is a string, for messages about the rest of it."""
    if not isinstance(operand.node, yaml.MappingNode):
        return ""
    for key_node, value_node in operand.node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == "name":
            value = plain_value(value_node) if isinstance(value_node, yaml.ScalarNode) else None
            return value if isinstance(value, str) else ""
    return ""


def _mode(text: str) -> Mode:
    return "audit" if text == "audit" else "enforce"
