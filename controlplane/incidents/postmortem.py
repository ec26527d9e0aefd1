"""Owns the postmortem document of one incident: what happened, in order, from the record the control plane keeps.

Built from the same bounded reads as the console's incident page (incidents/service.py's detail and
alert pages, the playbooks' executions, steps and approvals, the incident's silences), oldest first:
a storm's incident gives counts and the first ALERTS_LISTED alerts, never 50,000 lines.
`PostmortemOut` is the JSON shape (its schema: docs/postmortem.schema.json); incidents/postmortem_md.py
writes it as Markdown. No HTTP here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection, func, select

from controlplane.actions.base import ActionRegistry
from controlplane.db.tables import executions_t
from controlplane.incidents import service as incidents
from controlplane.incidents.schemas import AuditEventOut, IncidentOut
from controlplane.playbooks import service as executions
from controlplane.playbooks.schemas import ExecutionOut, StepOut
from controlplane.playbooks.summary import described, summarize
from controlplane.silences import service as silence_service
from controlplane.silences.schemas import SilenceOut

SCHEMA_VERSION = 1
ALERTS_LISTED = 100  # the first alerts, oldest first; the counts say how many there are
EVENTS_LISTED = 500  # the incident's first audit events
EXECUTIONS_LISTED = 100  # its first rule runs (suppressed ones included)
PROMETHEUS_PREFIX = "prometheus."
# Written again at every poll of a wait while nothing changes: one timeline line per run of them (as the console).
REPEATING = frozenset({"execution.waiting"})
_UNTIL = re.compile(r" until .*$")
_EXECUTION_COLUMNS = [executions_t.c[name] for name in ExecutionOut.model_fields]


class PostmortemAlert(BaseModel):
    id: int
    alertname: str
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    first_seen: datetime = Field(description="When the alert started firing (Alertmanager's startsAt)")
    resolved: datetime | None = Field(description="When it resolved; null while it fires")
    receive_count: int


class AlertSummary(BaseModel):
    total: int = Field(description="Alerts in the incident")
    firing: int
    resolved: int
    listed: int = Field(description="How many of them `alerts` lists (the first, oldest first)")
    truncated: bool = Field(description="True when `alerts` leaves some out")


class Impact(BaseModel):
    opened_at: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    duration_seconds: float | None = Field(description="opened -> resolved; null while the incident is unresolved")


class PostmortemStep(BaseModel):
    phase: str
    index: int
    step_id: str | None
    action: str
    status: str
    inputs: dict[str, Any]
    output: dict[str, Any]
    plan: dict[str, Any] | None = Field(description="The plan the step recorded (what it would change), if any")
    error: str | None
    effect: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None


class PostmortemExecution(BaseModel):
    id: int
    rule: str
    playbook: str
    status: str
    decision: Literal["ran", "suppressed", "dry_run"] = Field(description="Whether the rule's playbook acted")
    reason: str
    guard: str | None = Field(description="The guard that suppressed it")
    dry_run: bool
    created_at: datetime
    finished_at: datetime | None
    approvals_required: int
    approved_by: list[str]
    decided_by: str | None
    summary: str
    outcome: str | None = Field(
        description="The effectiveness ledger's outcome (playbooks/ledger.py); null until settled"
    )
    outcome_at: datetime | None
    steps: list[PostmortemStep]


class PromQLSnapshot(BaseModel):
    execution_id: int
    step_index: int
    action: str
    query: str
    at: datetime
    result: dict[str, Any] = Field(description="The step's output: samples or the reduced value")


class TimelineItem(BaseModel):
    at: datetime
    kind: Literal["alert_fired", "alert_resolved", "event", "rule_decision", "execution"]
    actor: str
    action: str
    text: str
    execution_id: int | None = None
    alert_id: int | None = None
    count: int = Field(
        default=1, description="A run of one repeated event (a wait's polls) folded: how many; `at` is the first"
    )


class Outcome(BaseModel):
    counts: dict[str, int] = Field(description="The incident's executions by ledger outcome ('unsettled': none yet)")
    executions_total: int
    executions_listed: int
    suppressed: int


class PostmortemOut(BaseModel):
    """The postmortem of one incident (GET /api/v1/incidents/{id}/postmortem?format=json)."""

    schema_version: int = SCHEMA_VERSION
    generated_at: datetime
    incident: IncidentOut
    impact: Impact
    alert_summary: AlertSummary
    alerts: list[PostmortemAlert]
    timeline: list[TimelineItem] = Field(description="Alerts, rule decisions, executions and events, oldest first")
    events_truncated: bool = Field(description="True when the incident has more audit events than the timeline shows")
    executions: list[PostmortemExecution]
    promql_snapshots: list[PromQLSnapshot]
    silences: list[SilenceOut]
    outcome: Outcome
    root_cause: str = Field(default="", description="Left empty, for the people writing the postmortem")
    follow_ups: list[str] = Field(default_factory=list, description="Left empty, for the people writing it")


def build(
    *, conn: Connection, incident_id: int, now: datetime, registry: ActionRegistry | None = None
) -> PostmortemOut:
    """The incident's postmortem, or NotFound. `registry` describes what the steps did (default: built-in actions)."""
    record = incidents.incident_detail(
        conn=conn, incident_id=incident_id, alerts_limit=ALERTS_LISTED, events_limit=EVENTS_LISTED
    )
    incident = record.incident
    firing, total = incident.alerts_firing, incident.alerts_total  # counted in full by incident_detail
    alerts = [
        PostmortemAlert(
            id=a.id,
            alertname=a.alertname,
            status=a.status,
            labels=a.labels,
            first_seen=a.starts_at,
            resolved=a.ends_at if a.status == "resolved" else None,
            receive_count=a.receive_count,
        )
        for a in record.alerts.items
    ]
    runs, more_runs = _executions(conn, incident_id, registry)
    events = record.timeline.items
    timeline = _timeline(alerts, events, record.execution_of, runs)
    snapshots = [
        PromQLSnapshot(
            execution_id=run.id,
            step_index=step.index,
            action=step.action,
            query=str(step.inputs.get("query") or step.output.get("query") or ""),
            at=step.finished_at or step.started_at,
            result=step.output,
        )
        for run in runs
        for step in run.steps
        if step.action.startswith(PROMETHEUS_PREFIX)
    ]
    silences = silence_service.of_incident(conn=conn, incident_id=incident_id)[::-1]  # oldest first
    outcomes = Counter(run.outcome or "unsettled" for run in runs if run.decision == "ran")
    return PostmortemOut(
        generated_at=now,
        incident=incident,
        impact=_impact(incident),
        alert_summary=AlertSummary(
            total=total,
            firing=firing,
            resolved=total - firing,
            listed=len(alerts),
            truncated=len(alerts) < total,
        ),
        alerts=alerts,
        timeline=timeline,
        events_truncated=record.timeline.next_cursor is not None,
        executions=runs,
        promql_snapshots=snapshots,
        silences=silences,
        outcome=Outcome(
            counts=dict(sorted(outcomes.items())),
            executions_total=len(runs) + (_count_more(conn, incident_id) if more_runs else 0),
            executions_listed=len(runs),
            suppressed=sum(1 for run in runs if run.decision == "suppressed"),
        ),
    )


def _impact(incident: IncidentOut) -> Impact:
    duration: timedelta | None = None
    if incident.resolved_at is not None:
        duration = incident.resolved_at - incident.opened_at
    return Impact(
        opened_at=incident.opened_at,
        acknowledged_at=incident.acknowledged_at,
        resolved_at=incident.resolved_at,
        duration_seconds=duration.total_seconds() if duration is not None else None,
    )


def _executions(
    conn: Connection, incident_id: int, registry: ActionRegistry | None
) -> tuple[list[PostmortemExecution], bool]:
    """The incident's first EXECUTIONS_LISTED runs, oldest first, with their steps and approvers; and whether
    there are more."""
    first = (
        select(*_EXECUTION_COLUMNS)
        .where(executions_t.c.incident_id == incident_id)
        .order_by(executions_t.c.id)
        .limit(EXECUTIONS_LISTED + 1)
    )
    rows = [ExecutionOut(**r) for r in conn.execute(first).mappings()]
    more = len(rows) > EXECUTIONS_LISTED
    rows = rows[:EXECUTIONS_LISTED]
    ids = [run.id for run in rows]
    steps = executions.steps_of(conn, ids)
    approved = executions.approvers(conn=conn, execution_ids=ids)
    runs = []
    for run in rows:
        own = described(steps[run.id], registry)
        decision: Literal["ran", "suppressed", "dry_run"] = (
            "suppressed" if run.status == "suppressed" else "dry_run" if run.dry_run else "ran"
        )
        runs.append(
            PostmortemExecution(
                id=run.id,
                rule=run.rule_name,
                playbook=run.playbook_name,
                status=run.status,
                decision=decision,
                reason=run.reason,
                guard=run.guard,
                dry_run=run.dry_run,
                created_at=run.created_at,
                finished_at=run.finished_at,
                approvals_required=run.approvals_required,
                approved_by=approved.get(run.id, []),
                decided_by=run.decided_by,
                summary=summarize(run, own, registry, []),
                outcome=run.outcome,
                outcome_at=run.outcome_at,
                steps=[_step(step) for step in own],
            )
        )
    return runs, more


def _count_more(conn: Connection, incident_id: int) -> int:
    """How many runs lie beyond the listed ones (one count, only when there are more)."""
    query = select(func.count()).select_from(executions_t).where(executions_t.c.incident_id == incident_id)
    return int(conn.execute(query).scalar_one()) - EXECUTIONS_LISTED


def _step(step: StepOut) -> PostmortemStep:
    plan = step.output.get("plan")
    return PostmortemStep(
        **step.model_dump(include=set(PostmortemStep.model_fields) - {"plan"}),
        plan=plan if isinstance(plan, dict) else None,
    )


def _timeline(
    alerts: list[PostmortemAlert],
    events: list[AuditEventOut],
    execution_of: dict[int, int],
    runs: list[PostmortemExecution],
) -> list[TimelineItem]:
    """Alerts firing and resolving, the incident's audit events and its rule runs, oldest first."""
    items: list[TimelineItem] = []
    for a in alerts:
        items.append(
            TimelineItem(
                at=a.first_seen, kind="alert_fired", actor="alertmanager", action=a.alertname, text="", alert_id=a.id
            )
        )
        if a.resolved is not None:
            items.append(
                TimelineItem(
                    at=a.resolved,
                    kind="alert_resolved",
                    actor="alertmanager",
                    action=a.alertname,
                    text="",
                    alert_id=a.id,
                )
            )
    last: TimelineItem | None = None
    for event in events:
        item = TimelineItem(
            at=event.at,
            kind="event",
            actor=event.actor,
            action=event.action,
            text=_event_text(event),
            execution_id=execution_of.get(event.id),
        )
        if last is not None and item.action in REPEATING and _same_repeat(last, item):
            last.count += 1
            continue
        items.append(item)
        last = item
    for run in runs:
        if run.decision == "suppressed":
            text = f"rule {run.rule} did not run: suppressed by guard {run.guard or '?'}: {run.reason}"
            kind: Literal["rule_decision", "execution"] = "rule_decision"
        else:
            text = f"rule {run.rule} ran playbook {run.playbook} ({run.status}): {run.summary}"
            kind = "execution"
        items.append(
            TimelineItem(
                at=run.created_at, kind=kind, actor="automation", action=run.status, text=text, execution_id=run.id
            )
        )
    items.sort(key=lambda item: item.at)
    return items


def _same_repeat(a: TimelineItem, b: TimelineItem) -> bool:
    """The same wait polled again: its reason differs only in the time it waits until."""
    return (a.action, a.execution_id, _UNTIL.sub("", a.text)) == (b.action, b.execution_id, _UNTIL.sub("", b.text))


def _event_text(event: AuditEventOut) -> str:
    """The event's detail in a line: a note's text, a reason, which step and its error."""
    detail = event.detail
    if event.action == "incident.note":
        return str(detail.get("text", ""))
    if event.action.startswith("step.") and isinstance(detail.get("index"), int):
        text = f"step {detail['index'] + 1} ({detail.get('action')})"
        return f"{text}: {detail['error']}" if detail.get("error") else text
    return str(detail.get("reason") or "")


def json_schema() -> dict[str, Any]:
    """The JSON format's schema, as docs/postmortem.schema.json holds it."""
    return PostmortemOut.model_json_schema(mode="serialization")


if __name__ == "__main__":  # python -m controlplane.incidents.postmortem > docs/postmortem.schema.json
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
