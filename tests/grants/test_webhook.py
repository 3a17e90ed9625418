"""The grant webhook: signed Slack-compatible JSON, retried with backoff, counted,
and never in the way of whoever triggered it (a local receiver over real HTTP)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from proxy.grants import machine
from proxy.grants.webhook import WebhookSender, message
from tests.grants.support import ALICE, BOB, pending
from tests.grants.webhook_receiver import SECRET, webhook_receiver


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _sender(url: str, **options: float) -> WebhookSender:
    sender = WebhookSender(
        url,
        SECRET,
        page_url="https://gh.example.com/.gatehouse/access/",
        **options,  # type: ignore[arg-type]
    )
    await sender.start()
    return sender


async def test_a_delivery_is_signed_over_its_exact_body_and_reads_as_slack_text() -> None:
    async with webhook_receiver() as receiver:
        sender = await _sender(receiver.url)
        try:
            grant = pending()
            sender.notify("request", grant, ALICE, grant.justification)
            (delivery,) = await receiver.wait_for(1)
        finally:
            await sender.close()
    assert delivery.signature_valid()
    assert not delivery.signature_valid(b"another secret")
    data = delivery.json
    assert data["event"] == "grant.requested"
    assert data["grant"]["id"] == grant.id
    assert data["actor"]["subject"] == "alice"
    assert (
        "alice@example.com requests access to prod-api (rule prod-writers) for 1h" in data["text"]
    )
    assert data["text"].endswith(f"<https://gh.example.com/.gatehouse/access/|{grant.id}>")
    assert delivery.headers["X-Gatehouse-Event"] == "grant.requested"
    assert abs(data["timestamp"] - time.time()) < 60


async def test_a_failing_webhook_is_retried_with_backoff_and_each_failure_counted() -> None:
    failures = _count("gatehouse_grant_webhook_failures_total", kind="status")
    delivered = _count("gatehouse_grant_webhook_deliveries_total", result="delivered")
    async with webhook_receiver() as receiver:
        receiver.statuses = [500, 503]
        sender = await _sender(receiver.url, first_backoff=0.05)
        try:
            sender.notify(
                "approve", machine.decide(pending(), "approve", BOB, 1e9, "ok"), BOB, "ok"
            )
            (delivery,) = await receiver.wait_for(1)
        finally:
            await sender.close()
    assert len(receiver.deliveries) == 3
    assert all(d.body == delivery.body for d in receiver.deliveries)  # the same delivery each time
    assert _count("gatehouse_grant_webhook_failures_total", kind="status") == failures + 2
    assert _count("gatehouse_grant_webhook_deliveries_total", result="delivered") == delivered + 1


async def test_a_webhook_that_never_answers_gives_up_after_its_attempts() -> None:
    failed = _count("gatehouse_grant_webhook_deliveries_total", result="failed")
    async with webhook_receiver() as receiver:
        receiver.statuses = [500] * 10
        sender = await _sender(receiver.url, first_backoff=0.01, attempts=3)
        try:
            sender.notify("deny", pending(), BOB, "no")
            async with asyncio.timeout(10):
                while _count("gatehouse_grant_webhook_deliveries_total", result="failed") == failed:
                    await asyncio.sleep(0.01)
        finally:
            await sender.close()
    assert len(receiver.deliveries) == 3


async def test_notify_returns_at_once_while_the_webhook_hangs() -> None:
    async with webhook_receiver() as receiver:
        receiver.hang = 5.0
        sender = await _sender(receiver.url, timeout=0.2, first_backoff=0.01, attempts=1)
        try:
            started = time.perf_counter()
            for _ in range(50):
                sender.notify("request", pending(), ALICE)
            assert time.perf_counter() - started < 0.5
        finally:
            await sender.close(grace=0.5)


def test_peoples_text_cannot_mention_a_channel_or_pose_as_a_link() -> None:
    grant = machine.request(
        ALICE,
        route="prod-api",
        rule="prod-writers",
        duration=60,
        justification="<!channel> see <https://evil.example|the ticket>",
        now=1e9,
        decide_within=60,
    )
    text = message("request", grant, ALICE, "", "https://gh/.gatehouse/access/")
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt;" in text
