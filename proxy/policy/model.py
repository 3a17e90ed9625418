"""Routes and decisions as plain data: what the request path consumes from policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from proxy.policy.criteria import Criterion


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Token bucket per identity: ``requests`` per ``per`` seconds, ``burst`` tokens."""

    requests: int
    per: float
    burst: int


@dataclass(frozen=True, slots=True)
class Rule:
    """A named allow or deny rule as compiled for one route.

    ``decision`` is built once at load time (it is immutable), so deciding a
    request allocates nothing when an enforced rule fires. ``mode="audit"``
    rules are evaluated and reported in :attr:`Decision.audit` but never
    change the outcome.
    """

    name: str
    effect: Literal["allow", "deny"]
    criterion: Criterion = field(compare=False)
    source: str
    mode: Literal["enforce", "audit"] = "enforce"
    decision: Decision | None = field(default=None, compare=False, repr=False)
    # The rule as written when it cites audit-mode rules inside any/all/not:
    # ``criterion`` is then the enforced part, and this is evaluated only to
    # report what enforcing those audit rules would change.
    dry_run: Criterion | None = field(default=None, compare=False, repr=False)

    @property
    def reason(self) -> str:
        return f"{'allowed' if self.effect == 'allow' else 'denied'}:{self.name}"


@dataclass(frozen=True, slots=True)
class Route:
    """One route from a policy file, with the options the forwarding stage needs.

    Matching fields (``host``, ``path_prefix``, ``path_exact``, ``path_regex``,
    ``methods``) are compiled into the policy index; the rest travels with the
    request. ``source`` is ``file:line`` so explanations can cite it.
    """

    name: str
    backend: str
    source: str
    host: str | None = None
    path_prefix: str | None = None
    path_exact: str | None = None
    path_regex: str | None = None
    methods: frozenset[str] | None = None
    timeout: float | None = None
    max_body: int | None = None
    websocket: bool = False
    preserve_host: bool = False
    pass_authorization: bool = False
    # Forward X-HTTP-Method-Override & co; the policy then decides the overriding
    # method as well (an upstream framework would act on it).
    pass_method_override: bool = False
    set_request_headers: tuple[tuple[str, str], ...] = ()
    remove_request_headers: frozenset[str] = frozenset()
    pass_claims: tuple[str, ...] = ()
    pass_claims_max_bytes: int = 4096
    rate_limit: RateLimit | None = None
    # Authorisation, evaluated deny-first; an empty ``allow`` admits no one.
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    # Position across all loaded files: the last tie-breaker in matching.
    order: int = 0
    # Whether callers must be authenticated here. False only when who calls
    # cannot matter: every enforced rule ignores the caller, an enforced allow
    # rule always admits (``public: true``), no claims travel upstream and
    # ``identify`` is not set, and no rate limit counts per caller; the decision
    # without identity is then the one any identity would get. Audit-mode
    # rules never make a route authenticate.
    uses_identity: bool = True

    def __hash__(self) -> int:
        # Consistent with the generated __eq__ (equal routes share these fields) and
        # cheap: per-route caches keyed by the route hash it on every request.
        return hash((self.name, self.source, self.order))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of authorising one request, cited by audit, metrics and 403 bodies.

    ``reason`` comes from a fixed vocabulary: ``allowed:<rule>``,
    ``denied:<rule>``, ``no_rule_matched``, ``unauthenticated``,
    ``route_not_found``, ``rate_limited``, ``idp_unavailable``, ...
    """

    allowed: bool
    reason: str
    route: str | None
    policy_version: str
    # Reasons of ``mode: audit`` rules that fired: what would have happened.
    audit: tuple[str, ...] = ()
