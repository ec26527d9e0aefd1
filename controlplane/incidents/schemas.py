"""Owns the API shapes of incidents, alerts and audit events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from controlplane.incidents.automation import AutomationState

IncidentStatus = Literal["open", "acknowledged", "resolved"]


class AlertOut(BaseModel):
    id: int
    fingerprint: str
    alertname: str
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    receiver: str
    first_received_at: datetime
    last_received_at: datetime
    receive_count: int


class AuditEventOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    incident_id: int | None
    detail: dict[str, Any]


class IncidentOut(BaseModel):
    id: int
    key: str
    status: IncidentStatus
    severity: str
    title: str
    group_labels: dict[str, str]
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    alerts_firing: int
    alerts_total: int
    # What the automation did for it (incidents/automation.py): no_rule_matched, running, failed, ...
    automation: AutomationState


class IncidentDetail(IncidentOut):
    """The first page of the incident's alerts and of its timeline, oldest first; a cursor is
    None when the page holds everything, else the `after` of GET .../alerts or .../timeline."""

    alerts: list[AlertOut]
    alerts_next_cursor: int | None
    timeline: list[AuditEventOut]
    timeline_next_cursor: int | None


class IncidentPage(BaseModel):
    items: list[IncidentOut]
    next_cursor: int | None  # pass as `before` to get the next (older) page


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: int | None


class TimelinePage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: int | None  # pass as `after` to get the next (newer) page
