"""Owns what people do with executions and the automation switches: read, approve, reject, cancel, pause."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import Connection, select, update

from controlplane.actions.base import ActionRegistry
from controlplane.audit import audit
from controlplane.db.tables import audit_t, executions_t, steps_t
from controlplane.errors import Conflict, missing
from controlplane.incidents.schemas import AuditEventOut
from controlplane.playbooks import guards
from controlplane.playbooks.schemas import AutomationOut, ExecutionDetail, ExecutionOut, ExecutionPage, StepOut
from controlplane.playbooks.state import ACTIVE, Status, transition
from controlplane.playbooks.summary import described, summarize

_COLUMNS = [executions_t.c[name] for name in ExecutionOut.model_fields]
STEP_COLUMNS = [steps_t.c[name] for name in StepOut.model_fields if name in steps_t.c]  # `effect` is not stored


def steps_of(conn: Connection, execution_ids: Sequence[int]) -> defaultdict[int, list[StepOut]]:
    """The steps of these executions in one query, by execution (none: an empty list), in recorded order."""
    steps: defaultdict[int, list[StepOut]] = defaultdict(list)
    if execution_ids:
        for r in conn.execute(
            select(steps_t.c.execution_id, *STEP_COLUMNS)
            .where(steps_t.c.execution_id.in_(execution_ids))
            .order_by(steps_t.c.id)
        ).mappings():
            steps[r["execution_id"]].append(StepOut(**{k: v for k, v in r.items() if k != "execution_id"}))
    return steps


def list_executions(
    *,
    conn: Connection,
    statuses: Sequence[str] = (),
    rule: str | None = None,
    incident_id: int | None = None,
    limit: int = 50,
    before: int | None = None,
) -> ExecutionPage:
    query = select(*_COLUMNS).order_by(executions_t.c.id.desc()).limit(limit + 1)
    if statuses:
        query = query.where(executions_t.c.status.in_(statuses))
    if rule:
        query = query.where(executions_t.c.rule_name == rule)
    if incident_id is not None:
        query = query.where(executions_t.c.incident_id == incident_id)
    if before is not None:
        query = query.where(executions_t.c.id < before)
    rows = conn.execute(query).mappings().all()
    items = [ExecutionOut(**r) for r in rows[:limit]]
    return ExecutionPage(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


def get_execution(*, conn: Connection, execution_id: int, registry: ActionRegistry | None = None) -> ExecutionDetail:
    """The execution with its steps (each with its effect), its summary line and its own audit trail.

    `registry`: the service's actions, whose descriptions say what each step did (default: the built-in ones).
    """
    row = (
        conn.execute(
            select(*_COLUMNS, executions_t.c.params, executions_t.c.playbook).where(executions_t.c.id == execution_id)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise missing("execution", execution_id)
    steps = described(
        [
            StepOut(**r)
            for r in conn.execute(
                select(*STEP_COLUMNS).where(steps_t.c.execution_id == execution_id).order_by(steps_t.c.id)
            ).mappings()
        ],
        registry,
    )
    timeline = [
        AuditEventOut(**r)
        for r in conn.execute(
            select(
                audit_t.c.id, audit_t.c.at, audit_t.c.actor, audit_t.c.action, audit_t.c.incident_id, audit_t.c.detail
            )
            .where(audit_t.c.execution_id == execution_id)
            .order_by(audit_t.c.id)
        ).mappings()
    ]
    summary = summarize(ExecutionOut(**{k: row[k] for k in ExecutionOut.model_fields}), steps, registry, timeline)
    approved_by = [event.actor for event in timeline if event.action == APPROVAL_GIVEN]
    progress = approval_progress(row["approvals_required"], approved_by) if row["status"] == "awaiting_approval" else ""
    return ExecutionDetail(
        **row, summary=summary, steps=steps, timeline=timeline, approved_by=approved_by, approval_progress=progress
    )


APPROVAL_GIVEN = "execution.approval_given"  # one person's approval; the execution runs once enough people gave one


def approval_progress(required: int, given: Sequence[str]) -> str:
    """'1 of 2 approvals (alice)': where an execution awaiting approval stands, for the console, API and Slack."""
    who = ", ".join(actor.removeprefix("user:") for actor in given)
    counted = f"{len(given)} of {required} approval{'' if required == 1 else 's'}"
    return f"{counted} ({who})" if who else counted


def approvers(*, conn: Connection, execution_ids: Sequence[int]) -> dict[int, list[str]]:
    """Who approved each execution so far, in order, from the audit trail."""
    if not execution_ids:
        return {}
    given: dict[int, list[str]] = {}
    for execution_id, actor in conn.execute(
        select(audit_t.c.execution_id, audit_t.c.actor)
        .where(audit_t.c.execution_id.in_(execution_ids), audit_t.c.action == APPROVAL_GIVEN)
        .order_by(audit_t.c.id)
    ):
        given.setdefault(execution_id, []).append(actor)
    return given


def _decide(
    conn: Connection,
    execution_id: int,
    to: Status,
    from_states: set[str],
    *,
    actor: str,
    reason: str,
    now: datetime,
    verb: str,
) -> ExecutionDetail:
    current = conn.execute(
        select(executions_t.c.status, executions_t.c.incident_id).where(executions_t.c.id == execution_id)
    ).first()
    if current is None:
        raise missing("execution", execution_id)
    ok = transition(
        conn,
        execution_id,
        to,
        actor=actor,
        now=now,
        reason=reason or f"{verb} by {actor}",
        from_states=from_states,
        incident_id=current.incident_id,
        values={"decided_by": actor, "decided_at": now},
    )
    if not ok:
        raise Conflict(f"execution {execution_id} is {current.status}: it cannot be {verb}")
    return get_execution(conn=conn, execution_id=execution_id)


def approve(
    *, conn: Connection, execution_id: int, actor: str, reason: str, now: datetime, via: str = "console"
) -> ExecutionDetail:
    """Count `actor`'s approval; the execution runs once its `approvals_required` distinct people approved.

    Each approval is audited (`execution.approval_given`, who); the last one also `execution.approved`
    and moves it to pending. The same person approving twice is refused: two-person approval means two.
    """
    # Touching the row locks it (PostgreSQL; SQLite's write transaction is exclusive already): two people
    # approving at once are counted one after the other, so neither approval is lost and none counts twice.
    locked = conn.execute(
        update(executions_t)
        .where(executions_t.c.id == execution_id, executions_t.c.status == "awaiting_approval")
        .values(updated_at=now)
        .returning(executions_t.c.approvals_required, executions_t.c.incident_id)
    ).first()
    if locked is None:
        return _decide(  # raises NotFound or Conflict, saying what state it is in
            conn, execution_id, "pending", {"awaiting_approval"}, actor=actor, reason=reason, now=now, verb="approved"
        )
    required, incident_id = locked.approvals_required, locked.incident_id
    given = approvers(conn=conn, execution_ids=[execution_id]).get(execution_id, [])
    if actor in given:
        raise Conflict(
            f"{actor.removeprefix('user:')} already approved execution {execution_id}: it needs {required} "
            f"approvals from different people, and has {approval_progress(required, given)}"
        )
    given.append(actor)
    audit(
        conn,
        actor=actor,
        action=APPROVAL_GIVEN,
        incident_id=incident_id,
        execution_id=execution_id,
        detail={"reason": reason, "approvals": len(given), "required": required, "via": via},
        now=now,
    )
    if len(given) < required:
        return get_execution(conn=conn, execution_id=execution_id)
    audit(
        conn,
        actor=actor,
        action="execution.approved",
        incident_id=incident_id,
        execution_id=execution_id,
        detail={"reason": reason, "approved_by": given},
        now=now,
    )
    by = ", ".join(given)
    return _decide(
        conn,
        execution_id,
        "pending",
        {"awaiting_approval"},
        actor=by[:255],
        reason=reason or f"approved by {by}",
        now=now,
        verb="approved",
    )


def reject(*, conn: Connection, execution_id: int, actor: str, reason: str, now: datetime) -> ExecutionDetail:
    return _decide(
        conn, execution_id, "cancelled", {"awaiting_approval"}, actor=actor, reason=reason, now=now, verb="rejected"
    )


def cancel(*, conn: Connection, execution_id: int, actor: str, reason: str, now: datetime) -> ExecutionDetail:
    """Stop an execution; a step in flight finishes, but its worker records nothing after it and stops."""
    _decide(conn, execution_id, "cancelled", set(ACTIVE), actor=actor, reason=reason, now=now, verb="cancelled")
    conn.execute(
        update(steps_t)
        .where(steps_t.c.execution_id == execution_id, steps_t.c.status.in_(("running", "waiting")))
        .values(status="cancelled", finished_at=now, error=f"cancelled by {actor}")
    )
    return get_execution(conn=conn, execution_id=execution_id)


def get_automation(*, conn: Connection) -> AutomationOut:
    return AutomationOut(**asdict(guards.automation(conn)))


def set_automation(
    *, conn: Connection, actor: str, now: datetime, reason: str, paused: bool | None = None, dry_run: bool | None = None
) -> AutomationOut:
    state = guards.set_automation(conn, actor=actor, now=now, reason=reason, paused=paused, dry_run=dry_run)
    return AutomationOut(**asdict(state))
