"""Owns reading the service's history for a replay: alerts in arrival order, the executions they made,
quarantine lifts and automation switches. Only SELECTs: a replay never writes the service's database."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, or_, select

from controlplane.db.tables import alerts_t, audit_t, executions_t, incidents_t, links_t, quarantines_t

_a = alerts_t.c
_e = executions_t.c
_q = quarantines_t.c

ALERT_COLUMNS = (
    _a.id,
    _a.fingerprint,
    _a.alertname,
    _a.status,
    _a.labels,
    _a.annotations,
    _a.starts_at,
    _a.ends_at,
    _a.generator_url,
    _a.receiver,
    _a.first_received_at,
    _a.last_received_at,
    _a.receive_count,
)
EXECUTION_COLUMNS = (
    _e.id,
    _e.rule_name,
    _e.playbook_name,
    _e.trigger_key,
    _e.guard_key,
    _e.incident_id,
    _e.alert_id,
    _e.status,
    _e.reason,
    _e.dry_run,
    _e.created_at,
    _e.finished_at,
    _e.guard,
    _e.outcome,
    _e.outcome_at,
)
_ALERT_PAGE = (
    select(*ALERT_COLUMNS, links_t.c.incident_id)
    .outerjoin(links_t, links_t.c.alert_id == _a.id)
    .where(
        _a.id > bindparam("after"),
        _a.first_received_at >= bindparam("start"),
        _a.first_received_at < bindparam("end"),
    )
    .order_by(_a.id)
    .limit(bindparam("limit"))
)
_EXECUTIONS_OF = select(*EXECUTION_COLUMNS).where(_e.alert_id.in_(bindparam("ids", expanding=True)))
_INCIDENTS = select(incidents_t).where(incidents_t.c.id.in_(bindparam("ids", expanding=True)))


def count_alerts(conn: Connection, *, start: datetime, end: datetime) -> int:
    """How many alerts arrived in [start, end)."""
    query = select(func.count()).where(_a.first_received_at >= start, _a.first_received_at < end)
    return int(conn.execute(query).scalar_one())


def alert_pages(conn: Connection, *, start: datetime, end: datetime, size: int) -> Iterator[list[Any]]:
    """The alerts that arrived in [start, end), in pages in the order the service stored them (by id: one
    writer thread inserts them, so that is the order their transactions ran), with their incident."""
    after = 0
    while True:
        rows = conn.execute(_ALERT_PAGE, {"after": after, "start": start, "end": end, "limit": size}).all()
        if not rows:
            return
        yield list(rows)
        after = rows[-1].id


def executions_of(conn: Connection, alert_ids: Sequence[int]) -> list[Any]:
    """The executions the service made for these alerts."""
    return list(conn.execute(_EXECUTIONS_OF, {"ids": list(alert_ids)}).all()) if alert_ids else []


def incidents(conn: Connection, ids: Sequence[int]) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(_INCIDENTS, {"ids": list(ids)}).mappings()] if ids else []


def executions_before(conn: Connection, *, start: datetime, lookback: datetime) -> list[Any]:
    """The executions the guards still see at `start`: made since `lookback`, or still in progress."""
    query = (
        select(*EXECUTION_COLUMNS)
        .where(
            _e.created_at < start,
            or_(_e.created_at > lookback, _e.finished_at.is_(None), _e.finished_at > start),
        )
        .order_by(_e.id)
    )
    return list(conn.execute(query).all())


def quarantines_until(conn: Connection, *, end: datetime) -> list[Any]:
    """Every quarantine made before `end`: those made before the range are the sandbox's start, the lifts of
    the others are replayed on the sandbox's quarantines of the same rule and key."""
    return list(conn.execute(select(quarantines_t).where(_q.created_at < end).order_by(_q.id)).all())


@dataclass(frozen=True)
class Switch:
    """The global switches (kill switch, global dry-run) as set at `at`."""

    at: datetime
    paused: bool
    dry_run: bool
    reason: str
    actor: str


def automation_switches(conn: Connection, *, end: datetime) -> list[Switch]:
    """Every change of the global switches before `end`, oldest first (from the audit trail)."""
    query = (
        select(audit_t.c.at, audit_t.c.actor, audit_t.c.detail)
        .where(audit_t.c.action == "automation.changed", audit_t.c.at < end)
        .order_by(audit_t.c.id)
    )
    return [
        Switch(
            at=r.at,
            paused=bool(r.detail.get("paused")),
            dry_run=bool(r.detail.get("dry_run")),
            reason=str(r.detail.get("reason") or ""),
            actor=r.actor,
        )
        for r in conn.execute(query)
    ]
