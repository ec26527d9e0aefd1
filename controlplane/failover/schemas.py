"""Owns the shapes failover answers in: the active endpoint, each group's health, events, switches, checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class ActiveEndpointView(BaseModel):
    """What a service's clients should use now."""

    service: str
    endpoint: str
    url: str
    region: str
    since: datetime | None  # None until the manager first records a choice (no check or switch yet)
    changed_by: str


class EndpointStatus(BaseModel):
    name: str
    url: str
    region: str
    priority: int
    active: bool
    healthy: bool
    consecutive_failures: int
    consecutive_successes: int
    last_checked_at: datetime | None
    last_error: str | None
    breaker: str | None  # circuit breaker state in this process; None before its first check here
    score: float | None = None  # a scored group's current score (scoring.py); None without fresh metrics
    checks: str = "http"  # how its checks pass: http (probe), heartbeat, or both (heartbeats.py)


class GroupStatus(BaseModel):
    service: str
    active: str
    health_path: str
    interval_seconds: float
    timeout_seconds: float
    failure_threshold: int
    recovery_threshold: int
    auto_failback: bool
    endpoints: list[EndpointStatus]


class FailoverEventView(BaseModel):
    id: int
    at: datetime
    service: str
    event: str
    endpoint: str | None
    from_endpoint: str | None
    to_endpoint: str | None
    from_region: str | None
    to_region: str | None
    detail: dict[str, Any]


class SwitchResult(BaseModel):
    service: str
    from_endpoint: str
    to_endpoint: str
    from_region: str | None
    to_region: str | None
    changed: bool  # False when the target was already active, or this idempotency key already switched
    at: datetime


@dataclass(frozen=True)
class CheckOutcome:
    """One recorded health check and the events it caused, in order."""

    service: str
    endpoint: str
    ok: bool
    error: str | None
    healthy: bool
    events: list[str] = field(default_factory=list)
