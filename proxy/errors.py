"""Failures named by the request phase that produced them.

This module is the one place where a failure becomes an HTTP status and a
reason code. Reason codes are a small fixed vocabulary: they appear in error
bodies, audit records and metric labels, so they must never carry request data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.upstream.retry import Failure


class GatehouseError(Exception):
    """Base for every failure that ends a request with an error response."""

    status: int = 500
    reason: str = "internal_error"

    def __init__(self, reason: str | None = None, *, detail: str = "") -> None:
        # ``detail`` is for the operator's log only; it never reaches the client.
        super().__init__(detail or reason or self.reason)
        if reason is not None:
            self.reason = reason
        self.detail = detail

    def response_headers(self) -> dict[str, str]:
        """Headers the error answer carries besides the JSON body."""
        return {}


# -- canonicalise ---------------------------------------------------------
class RequestRejected(GatehouseError):
    """The request cannot be handled safely as sent (bad path, framing, ...)."""

    status, reason = 400, "bad_request"


class AmbiguousRequest(RequestRejected):
    """A single-valued field (a credential, Host, Content-Length, one of our cookies)
    came more than once, or in two spellings: two readers could take different ones."""

    status, reason = 400, "ambiguous_request"


class BadHost(RequestRejected):
    """The Host header breaks ``host [":" port]`` (RFC 9110 §7.2, RFC 3986 §3.2.2)."""

    status, reason = 400, "bad_host"


class HeadersTooLarge(RequestRejected):
    status, reason = 431, "headers_too_large"


class BodyTooLarge(RequestRejected):
    status, reason = 413, "body_too_large"


class MethodNotAllowed(RequestRejected):
    """A Gatehouse endpoint asked with a method it does not serve."""

    status, reason = 405, "method_not_allowed"


class RequestTimeout(RequestRejected):
    """The request head did not arrive whole within ``listen.header_timeout``."""

    status, reason = 408, "request_timeout"


class ClientDisconnected(RequestRejected):
    """The client went away before its request was read (nginx's 499: no one gets the answer)."""

    status, reason = 499, "client_disconnected"


# -- audit ----------------------------------------------------------------
class AuditUnavailable(GatehouseError):
    """``audit.required`` and the audit output cannot be written: no request goes unrecorded."""

    status, reason = 503, "audit_unavailable"


# -- read the original request (decision mode) ---------------------------
class UntrustedPeer(GatehouseError):
    """A decision request from a peer outside ``listen.trusted_proxies``: only the
    data plane may describe an original request (its headers would be forged)."""

    status, reason = 403, "untrusted_peer"


class BadDecisionRequest(RequestRejected):
    """The headers describing the original request are missing, malformed, or say
    two different things (two readers could take different ones)."""

    status, reason = 400, "bad_decision_request"


# -- route ----------------------------------------------------------------
class RouteNotFound(GatehouseError):
    status, reason = 404, "route_not_found"


# -- authenticate ---------------------------------------------------------
class AuthenticationError(GatehouseError):
    status, reason = 401, "unauthenticated"

    def response_headers(self) -> dict[str, str]:
        # RFC 6750 §3: a 401 names the scheme; the error code is the reason.
        return {"WWW-Authenticate": f'Bearer realm="gatehouse", error="{self.reason}"'}


class IdentityTooLarge(AuthenticationError):
    """A verified subject or email too long to pass upstream whole (cutting it
    could name somebody else)."""

    status, reason = 401, "identity_too_large"


class IdentityProviderUnavailable(GatehouseError):
    status, reason = 503, "idp_unavailable"


class StateUnavailable(GatehouseError):
    status, reason = 503, "state_unavailable"


# -- authorise ------------------------------------------------------------
class AccessDenied(GatehouseError):
    status, reason = 403, "no_rule_matched"


class RateLimited(GatehouseError):
    status, reason = 429, "rate_limited"


# -- upstream credentials -------------------------------------------------
class UpstreamCredentialsUnavailable(GatehouseError):
    status, reason = 503, "upstream_credentials_unavailable"


# -- forward --------------------------------------------------------------
class UpstreamError(GatehouseError):
    """The upstream could not be reached or did not answer properly.

    Raised for one attempt, it carries what the failure says about the
    request: ``failure`` (the retry vocabulary) and ``reached`` (whether the
    upstream may have seen it; only a request that provably never left may
    be repeated when its method is not idempotent).
    """

    status, reason = 502, "upstream_unavailable"

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
    status, reason = 502, "upstream_unavailable"


class UpstreamProtocolError(UpstreamError):
    status, reason = 502, "upstream_protocol_error"


class UpstreamTimeout(UpstreamError):
    status, reason = 504, "upstream_timeout"


# -- just-in-time access (the /.gatehouse/access/ API) ------------------------
class GrantError(GatehouseError):
    """A grant request or decision that cannot be taken as sent."""

    status, reason = 400, "invalid_grant_request"


class GrantNotFound(GrantError):
    """No such grant, or one the caller may not see (the two look the same)."""

    status, reason = 404, "grant_not_found"


class GrantForbidden(GrantError):
    """``self_approval``, ``not_an_approver``, ``not_yours``, ``csrf_failed``..."""

    status, reason = 403, "grant_forbidden"


class GrantConflict(GrantError):
    """The grant's state does not allow the step (``grant_<state>``, ``request_pending``)."""

    status, reason = 409, "grant_conflict"


class GrantLimit(GrantError):
    """Too many open requests (per caller or in all)."""

    status, reason = 429, "too_many_grant_requests"


class ServiceUnavailable(GatehouseError):
    status, reason = 503, "unavailable"


class ShuttingDown(ServiceUnavailable):
    """Still running at ``shutdown.drain_timeout``: answered (where possible) and closed."""

    reason = "shutting_down"


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
