"""Compiling one route mapping into a :class:`Route`: matching, options and rules."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection

from proxy.config.reader import Doc, Mapping
from proxy.http.host import is_host_name
from proxy.policy.criteria.logic import admits_like_identified, always_holds
from proxy.policy.criteria.method import is_token
from proxy.policy.criteria.path import is_canonical
from proxy.policy.model import RateLimit, Route, Rule
from proxy.policy.rules import RuleCompiler, is_name

PASS_CLAIMS_BUDGET = 4096


class RouteCompiler:
    """Routes of one policy version, in file order; names are unique across files."""

    def __init__(
        self, rules: RuleCompiler, backends: Collection[str] | None, *, websocket: bool = True
    ) -> None:
        self.rules = rules
        self.backends = backends
        self.websocket = websocket  # False on a decision listener: websocket routes refused
        self.routes: list[Route] = []
        self.sources: dict[str, str] = {}

    def add(self, doc: Doc, m: Mapping) -> None:
        source = f"{doc.path}:{m.line}"
        name = self._name(m, source)
        m.where = f"route '{name}'" if name else m.where
        prefix, exact, regex = _paths(m)
        claims, budget = _pass_claims(m)
        allow = self.rules.rule_list(doc, m, "allow", name)
        deny = self.rules.rule_list(doc, m, "deny", name)
        identify = m.flag("identify")
        rate_limit = _rate_limit(m)
        route = Route(
            name=name,
            backend=self._backend(m),
            source=source,
            host=_host(m),
            path_prefix=prefix,
            path_exact=exact,
            path_regex=regex,
            methods=_methods(m),
            timeout=_timeout(m),
            max_body=m.size("max_body"),
            websocket=self._websocket(m),
            preserve_host=m.flag("preserve_host"),
            pass_authorization=m.flag("pass_authorization"),
            pass_method_override=m.flag("pass_method_override"),
            set_request_headers=_set_headers(m),
            remove_request_headers=_header_names(m, "remove_request_headers"),
            pass_claims=claims,
            pass_claims_max_bytes=budget,
            rate_limit=rate_limit,
            allow=allow,
            deny=deny,
            order=len(self.routes),
            uses_identity=identify
            or bool(claims)
            or rate_limit is not None  # buckets count per caller once one is known
            or reads_caller(allow, deny),
        )
        m.close()
        self.routes.append(route)

    def _name(self, m: Mapping, source: str) -> str:
        name = m.text("name", "", required=True)
        if name and not is_name(name):
            m.error("name", f"{m.where}.name: invalid route name {name!r} (letters, digits, _ . -)")
        elif name in self.sources:
            m.error("name", f"{m.where}: route '{name}' already defined at {self.sources[name]}")
        elif name:
            self.sources[name] = source
        return name

    def _websocket(self, m: Mapping) -> bool:
        websocket = m.flag("websocket")
        if websocket and not self.websocket:
            m.error(
                "websocket",
                f"{m.where}.websocket: meaningless on a decision listener (listen.mode: decision): "
                "the data plane upgrades and relays the connection itself",
            )
        return websocket

    def _backend(self, m: Mapping) -> str:
        backend = m.text("backend", "", required=True)
        if backend and self.backends is not None and backend not in self.backends:
            m.error("backend", f"{m.where}.backend: undefined backend '{backend}'")
        return backend


def reads_caller(allow: tuple[Rule, ...], deny: tuple[Rule, ...]) -> bool:
    """Whether the decision can depend on who calls (so callers must be authenticated).

    It cannot when no enforced rule reads anything of the caller, every
    enforced allow rule admits anonymous callers exactly when it holds, and
    one of them always holds: then a caller without identity gets the same
    decision and reason as any identified one. Audit-mode rules never count:
    a dry run must not change whether callers are authenticated.
    """
    enforced = [rule for rule in (*allow, *deny) if rule.mode == "enforce"]
    if any(rule.criterion.reads_caller for rule in enforced):
        return True
    admitting = [rule.criterion for rule in enforced if rule.effect == "allow"]
    return not (all(map(admits_like_identified, admitting)) and any(map(always_holds, admitting)))


def _host(m: Mapping) -> str | None:
    host = m.text("host")
    if host is None:
        return None
    host = host.strip().lower().rstrip(".")
    if is_host_name(host[2:] if host.startswith("*.") else host):
        return host
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return host if ":" not in host or host.startswith("[") else f"[{host}]"
    hint = " (hosts are matched without port)" if ":" in host else ""
    m.error("host", f"{m.where}.host: not a host name or '*.suffix': {host!r}{hint}")
    return None


def _paths(m: Mapping) -> tuple[str | None, str | None, str | None]:
    given = [k for k in ("path", "path_exact", "path_regex") if m.has(k)]
    prefix, exact, regex = m.text("path"), m.text("path_exact"), m.text("path_regex")
    if len(given) != 1:
        m.error(
            given[1] if len(given) > 1 else None,
            f"{m.where}: give exactly one of path, path_exact, path_regex",
        )
        return None, None, None
    for key, value in (("path", prefix), ("path_exact", exact)):
        if value is not None and not is_canonical(value):
            m.error(
                key,
                f"{m.where}.{key}: {value!r} is not a canonical path (must start with '/', "
                "no '//', dot segments, ';', '?', '#' or encoded '/'): it could never match",
            )
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as exc:
            m.error("path_regex", f"{m.where}.path_regex: invalid regular expression: {exc}")
    return prefix, exact, regex


def _methods(m: Mapping) -> frozenset[str] | None:
    methods = frozenset(name.upper() for name in m.str_list("methods"))
    for method in sorted(methods):
        if not is_token(method):
            m.error("methods", f"{m.where}.methods: not an HTTP method: {method!r}")
    if m.has("methods") and not methods:
        m.error("methods", f"{m.where}.methods: must not be empty")
    return methods or None


def _timeout(m: Mapping) -> float | None:
    timeout = m.duration("timeout")
    if timeout is not None and timeout <= 0:
        m.error("timeout", f"{m.where}.timeout: must be positive")
        return None
    return timeout


def _set_headers(m: Mapping) -> tuple[tuple[str, str], ...]:
    hm = m.mapping("set_request_headers")
    if hm is None:
        return ()
    out: list[tuple[str, str]] = []
    for key in list(hm.keys()):
        value = hm.text(key, required=True)
        if not is_token(key):
            hm.error(key, f"{hm.where}: not a header name: {key!r}")
        elif isinstance(value, str):
            if any(ch in value for ch in "\r\n\0"):
                hm.error(key, f"{hm.where}.{key}: header values must not contain CR, LF or NUL")
            else:
                out.append((key, value))
    hm.close()
    return tuple(out)


def _header_names(m: Mapping, key: str) -> frozenset[str]:
    names = m.str_list(key)
    for name in names:
        if not is_token(name):
            m.error(key, f"{m.where}.{key}: not a header name: {name!r}")
    return frozenset(name.lower() for name in names)


def _pass_claims(m: Mapping) -> tuple[tuple[str, ...], int]:
    pm = m.mapping("pass_claims")
    if pm is None:
        return (), PASS_CLAIMS_BUDGET
    claims = tuple(pm.str_list("claims", required=True))
    budget = pm.integer("max_bytes", PASS_CLAIMS_BUDGET, minimum=1)
    pm.close()
    return claims, budget


def _rate_limit(m: Mapping) -> RateLimit | None:
    rm = m.mapping("rate_limit")
    if rm is None:
        return None
    requests = rm.integer("requests", None, minimum=1)
    per = rm.duration("per", required=True)
    burst = rm.integer("burst", None, minimum=1)
    rm.close()
    if requests is None:
        if not rm.has("requests"):
            rm.error(None, f"{rm.where}: missing required key 'requests'")
        return None
    if per is None:
        return None
    if per <= 0:
        rm.error("per", f"{rm.where}.per: must be positive")
        return None
    return RateLimit(requests=requests, per=per, burst=burst if burst is not None else requests)
