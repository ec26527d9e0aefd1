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
    # Not stored: what a succeeded step did, in the operator's words (playbooks/summary.py).
    effect: str | None = Field(default=None, description="What the step did, for a step that succeeded")


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
    approvals_required: int = 1  # distinct people who must approve before it runs (the rule's `approvals`)


class ExecutionDetail(ExecutionOut):
    summary: str = Field(
        default="",
        description="One line: what the steps did and how the execution ended, e.g. "
        "'Disabled graph chat on langgraph; paged on-call via PagerDuty (critical); resolved 3 min later'",
    )
    params: dict[str, Any]
    playbook: dict[str, Any]
    steps: list[StepOut]
    timeline: list[AuditEventOut]
    approved_by: list[str] = Field(
        default_factory=list,
        description="Who approved so far, in order (from the audit trail); it runs once approvals_required people have",
    )
    approval_progress: str = Field(default="", description="While awaiting approval: '1 of 2 approvals (alice)'")


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
    # Approve only this change: the digest of the plan the approver saw (GET .../plan); refused (409) if it moved.
    plan_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
