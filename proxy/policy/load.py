"""Reading policy files into a compiled :class:`PolicySet`.

File format (every file in a policy directory, sorted by name)::

    rules:                      # optional: named rules any route may reuse
      platform-admins:
        all:
          - groups: [platform-admins]
          - mfa: true
    routes:                     # required (an explicit empty list is allowed)
      - name: admin-ui          # unique across all files; cited in decisions
        host: admin.example.com # exact or "*.suffix" (subdomains only); no port
        path: /                 # segment-aware prefix | path_exact | path_regex
        methods: [GET, POST]    # omitted: every method
        backend: admin-ui
        timeout: 30s
        max_body: 1MiB
        websocket: false
        preserve_host: false
        pass_authorization: false
        set_request_headers: {X-Env: prod}
        remove_request_headers: [X-Debug]
        pass_claims: {claims: [department], max_bytes: 2048}
        rate_limit: {requests: 10, per: 1m, burst: 10}
        deny:
          - name: no-interns
            groups: [interns]
        allow:
          - platform-admins     # a named rule, by name
          - name: auditors
            mode: audit         # evaluated and reported, never enforced
            groups: [auditors]

Paths: ``path: /api`` matches ``/api`` and ``/api/...`` but never
``/apifoo``; a prefix ending in ``/`` (``/api/``) is literal and does not
match ``/api``. ``path_exact`` matches one path. ``path_regex`` must match
the whole canonical path (``fullmatch``); it never sees the query. Route
paths must already be canonical (no ``//``, dot segments or ``;``).

Rules: each rule is a mapping whose criteria must all hold; ``any: [...]``,
``all: [...]`` and ``not: {...}`` nest (items may name a named rule). List
criteria (``subject``, ``groups``, ``scope`` ...) hold when any listed value
matches; require several with ``all``. A rule with no criteria is an error:
nothing is ever implied, and ``public: true`` is the only way to admit
anonymous callers (a rule of request criteria only, such as ``method: [GET]``,
admits callers with an identity, never anonymous ones).

Criteria: ``public``, ``authenticated``, ``subject``, ``email``,
``email_domain``, ``groups``, ``claim`` (``path`` plus one of
``is``/``in``/``starts_with``/``ends_with``/``contains``/``exists``; a
list of such mappings must all hold), ``scope``, ``issuer``,
``auth_method`` (jwt, opaque, session, apikey, mtls), ``client_cert``
(``san`` and/or ``fingerprint`` lists), ``source_ip`` (CIDRs of the trusted
client address), ``method``, ``path`` (a prefix string, or a matcher
mapping with ``is``/``in``/``starts_with``/``ends_with``/``contains``/
``regex``), ``time`` (``weekdays: [mon-fri]``, ``hours: "09:00-17:00"``,
``tz: Europe/Berlin``), ``mfa`` (``true`` = amr contains ``mfa``, or
``{amr: [...], acr: [...]}``).

Files are read from a directory's ``*.yaml``/``*.yml`` (symlinks followed,
hidden entries such as Kubernetes' ``..data`` and subdirectories such as
``tests/`` skipped). An empty file is an error: a truncated file must never
silently drop routes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml

from proxy.config.reader import Doc, Mapping, Problems, node_kind
from proxy.errors import RequestRejected
from proxy.http.canonical import canonical_path
from proxy.policy import criteria as c
from proxy.policy.evaluate import PolicySet
from proxy.policy.model import Decision, RateLimit, Route, Rule

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
AUTH_METHODS = ("jwt", "opaque", "session", "apikey", "mtls")
CRITERIA = (
    "public",
    "authenticated",
    "subject",
    "email",
    "email_domain",
    "groups",
    "claim",
    "scope",
    "issuer",
    "auth_method",
    "client_cert",
    "source_ip",
    "method",
    "path",
    "time",
    "mfa",
    "any",
    "all",
    "not",
)
_MATCHERS = ("is", "in", "starts_with", "ends_with", "contains")

_CONSTRUCTOR = yaml.SafeLoader("")
# libyaml composes the same node tree (with line marks) about 20x faster: it
# matters at thousands of routes, where every reload parses everything again.
_COMPOSER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)


def plain_value(node: yaml.Node) -> object:
    """The Python value of a YAML node (for claim operands and fixture claims)."""
    value = _CONSTRUCTOR.construct_object(node, deep=True)
    _CONSTRUCTOR.constructed_objects.clear()
    return value


def policy_files(paths: Sequence[Path] | Path, problems: Problems) -> list[Path]:
    """The policy files named by ``paths``: files as given, directories expanded."""
    items = [paths] if isinstance(paths, Path) else list(paths)
    out: list[Path] = []
    for path in items:
        if path.is_dir():
            for entry in sorted(path.iterdir(), key=lambda p: p.name):
                if entry.name.startswith(".") or entry.suffix not in (".yaml", ".yml"):
                    continue
                if entry.is_symlink() and not entry.exists():
                    problems.add(entry, 1, "broken symlink")
                elif entry.is_file():
                    out.append(entry)
        elif path.exists():
            out.append(path)
        else:
            problems.add(path, 1, "policy file or directory not found")
    return out


def load_policies(
    paths: Sequence[Path] | Path, backends: Collection[str] | None = None
) -> PolicySet:
    """Load, validate and compile policy files; raise ConfigError with every problem."""
    problems = Problems()
    files = policy_files(paths, problems)
    digest = hashlib.sha256()
    docs: list[tuple[Doc, yaml.Node]] = []
    for path in files:
        doc, node, data = _compose(path, problems)
        digest.update(path.name.encode() + b"\0" + data + b"\0")
        if node is not None:
            docs.append((doc, node))
    version = digest.hexdigest()[:12]
    compiler = _Compiler(problems, backends, version)
    compiler.compile(docs)
    problems.raise_if_any()
    return PolicySet(tuple(compiler.routes), version, tuple(str(f) for f in files))


def _compose(path: Path, problems: Problems) -> tuple[Doc, yaml.Node | None, bytes]:
    doc = Doc(path, problems)
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.add(path, 1, f"cannot read file: {exc.strerror}")
        return doc, None, b""
    try:
        node = yaml.compose(data.decode("utf-8"), Loader=_COMPOSER)
    except UnicodeDecodeError:
        problems.add(path, 1, "file is not UTF-8")
        return doc, None, data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problems.add(path, line, f"invalid YAML: {exc.problem or exc.context}")
        return doc, None, data
    except yaml.YAMLError as exc:
        problems.add(path, 1, f"invalid YAML: {exc}")
        return doc, None, data
    if node is None:
        problems.add(path, 1, "policy file is empty (write 'routes: []' for no routes)")
    return doc, node, data


@dataclass(slots=True)
class _Named:
    doc: Doc
    node: yaml.Node
    source: str
    criterion: c.Criterion | None = None
    mode: Literal["enforce", "audit"] = "enforce"
    state: str = "new"  # new | compiling | done


class _Compiler:
    def __init__(self, problems: Problems, backends: Collection[str] | None, version: str) -> None:
        self.problems = problems
        self.backends = backends
        self.version = version
        self.named: dict[str, _Named] = {}
        self.routes: list[Route] = []
        self.route_sources: dict[str, str] = {}

    def compile(self, docs: list[tuple[Doc, yaml.Node]]) -> None:
        tops: list[tuple[Doc, Mapping]] = []
        for doc, node in docs:
            top = Mapping.of(doc, node, "policy file")
            if top is not None:
                tops.append((doc, top))
                self._collect_named(doc, top)
        for _, named in sorted(self.named.items()):
            self._resolve(named)
        for doc, top in tops:
            for index, node in enumerate(top.nodes("routes", required=True)):
                m = Mapping.of(doc, node, f"routes[{index}]")
                if m is not None:
                    self._route(doc, m)
            top.close()

    # -- named rules ------------------------------------------------------------
    def _collect_named(self, doc: Doc, top: Mapping) -> None:
        rules = top.mapping("rules")
        if rules is None:
            return
        for name, node in rules.items():
            source = f"{doc.path}:{node.start_mark.line + 1}"
            if not NAME.match(name):
                doc.error(node, f"rules: invalid rule name {name!r} (letters, digits, _ . -)")
                continue
            if name in self.named:
                doc.error(
                    node, f"rules: rule '{name}' already defined at {self.named[name].source}"
                )
                continue
            self.named[name] = _Named(doc, node, source)

    def _resolve(self, named: _Named) -> c.Criterion | None:
        if named.state == "done":
            return named.criterion
        if named.state == "compiling":
            named.doc.error(named.node, "rules: rule refers to itself (directly or indirectly)")
            return None
        named.state = "compiling"
        m = Mapping.of(named.doc, named.node, "rule")
        if m is not None:
            mode = m.choice("mode", ("enforce", "audit"), "enforce")
            named.mode = "audit" if mode == "audit" else "enforce"
            named.criterion = self._body(m)
        named.state = "done"
        return named.criterion

    def _reference(self, doc: Doc, node: yaml.Node, where: str) -> _Named | None:
        value = plain_value(node)
        if not isinstance(value, str):
            doc.error(node, f"{where}: expected a rule mapping or a rule name")
            return None
        named = self.named.get(value)
        if named is None:
            doc.error(node, f"{where}: unknown rule '{value}'")
        return named

    # -- routes -----------------------------------------------------------------
    def _route(self, doc: Doc, m: Mapping) -> None:
        before = len(self.problems.items)
        source = f"{doc.path}:{m.line}"
        name = m.text("name", "", required=True)
        if name and not NAME.match(name):
            m.error("name", f"{m.where}.name: invalid route name {name!r} (letters, digits, _ . -)")
        elif name in self.route_sources:
            m.error(
                "name", f"{m.where}: route '{name}' already defined at {self.route_sources[name]}"
            )
        elif name:
            self.route_sources[name] = source
        where = f"route '{name}'" if name else m.where
        m.where = where
        host = self._host(m)
        prefix, exact, regex = self._paths(m)
        methods = self._methods(m, "methods")
        backend = m.text("backend", "", required=True)
        if backend and self.backends is not None and backend not in self.backends:
            m.error("backend", f"{where}.backend: undefined backend '{backend}'")
        timeout = m.duration("timeout")
        if timeout is not None and timeout <= 0:
            m.error("timeout", f"{where}.timeout: must be positive")
        headers = self._set_headers(m)
        remove = frozenset(h.lower() for h in self._header_names(m, "remove_request_headers"))
        claims, claims_budget = self._pass_claims(m)
        route = Route(
            name=name,
            backend=backend,
            source=source,
            host=host,
            path_prefix=prefix,
            path_exact=exact,
            path_regex=regex,
            methods=frozenset(methods) if methods else None,
            timeout=timeout,
            max_body=m.size("max_body"),
            websocket=m.flag("websocket"),
            preserve_host=m.flag("preserve_host"),
            pass_authorization=m.flag("pass_authorization"),
            set_request_headers=headers,
            remove_request_headers=remove,
            pass_claims=claims,
            pass_claims_max_bytes=claims_budget,
            rate_limit=self._rate_limit(m),
            allow=self._rules(doc, m, "allow", name),
            deny=self._rules(doc, m, "deny", name),
            order=len(self.routes),
        )
        m.close()
        if len(self.problems.items) == before:
            self.routes.append(route)

    def _host(self, m: Mapping) -> str | None:
        host = m.text("host")
        if host is None:
            return None
        host = host.strip().lower().rstrip(".")
        if _HOST.match(host):
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

    def _paths(self, m: Mapping) -> tuple[str | None, str | None, str | None]:
        given = [k for k in ("path", "path_exact", "path_regex") if m.has(k)]
        prefix, exact, regex = m.text("path"), m.text("path_exact"), m.text("path_regex")
        if len(given) != 1:
            m.error(
                given[1] if len(given) > 1 else None,
                f"{m.where}: give exactly one of path, path_exact, path_regex",
            )
            return None, None, None
        for key, value in (("path", prefix), ("path_exact", exact)):
            if value is not None and not _is_canonical(value):
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

    def _methods(self, m: Mapping, key: str) -> list[str]:
        methods = [x.upper() for x in _strs(m, key)]
        for method in methods:
            if not _TOKEN.match(method):
                m.error(key, f"{m.where}.{key}: not an HTTP method: {method!r}")
        if m.has(key) and not methods:
            m.error(key, f"{m.where}.{key}: must not be empty")
        return methods

    def _set_headers(self, m: Mapping) -> tuple[tuple[str, str], ...]:
        hm = m.mapping("set_request_headers")
        if hm is None:
            return ()
        out: list[tuple[str, str]] = []
        for key in list(hm.keys()):
            value = hm.text(key, required=True)
            if not _TOKEN.match(key):
                hm.error(key, f"{hm.where}: not a header name: {key!r}")
            elif isinstance(value, str):
                if any(ch in value for ch in "\r\n\0"):
                    hm.error(key, f"{hm.where}.{key}: header values must not contain CR, LF or NUL")
                else:
                    out.append((key, value))
        hm.close()
        return tuple(out)

    def _header_names(self, m: Mapping, key: str) -> list[str]:
        names = _strs(m, key)
        for name in names:
            if not _TOKEN.match(name):
                m.error(key, f"{m.where}.{key}: not a header name: {name!r}")
        return names

    def _pass_claims(self, m: Mapping) -> tuple[tuple[str, ...], int]:
        pm = m.mapping("pass_claims")
        if pm is None:
            return (), 4096
        claims = tuple(_strs(pm, "claims", required=True))
        budget = pm.integer("max_bytes", 4096, minimum=1)
        pm.close()
        return claims, budget

    def _rate_limit(self, m: Mapping) -> RateLimit | None:
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

    # -- rules --------------------------------------------------------------------
    def _rules(self, doc: Doc, m: Mapping, effect: str, route: str) -> tuple[Rule, ...]:
        out: list[Rule] = []
        seen: set[str] = set()
        kind: Literal["allow", "deny"] = "allow" if effect == "allow" else "deny"
        verb = "allowed" if kind == "allow" else "denied"
        for index, node in enumerate(m.nodes(effect)):
            where = f"{m.where}.{effect}[{index}]"
            source = f"{doc.path}:{node.start_mark.line + 1}"
            mode: Literal["enforce", "audit"]
            if isinstance(node, yaml.ScalarNode):
                named = self._reference(doc, node, where)
                if named is None:
                    continue
                name = str(plain_value(node))
                criterion = self._resolve(named)
                mode = named.mode
                source = named.source
            else:
                rm = Mapping.of(doc, node, where)
                if rm is None:
                    continue
                name = rm.text("name", "", required=True)
                if name and not NAME.match(name):
                    rm.error("name", f"{where}.name: invalid rule name {name!r}")
                rm.where = f"{m.where}.{effect} '{name}'" if name else where
                mode = (
                    "audit"
                    if rm.choice("mode", ("enforce", "audit"), "enforce") == "audit"
                    else "enforce"
                )
                criterion = self._body(rm)
            if name in seen:
                doc.error(node, f"{where}: rule '{name}' appears twice in {effect}")
                continue
            seen.add(name)
            if criterion is None or not name:
                continue
            decision = Decision(kind == "allow", f"{verb}:{name}", route, self.version)
            out.append(Rule(name, kind, criterion, source, mode, decision))
        return tuple(out)

    def _body(self, m: Mapping) -> c.Criterion | None:
        """A mapping of criteria that must all hold."""
        before = len(self.problems.items)
        parts: list[c.Criterion] = []
        for key in CRITERIA:
            if m.has(key):
                part = self._criterion(m, key)
                if part is not None:
                    parts.append(part)
        # Criteria parsed from raw nodes (any, all, not, claim...) are read here.
        m.close(allowed_extra=CRITERIA)
        if not any(m.has(k) for k in CRITERIA):
            m.error(None, f"{m.where}: a rule needs at least one criterion (nothing is implied)")
            return None
        if len(self.problems.items) != before:
            return None
        return parts[0] if len(parts) == 1 else c.All(tuple(parts))

    def _nested(self, m: Mapping, node: yaml.Node, where: str) -> c.Criterion | None:
        if isinstance(node, yaml.ScalarNode):
            named = self._reference(m.doc, node, where)
            return self._resolve(named) if named is not None else None
        nm = Mapping.of(m.doc, node, where)
        return self._body(nm) if nm is not None else None

    def _criterion(self, m: Mapping, key: str) -> c.Criterion | None:
        parse: Callable[[Mapping, str], c.Criterion | None] = getattr(self, f"_c_{key}")
        return parse(m, key)

    def _c_public(self, m: Mapping, key: str) -> c.Criterion | None:
        node = m.node_of(key)
        value = plain_value(node) if node is not None else None
        m.flag(key)
        if value is True:
            return c.Public()
        if value is False:
            m.error(key, f"{m.where}.public: only 'true' has a meaning; remove the key instead")
        return None

    def _c_authenticated(self, m: Mapping, key: str) -> c.Criterion | None:
        node = m.node_of(key)
        value = plain_value(node) if node is not None else None
        m.flag(key)
        return c.Authenticated(value) if isinstance(value, bool) else None

    def _nonempty(self, m: Mapping, key: str) -> list[str]:
        values = _strs(m, key)
        if not values:
            m.error(key, f"{m.where}.{key}: must not be empty")
        return values

    def _c_subject(self, m: Mapping, key: str) -> c.Criterion | None:
        return c.IdentityFieldIn("subject", "subject", frozenset(self._nonempty(m, key)))

    def _c_issuer(self, m: Mapping, key: str) -> c.Criterion | None:
        return c.IdentityFieldIn("issuer", "issuer", frozenset(self._nonempty(m, key)))

    def _c_groups(self, m: Mapping, key: str) -> c.Criterion | None:
        return c.IdentitySetAny("groups", "groups", frozenset(self._nonempty(m, key)))

    def _c_scope(self, m: Mapping, key: str) -> c.Criterion | None:
        return c.IdentitySetAny("scope", "scopes", frozenset(self._nonempty(m, key)))

    def _c_email(self, m: Mapping, key: str) -> c.Criterion | None:
        values = [v.strip().lower() for v in self._nonempty(m, key)]
        for value in values:
            if value.count("@") != 1 or value.startswith("@") or value.endswith("@"):
                m.error(key, f"{m.where}.email: not an email address: {value!r}")
        return c.EmailIn(frozenset(values))

    def _c_email_domain(self, m: Mapping, key: str) -> c.Criterion | None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for raw in self._nonempty(m, key):
            value = raw.strip().lower()
            wildcard = value.startswith("*.")
            domain = value[2:] if wildcard else value
            if not _HOST.match(domain) or domain.startswith("*."):
                m.error(
                    key,
                    f"{m.where}.email_domain: expected a domain or '*.domain', got {raw!r}",
                )
            elif wildcard:
                suffixes.append("." + domain)
            else:
                exact.add(domain)
        return c.EmailDomain(frozenset(exact), tuple(suffixes))

    def _c_auth_method(self, m: Mapping, key: str) -> c.Criterion | None:
        values = self._nonempty(m, key)
        for value in values:
            if value not in AUTH_METHODS:
                m.error(
                    key,
                    f"{m.where}.auth_method: must be one of {', '.join(AUTH_METHODS)}, "
                    f"got {value!r}",
                )
        return c.IdentityFieldIn("auth_method", "method", frozenset(values))

    def _c_method(self, m: Mapping, key: str) -> c.Criterion | None:
        return c.MethodIn(frozenset(self._methods(m, key)))

    def _c_source_ip(self, m: Mapping, key: str) -> c.Criterion | None:
        before = len(self.problems.items)
        nets = m.cidr_list(key)
        if not nets and len(self.problems.items) == before:
            m.error(key, f"{m.where}.source_ip: must not be empty")
        return c.SourceIp(nets)

    def _c_client_cert(self, m: Mapping, key: str) -> c.Criterion | None:
        cm = m.mapping(key)
        if cm is None:
            return None
        sans = frozenset(_strs(cm, "san"))
        fingerprints: set[str] = set()
        for raw in _strs(cm, "fingerprint"):
            fp = raw.replace(":", "").strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", fp):
                cm.error("fingerprint", f"{cm.where}.fingerprint: expected a SHA-256 hex digest")
            fingerprints.add(fp)
        cm.close()
        if not sans and not fingerprints:
            cm.error(None, f"{cm.where}: give 'san' and/or 'fingerprint'")
        return c.ClientCert(sans, frozenset(fingerprints))

    def _c_time(self, m: Mapping, key: str) -> c.Criterion | None:
        tm = m.mapping(key)
        if tm is None:
            return None
        days: set[int] = set()
        weekday_texts = _strs(tm, "weekdays")
        for text in weekday_texts:
            first, _, last = text.strip().lower().partition("-")
            if first not in _WEEKDAYS or (last and last not in _WEEKDAYS):
                tm.error(
                    "weekdays", f"{tm.where}.weekdays: expected mon..sun or a range like mon-fri"
                )
                continue
            a = _WEEKDAYS.index(first)
            b = _WEEKDAYS.index(last) if last else a
            days.update(d % 7 for d in range(a, b + 1 if b >= a else b + 8))
        hours = tm.text("hours", "00:00-24:00")
        start = end = 0
        match = _HOURS.match(hours)
        if match is None:
            tm.error("hours", f"{tm.where}.hours: expected 'HH:MM-HH:MM', got {hours!r}")
        else:
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or end > 1440 or start == end:
                tm.error("hours", f"{tm.where}.hours: not a valid time range: {hours!r}")
        tz = tm.text("tz", "UTC")
        zone = None
        try:
            zone = ZoneInfo(tz)
        except (ValueError, KeyError, OSError):
            tm.error("tz", f"{tm.where}.tz: unknown time zone {tz!r}")
        tm.close()
        if not tm.has("weekdays") and not tm.has("hours"):
            tm.error(None, f"{tm.where}: give 'weekdays' and/or 'hours'")
        if zone is None:
            return None
        weekdays = frozenset(days) if tm.has("weekdays") else frozenset(range(7))
        text = f"{','.join(weekday_texts) or 'any day'} {hours} {tz}"
        return c.TimeWindow(weekdays, start, end, zone, text)

    def _c_mfa(self, m: Mapping, key: str) -> c.Criterion | None:
        node = m.node_of(key)
        if isinstance(node, yaml.MappingNode):
            mm = m.mapping(key)
            assert mm is not None
            amr = frozenset(_strs(mm, "amr"))
            acr = frozenset(_strs(mm, "acr"))
            mm.close()
            if not amr and not acr:
                mm.error(None, f"{mm.where}: give 'amr' and/or 'acr'")
            return c.Mfa(amr, acr)
        value = plain_value(node) if node is not None else None
        m.flag(key)
        if value is True:
            return c.Mfa(frozenset({"mfa"}), frozenset())
        if value is False:
            m.error(key, f"{m.where}.mfa: only 'true' has a meaning; remove the key instead")
        return None

    def _matcher(self, mm: Mapping, extra: tuple[str, ...]) -> c.Matcher | None:
        given = [k for k in (*_MATCHERS, *extra) if mm.has(k)]
        if len(given) != 1:
            mm.error(None, f"{mm.where}: give exactly one of {', '.join((*_MATCHERS, *extra))}")
            return None
        kind = given[0]
        node = mm.node_of(kind)
        assert node is not None
        if kind == "in":
            if not isinstance(node, yaml.SequenceNode) or not node.value:
                mm.error(kind, f"{mm.where}.in: expected a non-empty list")
                return None
            operand: object = [plain_value(n) for n in node.value]
        elif isinstance(node, yaml.ScalarNode):
            operand = plain_value(node)
        else:
            mm.error(kind, f"{mm.where}.{kind}: expected a value, got {node_kind(node)}")
            return None
        if kind in ("starts_with", "ends_with", "regex") and not isinstance(operand, str):
            mm.error(kind, f"{mm.where}.{kind}: expected a string, got {node_kind(node)}")
            return None
        if kind == "regex":
            try:
                re.compile(str(operand))
            except re.error as exc:
                mm.error(kind, f"{mm.where}.regex: invalid regular expression: {exc}")
                return None
        return c.Matcher(kind, operand)

    def _c_claim(self, m: Mapping, key: str) -> c.Criterion | None:
        node = m.node_of(key)
        if isinstance(node, yaml.SequenceNode):
            items = m.nodes(key)
            parts = [
                self._one_claim(Mapping.of(m.doc, n, f"{m.where}.claim[{i}]"))
                for i, n in enumerate(items)
            ]
            if not parts:
                m.error(key, f"{m.where}.claim: must not be empty")
            if any(p is None for p in parts):
                return None
            return c.All(tuple(p for p in parts if p is not None), "claims")
        return self._one_claim(m.mapping(key))

    def _one_claim(self, cm: Mapping | None) -> c.Criterion | None:
        if cm is None:
            return None
        path = cm.text("path", "", required=True)
        if cm.has("exists"):
            exists = cm.flag("exists")
            if any(cm.has(k) for k in _MATCHERS):
                cm.error(None, f"{cm.where}: 'exists' cannot be combined with a matcher")
            cm.close(_MATCHERS)
            return c.Claim(path, None, exists) if path else None
        matcher = self._matcher(cm, ())
        cm.close(_MATCHERS)
        return c.Claim(path, matcher, None) if path and matcher else None

    def _c_path(self, m: Mapping, key: str) -> c.Criterion | None:
        node = m.node_of(key)
        if isinstance(node, yaml.MappingNode):
            pm = m.mapping(key)
            assert pm is not None
            matcher = self._matcher(pm, ("regex",))
            pm.close((*_MATCHERS, "regex"))
            return c.PathMatch(None, matcher) if matcher else None
        prefix = m.text(key)
        if prefix is None:
            return None
        if not _is_canonical(prefix):
            m.error(key, f"{m.where}.path: {prefix!r} is not a canonical path")
            return None
        return c.PathMatch(prefix, None)

    def _c_any(self, m: Mapping, key: str) -> c.Criterion | None:
        parts = self._list_of_bodies(m, key)
        return c.AnyOf(tuple(parts)) if parts is not None else None

    def _c_all(self, m: Mapping, key: str) -> c.Criterion | None:
        parts = self._list_of_bodies(m, key)
        return c.All(tuple(parts)) if parts is not None else None

    def _list_of_bodies(self, m: Mapping, key: str) -> list[c.Criterion] | None:
        nodes = m.nodes(key)
        if not nodes:
            if m.has(key):
                m.error(key, f"{m.where}.{key}: must be a non-empty list")
            return None
        parts = [self._nested(m, n, f"{m.where}.{key}[{i}]") for i, n in enumerate(nodes)]
        if any(p is None for p in parts):
            return None
        return [p for p in parts if p is not None]

    def _c_not(self, m: Mapping, key: str) -> c.Criterion | None:
        node = m.node_of(key)
        if node is None or isinstance(node, yaml.SequenceNode):
            m.error(key, f"{m.where}.not: expected a mapping of criteria or a rule name")
            return None
        inner = self._nested(m, node, f"{m.where}.not")
        return c.Not(inner) if inner is not None else None


def _strs(m: Mapping, key: str, *, required: bool = False) -> list[str]:
    # Typed through Any: reader.Mapping's annotations name its own list/str methods.
    values: Any = m.str_list(key, required=required)
    return [str(v) for v in values]


def _is_canonical(path: str) -> bool:
    if not path.startswith("/") or "?" in path or "#" in path:
        return False
    try:
        return canonical_path(path) == path
    except RequestRejected:
        return False
