"""Owns the guards: global pause and dry-run, cooldown, rate and concurrency limits, approval.

Every decision reads the database under a per-rule lock, so limits hold across replicas
and restarts; the in-memory state of a process is never trusted for them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, func, select, text

from controlplane.db.models import AutomationState
from controlplane.durations import format_duration
from controlplane.ingest.store import audit, dialect_insert
from controlplane.playbooks.state import ACTIVE, executions_t
from controlplane.rules.schema import Rule

automation_t: Table = AutomationState.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Automation:
    paused: bool
    dry_run: bool
    reason: str
    updated_by: str
    updated_at: datetime | None


@dataclass(frozen=True)
class Decision:
    """The status a new execution starts in; `reason` says why when it is not simply `pending`."""

    status: str  # suppressed | awaiting_approval | pending
    dry_run: bool
    reason: str
    guard: str | None = None  # which guard suppressed it (metric label)


def automation(conn: Connection) -> Automation:
    row = conn.execute(select(automation_t).where(automation_t.c.id == 1)).first()
    if row is None:
        return Automation(paused=False, dry_run=False, reason="", updated_by="", updated_at=None)
    return Automation(row.paused, row.dry_run, row.reason, row.updated_by, row.updated_at)


def set_automation(
    conn: Connection, *, actor: str, now: datetime, reason: str, paused: bool | None = None, dry_run: bool | None = None
) -> Automation:
    """Flip the global switches (the kill switch and global dry-run), audited."""
    current = automation(conn)
    values = {
        "paused": current.paused if paused is None else paused,
        "dry_run": current.dry_run if dry_run is None else dry_run,
        "reason": reason,
        "updated_by": actor,
        "updated_at": now,
    }
    stmt = dialect_insert(conn, automation_t).values(id=1, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))
    audit(
        conn,
        actor=actor,
        action="automation.changed",
        incident_id=None,
        now=now,
        detail={"paused": values["paused"], "dry_run": values["dry_run"], "reason": reason},
    )
    return automation(conn)


def lock_rule(conn: Connection, rule_name: str) -> None:
    """Serialise guard decisions of one rule across replicas (PostgreSQL); SQLite has one writer anyway."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(rule_name.encode()) - 2**31})


def decide(conn: Connection, *, rule: Rule, guard_key: str, now: datetime, state: Automation) -> Decision:
    """Which status a new execution of `rule` for `guard_key` starts in. Call under lock_rule()."""
    guards = rule.guards
    dry_run = guards.dry_run or state.dry_run
    if state.paused:
        return Decision("suppressed", dry_run, f"automation paused: {state.reason or 'no reason given'}", "paused")
    counted = executions_t.c.status != "suppressed"
    of_rule = executions_t.c.rule_name == rule.name
    active = conn.execute(
        select(executions_t.c.id)
        .where(of_rule, executions_t.c.guard_key == guard_key, executions_t.c.status.in_(ACTIVE))
        .limit(1)
    ).scalar()
    if active is not None:
        return Decision("suppressed", dry_run, f"execution #{active} for {guard_key} is still in progress", "active")
    if guards.cooldown:
        last = conn.execute(
            select(func.max(executions_t.c.created_at)).where(
                of_rule,
                counted,
                executions_t.c.guard_key == guard_key,
                executions_t.c.created_at > now - guards.cooldown,
            )
        ).scalar()
        if last is not None:
            until = last + guards.cooldown
            return Decision(
                "suppressed",
                dry_run,
                f"cooldown {format_duration(guards.cooldown)}: next run allowed after {until.isoformat()}",
                "cooldown",
            )
    if guards.max_runs:
        runs = conn.execute(
            select(func.count()).where(of_rule, counted, executions_t.c.created_at > now - guards.max_runs.per)
        ).scalar_one()
        if runs >= guards.max_runs.count:
            return Decision(
                "suppressed",
                dry_run,
                f"max_runs: {guards.max_runs.count} per {format_duration(guards.max_runs.per)} reached",
                "max_runs",
            )
    if guards.max_concurrent:
        running = conn.execute(select(func.count()).where(of_rule, executions_t.c.status.in_(ACTIVE))).scalar_one()
        if running >= guards.max_concurrent:
            return Decision(
                "suppressed", dry_run, f"max_concurrent: {guards.max_concurrent} already in progress", "max_concurrent"
            )
    if dry_run:
        return Decision("pending", True, "dry run: actions are recorded, not called")
    if guards.approval:
        return Decision("awaiting_approval", False, "waiting for approval")
    return Decision("pending", False, "")
