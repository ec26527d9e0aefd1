"""Owns choosing a failover group's next endpoint by score (seed 003's dynamic score) instead of priority.

    score = 0.4 (1 - cpu) + 0.3 (1 - memory) + 0.3 / (1 + response time in seconds)

cpu and memory are fractions (0..1) from the group's `score` queries, the response time is the
health check's own; the health checker records them together (`EndpointMetrics`). Metrics older
than the group's `score.max_age` (60 s) are ignored; when no candidate has fresh ones, the
choice falls back to priority. Only healthy endpoints are candidates: the caller filters them,
and no score makes a failed endpoint eligible.

Pure: the time is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controlplane.rules.schema import Endpoint, FailoverGroup

CPU_WEIGHT = 0.4
MEMORY_WEIGHT = 0.3
RESPONSE_WEIGHT = 0.3


@dataclass(frozen=True)
class EndpointMetrics:
    """One endpoint's load as last measured: cpu and memory in use (0..1), the health check's response time."""

    cpu: float
    memory: float
    response_seconds: float
    at: datetime


def score(metrics: EndpointMetrics) -> float:
    """Seed 003's score: higher is better (at most 1.0, for an idle endpoint answering at once)."""
    return (
        CPU_WEIGHT * (1 - metrics.cpu)
        + MEMORY_WEIGHT * (1 - metrics.memory)
        + RESPONSE_WEIGHT / (1 + metrics.response_seconds)
    )


def fresh(metrics: EndpointMetrics | None, group: FailoverGroup, now: datetime | None) -> bool:
    if metrics is None or now is None or group.score is None:
        return False
    return now - metrics.at <= group.score.max_age


def scored_choice(
    group: FailoverGroup,
    candidates: Sequence[Endpoint],
    metrics: Mapping[str, EndpointMetrics | None],
    now: datetime | None,
) -> tuple[Endpoint | None, dict[str, Any]]:
    """The best-scoring candidate with fresh metrics (ties: priority, then name), and what decided it.

    (None, detail) when the group does not choose by score or no candidate has fresh metrics:
    the caller then chooses by priority. The detail (for the failover events, audit and log)
    says `chosen_by` and each candidate's score (None: no fresh metrics).
    """
    if group.score is None:
        return None, {}
    scores: dict[str, float | None] = {}
    for endpoint in candidates:
        measured = metrics.get(endpoint.name)
        scores[endpoint.name] = round(score(measured), 4) if measured and fresh(measured, group, now) else None
    scored = [e for e in candidates if scores[e.name] is not None]
    if not scored:
        return None, {"chosen_by": "priority", "scores": scores, "why": "no fresh metrics"}
    best = min(scored, key=lambda e: (-(scores[e.name] or 0.0), e.priority, e.name))
    return best, {"chosen_by": "score", "scores": scores}
