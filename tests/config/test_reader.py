"""The reader's accessors for shapes the section parsers share."""

from __future__ import annotations

from pathlib import Path

import yaml

from proxy.config.reader import Mapping, format_duration, parse_duration
from tests.support.config import parse_yaml, problems_of


def test_a_number_takes_integers_and_decimals_and_reports_a_bound_at_its_line(
    tmp_path: Path,
) -> None:
    def read(root: Mapping) -> tuple[float, ...]:
        return (
            root.number("ratio", 0.5, minimum=0, maximum=1),
            root.number("whole", 0.5, minimum=0, maximum=1),
            root.number("absent", 0.5, minimum=0, maximum=1),
        )

    assert parse_yaml(tmp_path, "ratio: 0.25\nwhole: 1\n", read) == (0.25, 1.0, 0.5)
    assert problems_of(
        tmp_path,
        "ratio: 2\nwhole: yes\nabsent: -1\nlow: -0.5\nhigh: 7\n",
        lambda root: (
            read(root),
            root.number("low", 0.0, minimum=0),
            root.number("high", 0.0, maximum=5),
        ),
    ) == [
        f"{tmp_path}/gatehouse.yaml:1: config.ratio: must be between 0 and 1",
        f"{tmp_path}/gatehouse.yaml:2: config.whole: expected a number, got a boolean",
        f"{tmp_path}/gatehouse.yaml:3: config.absent: must be between 0 and 1",
        f"{tmp_path}/gatehouse.yaml:4: config.low: must be at least 0",
        f"{tmp_path}/gatehouse.yaml:5: config.high: must be at most 5",
    ]


def test_take_hands_over_the_value_node_and_counts_the_key_as_known(tmp_path: Path) -> None:
    def read(root: Mapping) -> tuple[yaml.Node | None, ...]:
        return root.take("one"), root.take("empty"), root.take("absent")

    one, empty, absent = parse_yaml(tmp_path, "one: [a, b]\nempty:\n", read)
    assert isinstance(one, yaml.SequenceNode)
    assert [item.value for item in one.value] == ["a", "b"]
    assert (empty, absent) == (None, None)
    assert problems_of(tmp_path, "other: 1\n", lambda root: root.take("one", required=True)) == [
        f"{tmp_path}/gatehouse.yaml:1: config: missing required key 'one'",
        f"{tmp_path}/gatehouse.yaml:1: config: unknown key 'other' (known keys: one)",
    ]


def test_a_duration_is_written_in_its_two_largest_units_and_one_unit_reads_back() -> None:
    assert format_duration(8 * 3600) == "8h"
    assert format_duration(5400) == "1h30m"
    assert format_duration(86400 + 3600 + 60 + 1) == "1d1h"  # the rest is cut
    assert format_duration(44.6) == "45s"
    assert format_duration(0) == format_duration(-3) == "0s"
    for seconds in (45, 120, 8 * 3600, 2 * 86400):
        assert parse_duration(format_duration(seconds)) == seconds
