"""Owns where an on-call notification goes by severity (seed 002: critical PagerDuty, warning Slack, else log)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Route = Literal["pagerduty", "slack", "log"]
_ROUTES: frozenset[str] = frozenset({"pagerduty", "slack", "log"})


def route(severity: str, routes: Mapping[str, str]) -> Route:
    """The channel for `severity`: its own entry, else the `*` entry, else the log.

    Severity labels are free text written by whoever wrote the alerting rule, so they are
    compared without case and surrounding blanks (`Critical`, `critical ` page alike).
    """
    key = severity.strip().lower()
    by_severity = {name.strip().lower(): target for name, target in routes.items()}
    target = by_severity.get(key, by_severity.get("*", "log"))
    # Settings validate the targets; this guards a mapping built elsewhere (tests, a future API).
    return target if target in _ROUTES else "log"  # type: ignore[return-value]
