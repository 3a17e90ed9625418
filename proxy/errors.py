"""Failures named by the request phase that produced them, and the reason codes they carry.

This module is the one place where a failure becomes an HTTP status, a reason
code and the headers of its answer. Reason codes are a small fixed vocabulary
(:class:`Reason`, and :class:`AuditReason` for records that are not failures):
they appear in error bodies, audit records and metric labels, so they must
never carry request data. The only reasons not listed here are the policy's
own, which name a rule of the policy files (``allowed:<rule>``,
``denied:<rule>``, ``unknown_claims:<rule>``).
"""

from __future__ import annotations

from enum import StrEnum


class Failure(StrEnum):
    """What went wrong with one upstream attempt, as an :class:`UpstreamError` carries
    it; the values are the backends' ``retry_on`` names."""

    CONNECT_ERROR = "connect_error"  # refused, unreachable, TLS handshake, connect timeout
    RESET = "reset"  # the connection died after the request was (partly) sent
    TIMEOUT = "timeout"  # the upstream took the request and did not answer in time
    PROTOCOL = "protocol"  # a malformed answer: never retried
    STATUS_502 = "502"
    STATUS_503 = "503"
    STATUS_504 = "504"


class Reason(StrEnum):
    """Every fixed reason a request is refused or fails with, and the status it is answered.

    A member is the plain string to everything that records it (JSON bodies,
    audit records, metric labels). The README's table of reason codes lists
    exactly these, with these statuses (``tests/test_errors.py``). One
    exception to the status: the login callback answers every failure 400
    (:class:`LoginFailed`), whatever its reason.
    """

    status: int

    def __new__(cls, value: str, status: int) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        return member

    # -- the HTTP edge and the target ------------------------------------
    BAD_REQUEST = "bad_request", 400
    MALFORMED_REQUEST = "malformed_request", 400
    AMBIGUOUS_REQUEST = "ambiguous_request", 400
    BAD_HOST = "bad_host", 400
    BAD_PATH = "bad_path", 400
    HEADERS_TOO_LARGE = "headers_too_large", 431
    BODY_TOO_LARGE = "body_too_large", 413
    METHOD_NOT_ALLOWED = "method_not_allowed", 405
    REQUEST_TIMEOUT = "request_timeout", 408
    CLIENT_DISCONNECTED = "client_disconnected", 499
    CANCELLED = "cancelled", 499
    SHUTTING_DOWN = "shutting_down", 503
    INTERNAL_ERROR = "internal_error", 500
    AUDIT_UNAVAILABLE = "audit_unavailable", 503
    # -- decision mode ---------------------------------------------------
    UNTRUSTED_PEER = "untrusted_peer", 403
    BAD_DECISION_REQUEST = "bad_decision_request", 400
    # -- route -----------------------------------------------------------
    ROUTE_NOT_FOUND = "route_not_found", 404
    # -- authenticate ----------------------------------------------------
    UNAUTHENTICATED = "unauthenticated", 401
    INVALID_TOKEN = "invalid_token", 401
    EXPIRED_TOKEN = "expired_token", 401
    INVALID_API_KEY = "invalid_api_key", 401
    EXPIRED_API_KEY = "expired_api_key", 401
    API_KEY_THROTTLED = "api_key_throttled", 429
    INVALID_CERTIFICATE = "invalid_certificate", 401
    IDENTITY_TOO_LARGE = "identity_too_large", 401
    IDP_UNAVAILABLE = "idp_unavailable", 503
    STATE_UNAVAILABLE = "state_unavailable", 503
    # -- the browser's return from the IdP (the login callback) -----------
    LOGIN_EXPIRED = "login_expired", 400
    LOGIN_FAILED = "login_failed", 400
    INVALID_STATE = "invalid_state", 400
    INVALID_NONCE = "invalid_nonce", 400
    SESSION_TOO_LARGE = "session_too_large", 400
    # -- authorise -------------------------------------------------------
    NO_RULE_MATCHED = "no_rule_matched", 403
    CROSS_SITE_REQUEST = "cross_site_request", 403
    METHOD_OVERRIDE_DENIED = "method_override_denied", 403
    RATE_LIMITED = "rate_limited", 429
    # -- upstream credentials --------------------------------------------
    UPSTREAM_CREDENTIALS_UNAVAILABLE = "upstream_credentials_unavailable", 503
    BEARER_TOKEN_REQUIRED = "bearer_token_required", 401
    # -- forward ---------------------------------------------------------
    UPSTREAM_UNAVAILABLE = "upstream_unavailable", 502
    UPSTREAM_PROTOCOL_ERROR = "upstream_protocol_error", 502
    UPSTREAM_TIMEOUT = "upstream_timeout", 504
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream", 502
    UPSTREAM_CIRCUIT_OPEN = "upstream_circuit_open", 502
    UPSTREAM_REFUSED_UPGRADE = "upstream_refused_upgrade", 502
    # -- just-in-time access (the /.gatehouse/access/ API) ---------------
    INVALID_REQUEST = "invalid_request", 400
    JSON_REQUIRED = "json_required", 400
    NO_SUCH_GRANT_RULE = "no_such_grant_rule", 400
    INVALID_DURATION = "invalid_duration", 400
    DURATION_TOO_LONG = "duration_too_long", 400
    INVALID_START = "invalid_start", 400
    START_TOO_LATE = "start_too_late", 400
    JUSTIFICATION_REQUIRED = "justification_required", 400
    JUSTIFICATION_TOO_LONG = "justification_too_long", 400
    INVALID_JUSTIFICATION = "invalid_justification", 400
    REASON_REQUIRED = "reason_required", 400
    REASON_TOO_LONG = "reason_too_long", 400
    INVALID_REASON = "invalid_reason", 400
    GRANT_NOT_FOUND = "grant_not_found", 404
    SELF_APPROVAL = "self_approval", 403
    NOT_AN_APPROVER = "not_an_approver", 403
    CSRF_FAILED = "csrf_failed", 403
    REQUEST_PENDING = "request_pending", 409
    GRANT_BUSY = "grant_busy", 409
    GRANT_EXISTS = "grant_exists", 409
    # The grant's state forbids the step: ``grant_<state>``.
    GRANT_PENDING = "grant_pending", 409
    GRANT_APPROVED = "grant_approved", 409
    GRANT_ACTIVE = "grant_active", 409
    GRANT_DENIED = "grant_denied", 409
    GRANT_EXPIRED = "grant_expired", 409
    GRANT_REVOKED = "grant_revoked", 409
    TOO_MANY_GRANT_REQUESTS = "too_many_grant_requests", 429


class AuditReason(StrEnum):
    """The reason of an audit record that is not a failure (what happened instead).

    Kept apart from :class:`Reason`: a few share a code with a refusal
    (``grant_approved`` is a decision taken, and also, 409, the state that
    forbids approving again).
    """

    GATEHOUSE_ENDPOINT = "gatehouse_endpoint"  # one of Gatehouse's own endpoints answered
    LOGIN = "login"
    LOGOUT = "logout"
    # A WebSocket the proxy closed (its record's status is the 101 it began with).
    WEBSOCKET_IDLE_TIMEOUT = "websocket_idle_timeout"
    WEBSOCKET_MESSAGE_TOO_LARGE = "websocket_message_too_large"
    # What a call to the access API did; expiries are records of their own.
    GRANT_REQUESTED = "grant_requested"
    GRANT_APPROVED = "grant_approved"
    GRANT_DENIED = "grant_denied"
    GRANT_REVOKED = "grant_revoked"
    GRANT_EXPIRED = "grant_expired"
    GRANT_LAPSED = "grant_lapsed"


def upstream_status(status: int) -> str:
    """The ``gatehouse_upstream_errors_total`` kind of a 5xx the upstream answered itself."""
    return f"upstream_status_{status}"


# RFC 6750 §3: the challenge of every 401.
_CHALLENGE = 'Bearer realm="gatehouse"'


class GatehouseError(Exception):
    """Base for every failure that ends a request with an error response."""

    reason: str = Reason.INTERNAL_ERROR
    status: int = Reason.INTERNAL_ERROR.status

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # A class's status is the one its reason is answered with (the Reason
        # table holds it once); a reason passed at raise time keeps the class's.
        reason = cls.__dict__.get("reason")
        if isinstance(reason, Reason) and "status" not in cls.__dict__:
            cls.status = reason.status

    def __init__(self, reason: str | None = None, *, detail: str = "") -> None:
        # ``detail`` is for the operator's log only; it never reaches the client.
        super().__init__(detail or reason or self.reason)
        if reason is not None:
            self.reason = reason
        self.detail = detail

    def response_headers(self) -> dict[str, str]:
        """The headers the error answer carries besides the JSON body's own."""
        return {}


# -- canonicalise ---------------------------------------------------------
class RequestRejected(GatehouseError):
    """The request cannot be handled safely as sent (bad path, framing, ...)."""

    reason = Reason.BAD_REQUEST


class MalformedRequest(RequestRejected):
    """The request breaks HTTP/1.1 (its head, its framing, a WebSocket handshake)."""

    reason = Reason.MALFORMED_REQUEST


class AmbiguousRequest(RequestRejected):
    """A single-valued field (a credential, Host, Content-Length, one of our cookies)
    came more than once, or in two spellings: two readers could take different ones."""

    reason = Reason.AMBIGUOUS_REQUEST


class BadHost(RequestRejected):
    """The Host header breaks ``host [":" port]`` (RFC 9110 §7.2, RFC 3986 §3.2.2)."""

    reason = Reason.BAD_HOST


class BadPath(RequestRejected):
    """The target's path cannot be made canonical safely (or, in decision mode, is not)."""

    reason = Reason.BAD_PATH


class HeadersTooLarge(RequestRejected):
    """A head or trailer section over the listener's limits."""

    reason = Reason.HEADERS_TOO_LARGE


class BodyTooLarge(RequestRejected):
    reason = Reason.BODY_TOO_LARGE


class MethodNotAllowed(RequestRejected):
    """A Gatehouse endpoint asked with a method it does not serve; ``allow``, when
    given, names the ones it does (the answer's ``Allow``)."""

    reason = Reason.METHOD_NOT_ALLOWED

    def __init__(self, *, allow: tuple[str, ...] = (), detail: str = "") -> None:
        super().__init__(detail=detail)
        self.allow = allow

    def response_headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)} if self.allow else {}


class RequestTimeout(RequestRejected):
    """The request head did not arrive whole within ``listen.header_timeout``."""

    reason = Reason.REQUEST_TIMEOUT


class ClientDisconnected(RequestRejected):
    """The client went away before its request was read (nginx's 499: no one gets the answer)."""

    reason = Reason.CLIENT_DISCONNECTED


# -- audit ----------------------------------------------------------------
class AuditUnavailable(GatehouseError):
    """``audit.required`` and the audit output cannot be written: no request goes unrecorded."""

    reason = Reason.AUDIT_UNAVAILABLE


# -- read the original request (decision mode) ---------------------------
class UntrustedPeer(GatehouseError):
    """A decision request from a peer outside ``listen.trusted_proxies``: only the
    data plane may describe an original request (its headers would be forged)."""

    reason = Reason.UNTRUSTED_PEER


class BadDecisionRequest(RequestRejected):
    """The headers describing the original request are missing, malformed, or say
    two different things (two readers could take different ones)."""

    reason = Reason.BAD_DECISION_REQUEST


# -- route ----------------------------------------------------------------
class RouteNotFound(GatehouseError):
    reason = Reason.ROUTE_NOT_FOUND


# -- authenticate ---------------------------------------------------------
class AuthenticationError(GatehouseError):
    """No usable credential: 401 with a bearer challenge naming the reason."""

    reason = Reason.UNAUTHENTICATED

    def response_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'{_CHALLENGE}, error="{self.reason}"'}


class CredentialsRequired(AuthenticationError):
    """A call that needs an identity and sent no credential at all: the challenge
    alone, without an error code (RFC 6750 §3.1)."""

    def response_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": _CHALLENGE}


class IdentityTooLarge(AuthenticationError):
    """A verified subject or email too long to pass upstream whole (cutting it
    could name somebody else)."""

    reason = Reason.IDENTITY_TOO_LARGE


class LoginFailed(GatehouseError):
    """The browser's return from the IdP cannot be taken: the browser's request gone
    wrong, not missing credentials, so 400 (also with the reason of any other
    failure met on the way: ``invalid_token``, ``idp_unavailable``...)."""

    reason: str = Reason.LOGIN_FAILED


class IdentityProviderUnavailable(GatehouseError):
    reason = Reason.IDP_UNAVAILABLE


class StateUnavailable(GatehouseError):
    reason = Reason.STATE_UNAVAILABLE


# -- authorise ------------------------------------------------------------
class AccessDenied(GatehouseError):
    """The policy says no, for the decision's reason (which may name a rule: ``denied:<rule>``)."""

    reason: str = Reason.NO_RULE_MATCHED


class RateLimited(GatehouseError):
    reason = Reason.RATE_LIMITED


# -- upstream credentials -------------------------------------------------
class UpstreamCredentialsUnavailable(GatehouseError):
    reason = Reason.UPSTREAM_CREDENTIALS_UNAVAILABLE


# -- forward --------------------------------------------------------------
class UpstreamError(GatehouseError):
    """The upstream could not be reached or did not answer properly.

    Raised for one attempt, it carries what the failure says about the
    request: ``failure`` (the retry vocabulary) and ``reached`` (whether the
    upstream may have seen it; only a request that provably never left may
    be repeated when its method is not idempotent).
    """

    reason = Reason.UPSTREAM_UNAVAILABLE

    def __init__(
        self,
        reason: str | None = None,
        *,
        detail: str = "",
        failure: Failure | None = None,
        reached: bool = True,
    ) -> None:
        super().__init__(reason, detail=detail)
        self.failure = failure
        self.reached = reached


class UpstreamConnectError(UpstreamError):
    reason = Reason.UPSTREAM_UNAVAILABLE


class UpstreamProtocolError(UpstreamError):
    reason = Reason.UPSTREAM_PROTOCOL_ERROR


class UpstreamTimeout(UpstreamError):
    reason = Reason.UPSTREAM_TIMEOUT


# -- just-in-time access (the /.gatehouse/access/ API) ------------------------
class GrantError(GatehouseError):
    """A grant request or decision that cannot be taken as sent."""

    reason = Reason.INVALID_REQUEST


class GrantNotFound(GrantError):
    """No such grant, or one the caller may not see (the two look the same)."""

    reason = Reason.GRANT_NOT_FOUND


class GrantForbidden(GrantError):
    """``self_approval``, ``not_an_approver``, ``csrf_failed``."""

    reason = Reason.NOT_AN_APPROVER


class GrantConflict(GrantError):
    """The grant's state does not allow the step (``grant_<state>``), or another
    step came first (``request_pending``, ``grant_busy``, ``grant_exists``)."""

    reason = Reason.GRANT_BUSY


class GrantLimit(GrantError):
    """Too many open requests (per caller or in all)."""

    reason = Reason.TOO_MANY_GRANT_REQUESTS


# -- shutdown ---------------------------------------------------------------
class ShuttingDown(GatehouseError):
    """Still running at ``shutdown.drain_timeout``: answered (where possible) and closed."""

    reason = Reason.SHUTTING_DOWN


def status_class(status: int) -> str:
    return f"{status // 100}xx"


# -- start-up ---------------------------------------------------------------
class StartupError(Exception):
    """Something the configuration names cannot be had at start-up: a port in
    use, a file that cannot be read. Printed as ``key: message`` (exit 2)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
