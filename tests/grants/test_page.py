"""The access page rendered from plain data: what it shows, and that nothing people
typed can become markup (pure)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.grants import machine, page
from proxy.grants.model import Actor
from tests.grants.support import ALICE, BOB, HOUR, T0, pending

VIEWER = page.Viewer(BOB, ("eng", "sre"), "1800000000.token")


def _overview(**changes: object) -> str:
    values: dict[str, object] = {
        "viewer": VIEWER,
        "to_decide": [pending()],
        "overseen": [],
        "mine": [],
        "requestable": [],
        "now": T0 + 60,
    }
    values.update(changes)
    return page.overview(page.Overview(**values))  # type: ignore[arg-type]


def test_a_pending_request_shows_who_what_how_long_and_why_with_a_decision_form() -> None:
    grant = pending()
    html = _overview(to_decide=[grant])
    assert html.startswith("<!doctype html>")
    assert f'<article class="card card-pending" id="{grant.id}">' in html
    assert "alice@example.com" in html and "prod-writers" in html and ">1h<" in html
    assert "backfill of 2026-11-02" in html
    assert f'action="/.gatehouse/access/requests/{grant.id}/approve"' in html
    assert f'formaction="/.gatehouse/access/requests/{grant.id}/deny"' in html


def test_every_form_carries_the_csrf_token_and_there_is_no_script_or_inline_style() -> None:
    active = machine.decide(pending(BOB), "approve", ALICE, T0, "ok")
    html = _overview(mine=[active], overseen=[machine.decide(pending(), "approve", BOB, T0, "ok")])
    forms = re.findall(r"<form\b.*?</form>", html)
    assert len(forms) == 3
    assert all('<input type="hidden" name="csrf" value="1800000000.token">' in f for f in forms)
    assert "<script" not in html and "style=" not in html and " on" not in html.replace(" only", "")


def test_an_active_grant_shows_its_remaining_time() -> None:
    active = machine.decide(pending(BOB), "approve", ALICE, T0, "ok")
    html = _overview(to_decide=[], mine=[active], now=T0 + 15 * 60)
    assert '<strong class="remaining">in 45m</strong>' in html
    assert ">Give back<" in html


def test_flash_messages_come_only_from_the_fixed_vocabulary() -> None:
    assert "Approved: the grant is in force." in _overview(done="approved")
    assert "You cannot decide your own request." in _overview(problem="self_approval")
    odd = _overview(problem="<img src=x>", done="<b>")
    assert "<img" not in odd and "&lt;img" not in odd and "That did not work." in odd


def test_the_detail_page_lists_the_audit_trail() -> None:
    revoked = machine.decide(
        machine.decide(pending(), "approve", BOB, T0, "OPS-1"), "revoke", BOB, T0 + HOUR / 2, "done"
    )
    html = page.detail(revoked, VIEWER, T0 + HOUR, can_decide=False, can_revoke=False)
    rows = re.findall(r"<tr><td>.*?</tr>", html)
    assert [re.findall(r"<td>(.*?)</td>", r)[1] for r in rows] == [
        "requested",
        "approved",
        "started",
        "revoked",
    ]
    assert "<form" not in html


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=80), email=st.text(min_size=1, max_size=40))
def test_nothing_a_requester_types_becomes_markup(text: str, email: str) -> None:
    grant = machine.request(
        Actor("https://idp", "mallory", email),
        route="prod",
        rule="r",
        duration=60,
        justification=text,
        now=T0,
        decide_within=HOUR,
    )
    html = _overview(to_decide=[grant])
    tags = set(re.findall(r"<([a-zA-Z!][a-zA-Z0-9-]*)", html))
    assert tags <= {
        "!doctype", "html", "head", "meta", "title", "link", "body", "header", "h1", "a", "p",
        "strong", "span", "main", "section", "h2", "article", "div", "dl", "dt", "dd", "code",
        "form", "input", "label", "textarea", "button",
    }  # fmt: skip
