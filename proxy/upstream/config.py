"""How Gatehouse talks to a backend's endpoints: TLS, health, outliers, balancing, retries, circuit.

Parsed from ``backends.<name>`` next to ``urls``/``timeouts``/``credentials``
(which :mod:`proxy.config.load` reads). ``kind`` only changes defaults; every
default can be overridden by writing the key. Defaults per kind (outlier
detection, retries and the circuit breaker are the same for every kind):

==================== ============ ============= ============== ================
kind                 https only   active health  probe          healthy answers
==================== ============ ============= ============== ================
http                 no           off            GET /healthz   200-399
fastapi              no           on, 10s        GET /          200-499
azure_app_service    yes          off            GET /healthz   200-399
gcp_cloud_function   yes          off            GET /          200-399
==================== ============ ============= ============== ================

Managed platforms put their own load balancer in front of one URL, so probing
it says little, and for Cloud Functions every probe is a billed, possibly
cold-started, authenticated invocation. A FastAPI app need not serve any
particular path (``openapi_url=None`` removes ``/openapi.json``), so its
default probe asks for ``/`` and takes any answer below 500 as "serving": a
404 from the app's router still shows the process accepts connections and
answers HTTP. A configured ``health_check.path`` expects 2xx/3xx unless
``expected_status`` says otherwise.
"https only" refuses ``http://`` URLs except to loopback (local emulators).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import yaml

from proxy.config.keyfiles import check_key_file
from proxy.config.reader import Mapping, node_kind
from proxy.outbound import is_loopback_host

KINDS = ("http", "fastapi", "azure_app_service", "gcp_cloud_function")
BALANCING = ("round_robin", "least_request")
# ``timeout`` (the upstream took the request and did not answer in time) is
# accepted but never a default: retrying it multiplies the latency of a slow
# upstream by the number of attempts.
RETRY_ON = ("connect_error", "reset", "timeout", "502", "503", "504")
DEFAULT_RETRY_ON = frozenset({"connect_error", "reset", "502", "503"})
_HTTPS_ONLY = frozenset({"azure_app_service", "gcp_cloud_function"})
_STATUS_RANGE = re.compile(r"^([1-5])xx$|^(\d{3})\s*-\s*(\d{3})$|^(\d{3})$")


@dataclass(frozen=True, slots=True)
class UpstreamTLSOptions:
    ca_file: Path | None = None  # trust only these CAs (default: the system store)
    client_cert_file: Path | None = None  # mutual TLS towards the upstream
    client_key_file: Path | None = None
    server_name: str | None = None  # SNI and the name the certificate must carry
    verify: bool = True
    min_version: str = "1.2"


StatusRanges = tuple[tuple[int, int], ...]  # inclusive ranges
_EXPECTED_STATUS: StatusRanges = ((200, 399),)


@dataclass(frozen=True, slots=True)
class HealthCheckOptions:
    enabled: bool = False
    path: str = "/healthz"
    interval: float = 10.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2
    expected_status: StatusRanges = _EXPECTED_STATUS

    def status_ok(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.expected_status)


@dataclass(frozen=True, slots=True)
class OutlierOptions:
    """Passive outlier detection: real traffic takes a failing endpoint out (as Envoy's).

    ``consecutive_failures`` failed attempts in a row (a connect failure, a
    reset, a timeout, a malformed answer, or an answer in ``failure_status``)
    make an endpoint an outlier. An outlier is ejected for
    ``base_ejection_time`` × the number of times it was ejected lately (at most
    ``max_ejection_time``), unless that would eject more than
    ``max_ejection_percent`` of the endpoints or the last one in service.
    """

    consecutive_failures: int = 5
    failure_status: StatusRanges = ((500, 599),)
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 50


@dataclass(frozen=True, slots=True)
class RetryOptions:
    attempts: int = 2  # tries in total, the first included; 1 disables retries
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    budget_ratio: float = 0.2  # retries ≤ ratio × requests over budget_window ...
    budget_window: float = 10.0
    budget_min_retries: int = 10  # ... plus this many, so quiet backends can retry at all
    retry_on: frozenset[str] = DEFAULT_RETRY_ON


@dataclass(frozen=True, slots=True)
class CircuitOptions:
    """The backend-wide breaker: it opens when no endpoint is usable (see :mod:`.circuit`)."""

    enabled: bool = True
    open_for: float = 10.0
    half_open_probes: int = 1


@dataclass(frozen=True, slots=True)
class BackendOptions:
    kind: str = "http"
    tls: UpstreamTLSOptions = UpstreamTLSOptions()
    health_check: HealthCheckOptions = HealthCheckOptions()
    outlier_detection: OutlierOptions = OutlierOptions()
    load_balancing: str = "round_robin"
    retries: RetryOptions = RetryOptions()
    circuit_breaker: CircuitOptions = CircuitOptions()
    https_only: bool = False
    notes: tuple[str, ...] = field(default=())  # operator warnings (e.g. verify: false)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0  # idle time between reads from the upstream
    total: float = 60.0  # deadline for the upstream's response headers


class BackendView(Protocol):
    """What the upstream layer reads of a backend (``proxy.config.schema.BackendConfig``,
    which also holds the backend's upstream credentials: none of this layer's business)."""

    @property
    def urls(self) -> tuple[str, ...]: ...

    @property
    def timeouts(self) -> Timeouts: ...

    @property
    def max_connections(self) -> int: ...


def _kind_health(kind: str) -> HealthCheckOptions:
    if kind == "fastapi":
        # Any answer below 500: the app serves, whatever routes it has (see above).
        return HealthCheckOptions(enabled=True, path="/", expected_status=((200, 499),))
    if kind == "gcp_cloud_function":
        return HealthCheckOptions(enabled=False, path="/")
    return HealthCheckOptions()


def _positive(m: Mapping, key: str, default: float) -> float:
    value = m.duration(key, default)
    if value <= 0:
        m.error(key, f"{m.where}.{key}: must be greater than zero")
        return default
    return value


def _one_or_list(m: Mapping, key: str) -> list[yaml.Node]:
    """The items of ``key``: a list's, or one value alone (YAML reads a bare 503 as an
    integer and 2xx as a string, so each item is checked by its text)."""
    node = m.take(key)
    if node is None:
        return []
    return list(node.value) if isinstance(node, yaml.SequenceNode) else [node]


def _status_ranges(m: Mapping, key: str) -> tuple[tuple[int, int], ...] | None:
    out: list[tuple[int, int]] = []
    for item in _one_or_list(m, key):
        text = str(item.value).strip() if isinstance(item, yaml.ScalarNode) else ""
        match = _STATUS_RANGE.match(text)
        if match is None:
            m.doc.error(
                item,
                f"{m.where}.{key}: expected a status like 200, 2xx or 200-299, "
                f"got {text or node_kind(item)!r}",
            )
            continue
        if match.group(1):
            lo, hi = int(match.group(1)) * 100, int(match.group(1)) * 100 + 99
        elif match.group(4):
            lo = hi = int(match.group(4))
        else:
            lo, hi = int(match.group(2)), int(match.group(3))
        if not 100 <= lo <= hi <= 599:
            m.doc.error(item, f"{m.where}.{key}: not a status range: {text!r}")
            continue
        out.append((lo, hi))
    return tuple(out) if out else None


def _tls(m: Mapping | None) -> UpstreamTLSOptions:
    if m is None:
        return UpstreamTLSOptions()
    ca = m.path("ca_file")
    cert = m.path("client_cert_file")
    key = m.path("client_key_file")
    check_key_file(m, "client_key_file", key)
    server_name: str | None = m.text("server_name")
    verify = m.flag("verify", True)
    min_version = m.choice("min_version", ("1.2", "1.3"), "1.2")
    if (cert is None) != (key is None):
        m.error(
            "client_cert_file" if cert is not None else "client_key_file",
            f"{m.where}: client_cert_file and client_key_file go together",
        )
    if not verify and ca is not None:
        m.error("verify", f"{m.where}: ca_file has no effect with verify: false; drop one")
    if server_name is not None and not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", server_name):
        m.error("server_name", f"{m.where}.server_name: expected a DNS name, got {server_name!r}")
        server_name = None
    m.close()
    return UpstreamTLSOptions(ca, cert, key, server_name, verify, min_version)


def _health(m: Mapping | None, default: HealthCheckOptions) -> HealthCheckOptions:
    if m is None:
        return default
    # Writing the section at all means "check it", unless it says otherwise.
    enabled = m.flag("enabled", True)
    expected_default = default.expected_status
    path = default.path
    if m.has("path"):
        path = m.text("path", default.path) or default.path
        # The kind's lenient "any answer below 500" is for its own probe only:
        # a health endpoint the operator names is expected to say 2xx/3xx.
        expected_default = _EXPECTED_STATUS
    if not path.startswith("/") or any(c in path for c in " #\r\n"):
        m.error("path", f"{m.where}.path: expected an absolute path like /healthz, got {path!r}")
        path = default.path
    interval = _positive(m, "interval", default.interval)
    if m.has("timeout"):
        timeout = _positive(m, "timeout", default.timeout)
        if timeout > interval:
            m.error("timeout", f"{m.where}.timeout: must not exceed interval ({interval:g}s)")
            timeout = interval
    else:
        timeout = min(default.timeout, interval)  # a short interval shortens the default
    options = HealthCheckOptions(
        enabled=enabled,
        path=path,
        interval=interval,
        timeout=timeout,
        healthy_threshold=m.integer("healthy_threshold", default.healthy_threshold, minimum=1),
        unhealthy_threshold=m.integer(
            "unhealthy_threshold", default.unhealthy_threshold, minimum=1
        ),
        expected_status=_status_ranges(m, "expected_status") or expected_default,
    )
    m.close()
    return options


def _outliers(m: Mapping | None) -> OutlierOptions:
    default = OutlierOptions()
    if m is None:
        return default
    base = _positive(m, "base_ejection_time", default.base_ejection_time)
    longest = _positive(m, "max_ejection_time", max(default.max_ejection_time, base))
    if longest < base:
        m.error(
            "max_ejection_time", f"{m.where}.max_ejection_time: must be at least base_ejection_time"
        )
        longest = base
    percent = m.integer("max_ejection_percent", default.max_ejection_percent, minimum=0)
    if percent > 100:
        m.error("max_ejection_percent", f"{m.where}.max_ejection_percent: at most 100")
        percent = default.max_ejection_percent
    options = OutlierOptions(
        consecutive_failures=m.integer(
            "consecutive_failures", default.consecutive_failures, minimum=1
        ),
        failure_status=_status_ranges(m, "failure_status") or default.failure_status,
        base_ejection_time=base,
        max_ejection_time=longest,
        max_ejection_percent=percent,
    )
    m.close()
    return options


def _retries(m: Mapping | None) -> RetryOptions:
    default = RetryOptions()
    if m is None:
        return default
    attempts = m.integer("attempts", default.attempts, minimum=1)
    if attempts > 10:
        m.error("attempts", f"{m.where}.attempts: at most 10")
        attempts = default.attempts
    base = _positive(m, "backoff_base", default.backoff_base)
    maximum = _positive(m, "backoff_max", default.backoff_max)
    if maximum < base:
        m.error("backoff_max", f"{m.where}.backoff_max: must be at least backoff_base")
        maximum = base
    ratio = m.number("budget_ratio", default.budget_ratio, minimum=0.0, maximum=1.0)
    retry_on = default.retry_on
    if m.has("retry_on"):
        names: list[str] = []
        for item in _one_or_list(m, "retry_on"):
            text = str(item.value) if isinstance(item, yaml.ScalarNode) else ""
            if text not in RETRY_ON:
                m.doc.error(
                    item,
                    f"{m.where}.retry_on: must be among {', '.join(RETRY_ON)}, "
                    f"got {text or node_kind(item)!r}",
                )
            else:
                names.append(text)
        retry_on = frozenset(names)
    options = RetryOptions(
        attempts=attempts,
        backoff_base=base,
        backoff_max=maximum,
        budget_ratio=ratio,
        budget_window=_positive(m, "budget_window", default.budget_window),
        budget_min_retries=m.integer("budget_min_retries", default.budget_min_retries, minimum=0),
        retry_on=retry_on,
    )
    m.close()
    return options


def _circuit(m: Mapping | None) -> CircuitOptions:
    default = CircuitOptions()
    if m is None:
        return default
    options = CircuitOptions(
        enabled=m.flag("enabled", True),
        open_for=_positive(m, "open_for", default.open_for),
        half_open_probes=m.integer("half_open_probes", default.half_open_probes, minimum=1),
    )
    m.close()
    return options


def parse_backend_options(m: Mapping, name: str, *, urls: Sequence[str] = ()) -> BackendOptions:
    """Read the endpoint-handling keys of ``backends.<name>`` (call before ``m.close()``).

    ``urls`` (already validated by the loader) lets the kind check its scheme.
    Problems are recorded on the reader as ``file:line: message``.
    """
    kind = m.choice("kind", KINDS, "http")
    tls_m = m.mapping("tls")
    tls = _tls(tls_m)
    health = _health(m.mapping("health_check"), _kind_health(kind))
    outliers = _outliers(m.mapping("outlier_detection"))
    balancing = m.choice("load_balancing", BALANCING, "round_robin")
    retries = _retries(m.mapping("retries"))
    circuit = _circuit(m.mapping("circuit_breaker"))
    https_only = kind in _HTTPS_ONLY
    schemes = {urlsplit(u).scheme for u in urls}
    if https_only:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
                m.error("urls", f"backends.{name}: kind {kind} is served over https only: {url!r}")
    if tls_m is not None and urls and "https" not in schemes:
        m.error("tls", f"backends.{name}.tls: applies to https URLs, and every URL is http")
    notes: list[str] = []
    if not tls.verify:
        notes.append(
            f"backends.{name}.tls.verify is false: upstream certificates are NOT checked, "
            "anyone on the path can read and alter this traffic"
        )
    return BackendOptions(
        kind=kind,
        tls=tls,
        health_check=health,
        outlier_detection=outliers,
        load_balancing=balancing,
        retries=retries,
        circuit_breaker=circuit,
        https_only=https_only,
        notes=tuple(notes),
    )
