"""Owns the API shapes of executions, steps and the automation switches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from controlplane.incidents.schemas import AuditEventOut
from controlplane.text import Text


class StepOut(BaseModel):
    phase: str
    index: int
    step_id: str | None
    action: str
    status: str
    inputs: dict[str, Any]
    output: dict[str, Any]
    error: str | None
    attempts: int
    idempotency_key: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None


class ExecutionOut(BaseModel):
    id: int
    rule_name: str
    playbook_name: str
    status: str
    reason: str
    dry_run: bool
    incident_id: int | None
    alert_id: int | None
    trigger_key: str
    guard_key: str
    current_step: int
    claims: int
    lease_owner: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    wake_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None
    guard: str | None  # the guard that suppressed it
    page_on_failure: bool
    # The ledger (playbooks/ledger.py): resolved, not_resolved, rolled_back, failed, recurred; None until settled.
    outcome: str | None
    outcome_at: datetime | None


class ExecutionDetail(ExecutionOut):
    params: dict[str, Any]
    playbook: dict[str, Any]
    steps: list[StepOut]
    timeline: list[AuditEventOut]


class ExecutionPage(BaseModel):
    items: list[ExecutionOut]
    next_cursor: int | None


class AutomationOut(BaseModel):
    paused: bool
    dry_run: bool
    reason: str
    updated_by: str
    updated_at: datetime | None


class AutomationChange(BaseModel):
    reason: Text = Field(default="", max_length=2000)


class DryRunChange(AutomationChange):
    enabled: bool


class Decision(BaseModel):
    reason: Text = Field(default="", max_length=2000)
