"""``time``: the request arrives on listed weekdays within an hour range, in a named zone.

``hours: "22:00-06:00"`` wraps past midnight; the early hours then belong to
the day the window started on. The end is exclusive.
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Leaf, Outcome, Rules, register
from proxy.policy.criteria.operand import Operand

_HOURS = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeWindow(Leaf):
    __slots__ = ("end", "start", "text", "weekdays", "zone")

    def __init__(
        self, weekdays: frozenset[int], start: int, end: int, zone: ZoneInfo, text: str
    ) -> None:
        self.weekdays = weekdays  # 0 = Monday
        self.start = start  # minutes after local midnight, inclusive
        self.end = end  # exclusive
        self.zone = zone
        self.text = text

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        local = datetime.fromtimestamp(now, self.zone)
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        if self.start <= self.end:
            return weekday in self.weekdays and self.start <= minute < self.end
        # Past midnight the window still belongs to the day it started on.
        if minute >= self.start:
            return weekday in self.weekdays
        return minute < self.end and (weekday - 1) % 7 in self.weekdays

    def describe(self) -> str:
        return f"time {self.text}"


def _weekdays(operand: Operand) -> frozenset[int] | None:
    texts = operand.strings()
    if texts is None:
        return None
    days: set[int] = set()
    for text in texts:
        first, _, last = text.strip().lower().partition("-")
        if first not in _WEEKDAYS or (last and last not in _WEEKDAYS):
            operand.fail("expected mon..sun or a range like mon-fri")
            return None
        a = _WEEKDAYS.index(first)
        b = _WEEKDAYS.index(last) if last else a
        days.update(d % 7 for d in range(a, b + 1 if b >= a else b + 8))
    return frozenset(days)


def _hours(operand: Operand) -> tuple[int, int] | None:
    text = operand.text()
    if text is None:
        return None
    match = _HOURS.fullmatch(text)
    if match is None:
        operand.fail(f"expected 'HH:MM-HH:MM', got {text!r}")
        return None
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or end > 1440 or start == end:
        operand.fail(f"not a valid time range: {text!r}")
        return None
    return start, end


def _zone(operand: Operand) -> ZoneInfo | None:
    name = operand.text()
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        operand.fail(f"unknown time zone {name!r}")
        return None


def parse(operand: Operand, rules: Rules) -> TimeWindow | None:
    fields = operand.fields(("weekdays", "hours", "tz"))
    if fields is None:
        return None
    if "weekdays" not in fields and "hours" not in fields:
        operand.fail("give 'weekdays' and/or 'hours'")
        return None
    days = _weekdays(fields["weekdays"]) if "weekdays" in fields else frozenset(range(7))
    hours = _hours(fields["hours"]) if "hours" in fields else (0, 1440)
    zone = _zone(fields["tz"]) if "tz" in fields else ZoneInfo("UTC")
    if days is None or hours is None or zone is None:
        return None
    weekday_text = ",".join(fields["weekdays"].strings() or ()) if "weekdays" in fields else ""
    hours_text = str(fields["hours"].value()) if "hours" in fields else "00:00-24:00"
    text = f"{weekday_text or 'any day'} {hours_text} {zone.key}"
    return TimeWindow(days, hours[0], hours[1], zone, text)


register(
    "time",
    parse,
    about="request",
    syntax='time: {weekdays: [mon-fri], hours: "09:00-17:00", tz: Europe/Berlin}',
    holds="the request arrives on a listed weekday within the hours, in the zone "
    "(default UTC; an end before the start wraps past midnight)",
)
