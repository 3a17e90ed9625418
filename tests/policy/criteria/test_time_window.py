"""`time`: weekdays and hours in a named time zone."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.policy.criteria.support import compiled, holds, refused


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2026-11-23T09:00:00+01:00", True),  # Monday 09:00 Berlin
        ("2026-11-23T08:59:00+01:00", False),
        ("2026-11-23T17:00:00+01:00", False),  # end is exclusive
        ("2026-11-23T08:30:00+00:00", True),  # 09:30 in Berlin
        ("2026-11-21T10:00:00+01:00", False),  # Saturday
        ("2026-07-20T16:30:00+02:00", True),  # summer time
    ],
)
def test_time_window_in_a_named_zone(tmp_path: Path, instant: str, expected: bool) -> None:
    rule = "time: {weekdays: [mon-fri], hours: '09:00-17:00', tz: Europe/Berlin}"
    assert holds(tmp_path, rule, now=at(instant)) is expected


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2026-11-27T23:00:00", True),  # Friday night
        ("2026-11-28T05:59:00", True),  # early Saturday belongs to Friday's shift
        ("2026-11-28T23:00:00", False),  # Saturday night
        ("2026-11-23T05:00:00", False),  # early Monday belongs to Sunday
        ("2026-11-24T12:00:00", False),
    ],
)
def test_time_window_wrapping_past_midnight(tmp_path: Path, instant: str, expected: bool) -> None:
    rule = "time: {weekdays: [mon-fri], hours: '22:00-06:00', tz: UTC}"
    now = datetime.fromisoformat(instant).replace(tzinfo=ZoneInfo("UTC")).timestamp()
    assert holds(tmp_path, rule, now=now) is expected


def test_weekday_ranges_wrap_around_the_week(tmp_path: Path) -> None:
    rule = "time: {weekdays: [fri-mon]}"
    assert holds(tmp_path, rule, now=at("2026-11-22T12:00:00+00:00"))  # Sunday
    assert not holds(tmp_path, rule, now=at("2026-11-25T12:00:00+00:00"))  # Wednesday


def test_the_window_describes_itself_as_written(tmp_path: Path) -> None:
    rule = "time: {weekdays: [mon-fri], hours: '09:00-17:00', tz: Europe/Berlin}"
    assert compiled(tmp_path, rule).describe() == "time mon-fri 09:00-17:00 Europe/Berlin"
    assert compiled(tmp_path, "time: {hours: '08:00-09:00'}").describe() == (
        "time any day 08:00-09:00 UTC"
    )


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("{hours: '18:00-18:00'}", "not a valid time range: '18:00-18:00'"),
        ("{hours: 'nine to five'}", "expected 'HH:MM-HH:MM'"),
        ("{weekdays: [someday]}", "expected mon..sun or a range like mon-fri"),
        ("{hours: '09:00-17:00', tz: Mars/Olympus}", "unknown time zone 'Mars/Olympus'"),
        ("{tz: UTC}", "give 'weekdays' and/or 'hours'"),
    ],
)
def test_malformed_windows_are_refused(tmp_path: Path, window: str, message: str) -> None:
    assert message in refused(tmp_path, f"time: {window}")
