"""Owns duration strings as Prometheus writes them (`30s`, `5m`, `1h30m`, `2d`)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """`1h30m` -> timedelta; numbers are seconds. Raises ValueError with the accepted form."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: durations cannot be negative; use e.g. 30s, 5m, 1h30m")
        try:
            return timedelta(seconds=value)
        except OverflowError:
            raise ValueError(f"duration {value!r} is too large") from None
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return timedelta(0)
        parts = _PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            try:
                return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))
            except OverflowError:
                raise ValueError(f"duration {value!r} is too large") from None
    raise ValueError(f"invalid duration {value!r}: use a number of seconds or e.g. 30s, 5m, 1h30m, 2d")


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, exact to the millisecond (`1h30m`, `200ms`)."""
    millis = round(value.total_seconds() * 1000)
    if millis == 0:
        return "0s"
    out = ""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if millis >= size:
            out += f"{millis // size}{unit}"
            millis %= size
    return out


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]


def spoken(value: timedelta) -> str:
    """A duration as a person reads it, to its two largest units: `40 s`, `3 min`, `1 h 5 min`, `2 d 3 h`."""
    seconds = max(0, round(value.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
        elif parts:
            break  # `1 h 5 min`, never `1 d 0 h 5 min`: the two largest units that follow each other
        if len(parts) == 2:
            break
    return " ".join(parts)
