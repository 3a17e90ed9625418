"""Operational logs: one JSON object per line, or text for a person at a terminal.

Configured once, by the CLI (:func:`configure`). A JSON line carries ``ts``
(RFC 3339, UTC), ``level``, ``logger`` and ``msg``, then every field a call
site passed with ``extra=`` (``request_id``, ``route``, ``backend``,
``problems``...), then ``exc`` for an exception's traceback, which stays
inside the one line. The audit log is separate (:mod:`proxy.observability.audit`).

Third-party loggers are held at WARNING whatever Gatehouse's own level is, and
the Azure SDK's credential loggers are switched off: azure-identity logs a
failed token request at WARNING with the token endpoint's response body.
Gatehouse's providers report each failure themselves, by error class only.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

FORMATS = ("auto", "json", "text")
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Libraries that log at INFO or DEBUG what an operator does not need, or
# worse (azure-core's HTTP logging policy writes whole exchanges at INFO).
QUIETED = (
    "azure",
    "google",
    "google_auth_httplib2",
    "urllib3",
    "requests",
    "msal",
    "asyncio",
    "aiohttp",
    "redis",
    "opentelemetry",
    "uvicorn",
)
# Loggers that may quote a token endpoint's response: nothing of theirs is written.
SILENCED = ("azure.identity", "msal")

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def rfc3339(epoch: float) -> str:
    """``2026-11-21T21:46:02.123Z``: UTC, millisecond precision."""
    seconds = int(epoch)
    millis = int((epoch - seconds) * 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


# (second, its text): swapped as one tuple, so threads never pair one's second
# with another's text.
_second_cache: tuple[int, str] = (-1, "")


def _second(seconds: int) -> str:
    global _second_cache
    cached = _second_cache
    if cached[0] == seconds:  # many records share a second: formatted once
        return cached[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    _second_cache = (seconds, text)
    return text


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the call site added with ``extra=``, in the order it was given."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        # default=str: a value of an unexpected type is written, never the record dropped.
        return orjson.dumps(out, default=str).decode()


# Fields whose content the message already carries: not repeated in text logs.
_IN_MESSAGE = frozenset({"problems"})


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = extra_fields(record)
        if not extra:
            return text
        head, newline, rest = text.partition("\n")
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in extra.items() if k not in _IN_MESSAGE)
        return f"{head} {fields}".rstrip() + newline + rest


def _text_value(value: object) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def resolve_format(name: str, stream: IO[str]) -> str:
    """``auto`` is JSON unless ``stream`` is a terminal."""
    if name != "auto":
        return name
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure(fmt: str = "auto", level: str = "info", stream: IO[str] | None = None) -> None:
    """Send every log record to ``stream`` (standard error) in ``fmt``, from ``level`` up.

    Called again (after the configuration file is read), it replaces the
    handler rather than adding a second one.
    """
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, out) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SILENCED:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
