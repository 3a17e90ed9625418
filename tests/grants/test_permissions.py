"""Who may decide, see and revoke a grant; what a valid request is (pure)."""

from __future__ import annotations

import pytest

from proxy.errors import GrantError, GrantForbidden
from proxy.grants import permissions as p
from proxy.grants.model import Actor
from tests.grants.support import ALICE, BOB, CAROL, HOUR, ISSUER, T0, pending, sre_spec


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_nobody_decides_their_own_request_even_as_an_approver(action: str) -> None:
    with pytest.raises(GrantForbidden) as info:
        p.check_decision(pending(ALICE), action, ALICE, is_approver=True)  # type: ignore[arg-type]
    assert info.value.reason == "self_approval"


def test_the_same_mailbox_under_another_identity_is_still_the_requester() -> None:
    other_login = Actor("https://other-idp.example.com", "a.smith", "ALICE@example.com")
    with pytest.raises(GrantForbidden) as info:
        p.check_decision(pending(ALICE), "approve", other_login, is_approver=True)
    assert info.value.reason == "self_approval"


def test_only_approvers_decide() -> None:
    with pytest.raises(GrantForbidden) as info:
        p.check_decision(pending(ALICE), "approve", CAROL, is_approver=False)
    assert info.value.reason == "not_an_approver"
    p.check_decision(pending(ALICE), "approve", BOB, is_approver=True)


def test_the_requester_and_approvers_revoke_nobody_else_does() -> None:
    p.check_decision(pending(ALICE), "revoke", ALICE, is_approver=False)
    p.check_decision(pending(ALICE), "revoke", BOB, is_approver=True)
    with pytest.raises(GrantForbidden):
        p.check_decision(pending(ALICE), "revoke", CAROL, is_approver=False)


def test_an_email_match_alone_neither_shows_nor_revokes_a_grant() -> None:
    lookalike = Actor("https://other-idp.example.com", "mallory", "alice@example.com")
    assert not p.may_view(pending(ALICE), lookalike, is_approver=False)
    with pytest.raises(GrantForbidden):
        p.check_decision(pending(ALICE), "revoke", lookalike, is_approver=False)
    assert p.may_view(pending(ALICE), Actor(ISSUER, "alice"), is_approver=False)


def test_duration_defaults_to_the_maximum_and_never_exceeds_it() -> None:
    spec = sre_spec()
    assert p.request_duration(spec, None) == 8 * HOUR
    assert p.request_duration(spec, HOUR) == HOUR
    for bad, reason in (
        (9 * HOUR, "duration_too_long"),
        (0.5, "invalid_duration"),
        (float("nan"), "invalid_duration"),
    ):
        with pytest.raises(GrantError) as info:
            p.request_duration(spec, bad)
        assert info.value.reason == reason


def test_a_required_justification_must_be_given() -> None:
    with pytest.raises(GrantError) as info:
        p.request_justification(sre_spec(), "   ")
    assert info.value.reason == "justification_required"
    assert p.request_justification(sre_spec(justification="optional"), "") == ""


def test_text_with_control_characters_or_too_long_is_refused() -> None:
    for text, reason in (
        ("ok\x1b[31m", "invalid_justification"),
        ("rtl \u202e trick", "invalid_justification"),
        ("x" * 1001, "justification_too_long"),
    ):
        with pytest.raises(GrantError) as info:
            p.request_justification(sre_spec(), text)
        assert info.value.reason == reason
    assert p.request_justification(sre_spec(), " line one\r\nline two ") == "line one\nline two"


def test_every_decision_needs_a_reason() -> None:
    with pytest.raises(GrantError) as info:
        p.decision_reason("")
    assert info.value.reason == "reason_required"


def test_a_start_in_the_past_means_on_approval_and_one_too_far_ahead_is_refused() -> None:
    assert p.request_start(T0 - 5, T0, 24 * HOUR) is None
    assert p.request_start(T0 + HOUR, T0, 24 * HOUR) == T0 + HOUR
    with pytest.raises(GrantError) as info:
        p.request_start(T0 + 25 * HOUR, T0, 24 * HOUR)
    assert info.value.reason == "start_too_late"
