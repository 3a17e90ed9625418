"""What the ``audit:``, ``log:`` and ``tracing:`` sections configure (parsed by
:mod:`proxy.config.load`). Plain data: importing it never imports OpenTelemetry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuditConfig:
    output: str = "stdout"  # "stdout" or a file path
    # While records cannot be written, refuse requests (503 audit_unavailable).
    required: bool = True
    # Encoded records waiting for the disk, per process; more are dropped and counted.
    max_buffer: int = 64 * 2**20


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "auto"  # json | text | auto: JSON unless standard error is a terminal
    level: str = "info"  # debug | info | warning | error


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry traces over OTLP/HTTP (needs ``pip install 'gatehouse[otel]'``)."""

    otlp_endpoint: str  # base URL: spans are posted to <endpoint>/v1/traces
    service_name: str = "gatehouse"
    sample_ratio: float = 1.0  # of traces started here; a caller's sampled flag is followed
