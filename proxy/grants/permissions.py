"""Who may do what with a grant, and what a valid request looks like (pure).

Whether an actor satisfies a rule's ``approvers`` criteria is decided by the
policy's own criterion evaluation (the caller passes the outcome in); the
rules here only combine it with who the requester is.
"""

from __future__ import annotations

import re
from typing import Literal

from proxy.errors import GrantError, GrantForbidden, Reason
from proxy.grants.model import Action, Actor, Grant
from proxy.policy.criteria.grant import GrantSpec

MAX_JUSTIFICATION = 1000
MAX_REASON = 500
# Below this a grant is over before anyone could use it.
MIN_DURATION = 1.0
# Text people type is kept as typed, minus control characters other than line breaks.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


Text = Literal["justification", "reason"]
# What typed text is refused with: too long, or carrying control characters.
_REFUSED: dict[Text, tuple[Reason, Reason]] = {
    "justification": (Reason.JUSTIFICATION_TOO_LONG, Reason.INVALID_JUSTIFICATION),
    "reason": (Reason.REASON_TOO_LONG, Reason.INVALID_REASON),
}


def clean_text(text: str, limit: int, what: Text) -> str:
    """``text`` stripped; GrantError when it is too long or carries control characters."""
    too_long, invalid = _REFUSED[what]
    text = text.replace("\r\n", "\n").strip()
    if len(text) > limit:
        raise GrantError(too_long, detail=f"{what} longer than {limit} characters")
    if _CONTROL.search(text):
        raise GrantError(invalid, detail=f"{what} contains control characters")
    return text


def request_duration(spec: GrantSpec, asked: float | None) -> float:
    """The duration granted for a request: as asked, or the rule's maximum when not asked."""
    if asked is None:
        return spec.max_duration
    if asked != asked or asked < MIN_DURATION:  # NaN or too short
        raise GrantError(Reason.INVALID_DURATION, detail="duration must be at least 1s")
    if asked > spec.max_duration:
        raise GrantError(
            Reason.DURATION_TOO_LONG, detail="duration exceeds the rule's max_duration"
        )
    return asked


def request_justification(spec: GrantSpec, text: str) -> str:
    cleaned = clean_text(text, MAX_JUSTIFICATION, "justification")
    if spec.justification == "required" and not cleaned:
        raise GrantError(Reason.JUSTIFICATION_REQUIRED, detail="the rule requires a justification")
    return cleaned


def request_start(start_at: float | None, now: float, max_start_delay: float) -> float | None:
    """A requested start: None (on approval), or a time no further ahead than allowed."""
    if start_at is None or start_at <= now:
        return None
    if start_at - now > max_start_delay:
        raise GrantError(
            Reason.START_TOO_LATE, detail="start is further ahead than max_start_delay"
        )
    return start_at


def decision_reason(text: str) -> str:
    """Every decision carries a reason: it is the audit trail's answer to "why"."""
    cleaned = clean_text(text, MAX_REASON, "reason")
    if not cleaned:
        raise GrantError(Reason.REASON_REQUIRED, detail="a decision needs a reason")
    return cleaned


def check_decision(grant: Grant, action: Action, actor: Actor, is_approver: bool) -> None:
    """GrantForbidden unless ``actor`` may take ``action`` on ``grant``.

    Approve and deny: never the requester (nobody approves their own
    request, not even under another identity with the same email), and only
    someone who satisfies the rule's ``approvers``.
    Revoke: the requester (giving access back or withdrawing a request) or
    an approver.
    """
    if action in ("approve", "deny"):
        if actor.same_person(grant.requester):
            raise GrantForbidden(
                Reason.SELF_APPROVAL, detail="requesters cannot decide their own request"
            )
        if not is_approver:
            raise GrantForbidden(Reason.NOT_AN_APPROVER, detail="caller does not satisfy approvers")
        return
    if action == "revoke":
        if actor.same_identity(grant.requester) or is_approver:
            return
        raise GrantForbidden(
            Reason.NOT_AN_APPROVER, detail="only the requester or an approver revokes"
        )
    raise ValueError(f"{action} is not a decision")


def may_view(grant: Grant, actor: Actor, is_approver: bool) -> bool:
    """The requester and the rule's approvers see a grant; nobody else learns it exists."""
    return actor.same_identity(grant.requester) or is_approver
