"""Grant notifications to a webhook (Slack incoming webhooks, or anything that
reads JSON): signed, retried with backoff, counted, never in anyone's way.

The body is Slack-compatible (``text``, which Slack shows) plus the event as
data for other receivers. ``X-Gatehouse-Signature: sha256=<hex>`` is
HMAC-SHA256 over the exact body bytes with ``grants.webhook_secret``; the body
carries ``timestamp`` and ``delivery`` so a receiver can refuse old or repeated
deliveries. Receivers verify with::

    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, request.headers["X-Gatehouse-Signature"])

:meth:`WebhookSender.notify` only schedules a delivery and returns: a slow or
failing webhook never delays or blocks a request or a decision. Each delivery
is tried ``webhook_attempts`` times (1 s, 2 s, 4 s ... apart, at most 60 s);
at most ``MAX_UNDELIVERED`` wait at once, later ones are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from proxy.config.reader import format_duration
from proxy.grants.model import PAST_TENSE, Actor, Grant, actor_dict
from proxy.observability.metrics import GRANT_WEBHOOK_DELIVERIES, GRANT_WEBHOOK_FAILURES

log = logging.getLogger("gatehouse.grants")

MAX_UNDELIVERED = 1000
SIGNATURE_HEADER = "X-Gatehouse-Signature"


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def slack_escape(text: str) -> str:
    """Slack reads ``<...>`` as links and mentions (``<!channel>``): people's text must
    never ping a channel or pose as a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def event_name(action: str) -> str:
    return f"grant.{PAST_TENSE.get(action, action)}"


def message(action: str, grant: Grant, actor: Actor | None, reason: str, page_url: str) -> str:
    who = slack_escape(actor.label() if actor is not None else "the clock")
    what = f"{slack_escape(grant.route)} (rule {slack_escape(grant.rule)})"
    requester = slack_escape(grant.requester.label())
    duration = format_duration(grant.duration)
    if action == "request":
        text = f"{requester} requests access to {what} for {duration}"
        if grant.justification:
            text += f": “{slack_escape(grant.justification)}”"
    elif action == "lapse":
        text = f"Nobody decided {requester}'s request for {what}: it lapsed"
    elif action == "end":
        text = f"{requester}'s access to {what} expired"
    else:
        verb = {"approve": "approved", "deny": "denied", "revoke": "revoked"}[action]
        text = f"{who} {verb} {requester}'s access to {what}"
        if reason:
            text += f": “{slack_escape(reason)}”"
    return f"{text} <{page_url}|{grant.id}>"


def payload(
    action: str, grant: Grant, actor: Actor | None, reason: str, page_url: str, now: float
) -> dict[str, Any]:
    return {
        "text": message(action, grant, actor, reason, page_url),
        "event": event_name(action),
        "delivery": uuid.uuid4().hex,
        "timestamp": int(now),
        "grant": {
            "id": grant.id,
            "route": grant.route,
            "rule": grant.rule,
            "state": grant.state,
            "requester": actor_dict(grant.requester),
            "duration": grant.duration,
            "justification": grant.justification,
            "starts_at": grant.starts_at,
            "ends_at": grant.ends_at,
        },
        "actor": actor_dict(actor),
        "reason": reason,
    }


class WebhookSender:
    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        page_url: str,
        timeout: float = 5.0,
        attempts: int = 5,
        first_backoff: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._secret = secret
        self._page_url = page_url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._attempts = attempts
        self._first_backoff = first_backoff
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(raise_for_status=False)

    async def close(self, grace: float = 2.0) -> None:
        """Give deliveries in flight a moment, then stop (undelivered ones are lost)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=grace)
        for task in list(self._pending):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def notify(self, action: str, grant: Grant, actor: Actor | None, reason: str = "") -> None:
        """Schedule a delivery and return at once."""
        if len(self._pending) >= MAX_UNDELIVERED:
            GRANT_WEBHOOK_DELIVERIES.labels(result="dropped").inc()
            log.warning(
                "grant webhook: %d deliveries waiting, dropping %s for %s",
                len(self._pending),
                event_name(action),
                grant.id,
            )
            return
        body = orjson.dumps(payload(action, grant, actor, reason, self._page_url, self._clock()))
        task = asyncio.get_running_loop().create_task(self._deliver(body, event_name(action)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, body: bytes, event: str) -> None:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            "X-Gatehouse-Event": event,
            "User-Agent": "gatehouse-grants",
        }
        delay = self._first_backoff
        for attempt in range(1, self._attempts + 1):
            kind = await self._attempt(body, headers)
            if kind is None:
                GRANT_WEBHOOK_DELIVERIES.labels(result="delivered").inc()
                return
            GRANT_WEBHOOK_FAILURES.labels(kind=kind).inc()
            if attempt == self._attempts:
                break
            # Never the URL in logs: Slack's carry their secret in the path.
            log.info("grant webhook %s failed (%s), attempt %d: retrying", event, kind, attempt)
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))  # noqa: S311
            delay = min(delay * 2, 60.0)
        GRANT_WEBHOOK_DELIVERIES.labels(result="failed").inc()
        log.warning("grant webhook %s not delivered after %d attempts", event, self._attempts)

    async def _attempt(self, body: bytes, headers: dict[str, str]) -> str | None:
        """None when delivered (2xx); else the kind of failure."""
        session = self._session
        if session is None:
            return "connect"
        try:
            async with session.post(
                self.url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await response.content.read(4096)  # a little of the body, to reuse the socket
                return None if 200 <= response.status < 300 else "status"
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError):
            return "connect"
