"""Durations as rule files write them; format and parse are exact inverses."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("200ms", 0.2), ("0", 0), (90, 90), (0.5, 0.5)],
)
def test_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "5", "-5m", "5 m", "1y", "m5", True, -1, None, [1]])
def test_bad_durations_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 30s, 5m"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**10))
def test_format_round_trips_to_the_millisecond(millis: int) -> None:
    value = timedelta(milliseconds=millis)
    assert parse_duration(format_duration(value)) == value
