"""The access page: server-rendered HTML, no script, every value escaped (pure).

Rendered from plain data by :mod:`proxy.grants.html`; the endpoint serves it
with a strict Content-Security-Policy (no script at all, styles only from
``style.css`` beside it, forms only to this site, never framed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config.reader import format_duration
from proxy.grants import csrf
from proxy.grants.catalogue import Requestable
from proxy.grants.html import Html, fragment, h
from proxy.grants.model import Actor, Grant, GrantEvent
from proxy.grants.permissions import MAX_JUSTIFICATION, MAX_REASON

PREFIX = "/.gatehouse/access"
STYLE = f"{PREFIX}/style.css"

# Messages after a form post, by the fixed codes the endpoint redirects with.
DONE = {
    "requested": "Your request is waiting for an approver.",
    "approved": "Approved: the grant is in force.",
    "denied": "Denied.",
    "revoked": "Revoked: the access has ended.",
}
PROBLEMS = {
    "self_approval": "You cannot decide your own request.",
    "not_an_approver": "You are not an approver for that rule.",
    "reason_required": "Give a reason for the decision.",
    "justification_required": "This rule needs a justification.",
    "duration_too_long": "That is longer than the rule allows.",
    "invalid_duration": "Give a duration like 30m, 2h or 1d.",
    "request_pending": "You already have a request waiting for that rule.",
    "too_many_grant_requests": "Too many requests are waiting; wait for a decision first.",
    "no_such_grant_rule": "That route has no such grant rule.",
    "grant_not_found": "No such request.",
    "grant_busy": "Someone else changed it meanwhile; look again.",
    "csrf_failed": "The form expired; it has been reloaded, please send it again.",
}
_STATE_LABEL = {
    "pending": "pending",
    "approved": "approved (starts later)",
    "active": "active",
    "denied": "denied",
    "expired": "expired",
    "revoked": "revoked",
}
_EVENT_LABEL = {
    "request": "requested",
    "approve": "approved",
    "deny": "denied",
    "revoke": "revoked",
    "lapse": "lapsed (no decision)",
    "start": "started",
    "end": "expired",
}


@dataclass(frozen=True, slots=True)
class Viewer:
    actor: Actor
    groups: tuple[str, ...]
    csrf_token: str


@dataclass(frozen=True, slots=True)
class Overview:
    viewer: Viewer
    to_decide: Sequence[Grant]
    overseen: Sequence[Grant]
    mine: Sequence[Grant]
    requestable: Sequence[Requestable]
    now: float
    done: str | None = None
    problem: str | None = None


# -- formatting ---------------------------------------------------------------------
def when(at: float | None) -> str:
    if at is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def relative(at: float, now: float) -> str:
    delta = at - now
    text = format_duration(abs(delta)) if abs(delta) >= 1 else "now"
    if text == "now":
        return text
    return f"in {text}" if delta > 0 else f"{text} ago"


def grant_url(grant_id: str, action: str | None = None) -> str:
    return f"{PREFIX}/requests/{grant_id}" + (f"/{action}" if action else "")


# -- pieces ---------------------------------------------------------------------------
def _layout(title: str, viewer: Viewer, *body: object) -> Html:
    groups = ", ".join(viewer.groups) or "none"
    return Html(
        "<!doctype html>"
        + h(
            "html",
            {"lang": "en"},
            h(
                "head",
                None,
                h("meta", {"charset": "utf-8"}),
                h("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}),
                h("meta", {"name": "referrer", "content": "same-origin"}),
                h("title", None, f"{title} · Gatehouse"),
                h("link", {"rel": "stylesheet", "href": STYLE}),
            ),
            h(
                "body",
                None,
                h(
                    "header",
                    {"class": "top"},
                    h("h1", None, h("a", {"href": PREFIX + "/"}, "Gatehouse access")),
                    h(
                        "p",
                        {"class": "who"},
                        "Signed in as ",
                        h("strong", None, viewer.actor.label()),
                        h("span", {"class": "groups"}, f" · groups: {groups}"),
                    ),
                ),
                h("main", None, *body),
            ),
        )
    )


def _state(grant: Grant) -> Html:
    return h("span", {"class": f"state state-{grant.state}"}, _STATE_LABEL[grant.state])


def _facts(grant: Grant, now: float) -> Html:
    rows: list[tuple[str, object]] = [
        ("Requester", grant.requester.label()),
        ("Route", fragment(h("code", None, grant.route), " · rule ", h("code", None, grant.rule))),
        ("Duration", format_duration(grant.duration)),
        ("Requested", f"{when(grant.requested_at)} ({relative(grant.requested_at, now)})"),
    ]
    if grant.state == "pending":
        rows.append(("Lapses", f"{when(grant.decide_by)} ({relative(grant.decide_by, now)})"))
        if grant.start_at is not None:
            rows.append(("Asked to start", when(grant.start_at)))
    if grant.starts_at is not None and grant.ends_at is not None:
        rows.append(("Window", f"{when(grant.starts_at)} – {when(grant.ends_at)}"))
    if grant.state == "active" and grant.ends_at is not None:
        rows.append(
            ("Remaining", h("strong", {"class": "remaining"}, relative(grant.ends_at, now)))
        )
    if grant.state == "approved" and grant.starts_at is not None:
        rows.append(("Starts", relative(grant.starts_at, now)))
    if grant.decided_by is not None:
        rows.append(("Decided by", grant.decided_by.label()))
    rows.append(("Justification", grant.justification or "—"))
    return h(
        "dl",
        {"class": "facts"},
        [h("div", None, h("dt", None, name), h("dd", None, value)) for name, value in rows],
    )


def _card_head(grant: Grant) -> Html:
    return h(
        "div",
        {"class": "card-head"},
        _state(grant),
        h("a", {"class": "grant-id", "href": grant_url(grant.id)}, grant.id),
    )


def _csrf(viewer: Viewer) -> Html:
    return h("input", {"type": "hidden", "name": csrf.FIELD, "value": viewer.csrf_token})


def _reason_field(grant: Grant, label: str) -> Html:
    field_id = f"reason-{grant.id}"
    return h(
        "div",
        {"class": "field"},
        h("label", {"for": field_id}, label),
        h(
            "textarea",
            {
                "id": field_id,
                "name": "reason",
                "rows": "2",
                "maxlength": str(MAX_REASON),
                "required": True,
                "placeholder": "ticket, incident or why",
            },
        ),
    )


def decide_form(grant: Grant, viewer: Viewer) -> Html:
    return h(
        "form",
        {"method": "post", "action": grant_url(grant.id, "approve"), "class": "decide"},
        _csrf(viewer),
        _reason_field(grant, "Reason"),
        h(
            "div",
            {"class": "actions"},
            h("button", {"type": "submit", "class": "approve"}, "Approve"),
            h(
                "button",
                {"type": "submit", "class": "deny", "formaction": grant_url(grant.id, "deny")},
                "Deny",
            ),
        ),
    )


def revoke_form(grant: Grant, viewer: Viewer, label: str) -> Html:
    return h(
        "form",
        {"method": "post", "action": grant_url(grant.id, "revoke"), "class": "revoke"},
        _csrf(viewer),
        _reason_field(grant, "Reason"),
        h("div", {"class": "actions"}, h("button", {"type": "submit", "class": "deny"}, label)),
    )


def _card(grant: Grant, now: float, *extra: object) -> Html:
    return h(
        "article",
        {"class": f"card card-{grant.state}", "id": grant.id},
        _card_head(grant),
        _facts(grant, now),
        *extra,
    )


def _section(section_id: str, title: str, items: Sequence[Html], empty: str) -> Html:
    count = h("span", {"class": "count"}, str(len(items))) if items else None
    return h(
        "section",
        {"aria-labelledby": section_id},
        h("h2", {"id": section_id}, title, " ", count),
        list(items) if items else h("p", {"class": "empty"}, empty),
    )


def _request_form(data: Overview) -> Html:
    if not data.requestable:
        return h(
            "section",
            {"aria-labelledby": "ask"},
            h("h2", {"id": "ask"}, "Request access"),
            h("p", {"class": "empty"}, "No route in the policy can be requested."),
        )
    options = [
        h(
            "option",
            {"value": f"{item.route.name} {item.spec.rule}"},
            f"{item.route.name} · {item.spec.rule} (max {format_duration(item.spec.max_duration)})",
        )
        for item in data.requestable
    ]
    return h(
        "section",
        {"aria-labelledby": "ask"},
        h("h2", {"id": "ask"}, "Request access"),
        h(
            "form",
            {"method": "post", "action": f"{PREFIX}/requests", "class": "ask card"},
            _csrf(data.viewer),
            h(
                "div",
                {"class": "field"},
                h("label", {"for": "target"}, "Route and rule"),
                h("select", {"id": "target", "name": "target", "required": True}, options),
            ),
            h(
                "div",
                {"class": "field"},
                h("label", {"for": "duration"}, "For how long"),
                h(
                    "input",
                    {
                        "id": "duration",
                        "name": "duration",
                        "placeholder": "e.g. 2h (empty: the rule's maximum)",
                        "pattern": r"\s*\d+(\.\d+)?\s*(s|m|h|d)?\s*",
                        "inputmode": "text",
                    },
                ),
            ),
            h(
                "div",
                {"class": "field"},
                h("label", {"for": "justification"}, "Justification"),
                h(
                    "textarea",
                    {
                        "id": "justification",
                        "name": "justification",
                        "rows": "3",
                        "maxlength": str(MAX_JUSTIFICATION),
                        "placeholder": "what you will do, and the ticket",
                    },
                ),
            ),
            h("div", {"class": "actions"}, h("button", {"type": "submit"}, "Request")),
        ),
    )


def _flash(data: Overview) -> Html | None:
    if data.done in DONE:
        return h("p", {"class": "flash ok", "role": "status"}, DONE[data.done])
    if data.problem is not None:
        text = PROBLEMS.get(data.problem, "That did not work.")
        return h("p", {"class": "flash problem", "role": "alert"}, text)
    return None


# -- pages ------------------------------------------------------------------------------
def overview(data: Overview) -> Html:
    now, viewer = data.now, data.viewer
    me = viewer.actor
    decide = [_card(g, now, decide_form(g, viewer)) for g in data.to_decide]
    overseen = [_card(g, now, revoke_form(g, viewer, "Revoke")) for g in data.overseen]
    mine = [
        _card(
            g,
            now,
            revoke_form(g, viewer, "Withdraw" if g.state == "pending" else "Give back")
            if g.state in ("pending", "approved", "active") and g.requester.same_identity(me)
            else None,
        )
        for g in data.mine
    ]
    return _layout(
        "Access",
        viewer,
        _flash(data),
        _section("decide", "Waiting for your decision", decide, "Nothing waits for you."),
        _section("overseen", "Grants you approve for", overseen, "No grant is in force."),
        _section("mine", "Your requests", mine, "You have not asked for access."),
        _request_form(data),
    )


def _history_row(event: GrantEvent) -> Html:
    return h(
        "tr",
        None,
        h("td", None, when(event.at)),
        h("td", None, _EVENT_LABEL.get(event.action, event.action)),
        h("td", None, event.actor.label() if event.actor is not None else "the clock"),
        h("td", None, event.reason or "—"),
    )


def detail(grant: Grant, viewer: Viewer, now: float, *, can_decide: bool, can_revoke: bool) -> Html:
    actions: list[Html] = []
    if can_decide:
        actions.append(decide_form(grant, viewer))
    elif can_revoke:
        actions.append(revoke_form(grant, viewer, "Revoke"))
    trail = h(
        "section",
        {"aria-labelledby": "trail"},
        h("h2", {"id": "trail"}, "Audit trail"),
        h(
            "div",
            {"class": "scroll"},
            h(
                "table",
                {"class": "trail"},
                h(
                    "thead",
                    None,
                    h(
                        "tr",
                        None,
                        h("th", {"scope": "col"}, "When"),
                        h("th", {"scope": "col"}, "What"),
                        h("th", {"scope": "col"}, "Who"),
                        h("th", {"scope": "col"}, "Reason"),
                    ),
                ),
                h("tbody", None, [_history_row(e) for e in grant.history]),
            ),
        ),
    )
    return _layout(grant.id, viewer, _card(grant, now, *actions), trail)
