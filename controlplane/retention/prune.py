"""Owns what retention deletes, one small transaction at a time: plain functions over a connection.

Gone after their time (`Policy`): resolved incidents with their alerts, audit rows, executions, steps,
pages, links, Slack threads and ended silences; a storm's suppressed executions sooner; alerts' own
audit rows (`alert.firing`, `alert.resolved`) sooner too; and the history that belongs to no incident
(audit rows, failover events, lifted quarantines, silences, executions) with the incidents.

Kept, whatever their age (`prunable_incident`, `_kept_execution`):
- an incident not resolved, or holding an alert still firing, and everything of it;
- an execution not finished (waiting, awaiting approval, running), and its incident;
- a quarantine in force, its execution and its incident (the loop breaker's record);
- anything inside the longest window a guard of the rules in force looks back over (cooldown,
  max_runs, the loop breaker, the ledger's recurrence window): `Cutoffs.at` moves the cutoff back.

Every function deletes at most `limit` rows of its main table and their children, and returns
what it deleted through `Deleted` (counts per table, and the rows themselves when archiving).
Children are deleted explicitly rather than by cascade, so each is counted and archived.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Delete,
    Table,
    and_,
    delete,
    exists,
    literal_column,
    or_,
    select,
    tuple_,
)

from controlplane.db.tables import (
    alerts_t,
    audit_t,
    executions_t,
    failover_events_t,
    incidents_t,
    links_t,
    notification_threads_t,
    pages_t,
    quarantines_t,
    silences_t,
    steps_t,
)
from controlplane.playbooks import ledger
from controlplane.playbooks.state import ACTIVE, TERMINAL
from controlplane.rules.schema import Rule

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ALERT_AUDITS = ("alert.firing", "alert.resolved")


@dataclass(frozen=True)
class Policy:
    """How long each kind of record is kept (settings: CONTROLPLANE_RETENTION_*_DAYS)."""

    incidents: timedelta = timedelta(days=90)
    suppressed: timedelta = timedelta(days=14)
    alert_audit: timedelta = timedelta(days=30)


def guard_window(rules: list[Rule]) -> timedelta:
    """The longest a guard of `rules` looks back (cooldown, max_runs, the loop breaker), or the ledger's
    recurrence window if longer: runs younger than this decide whether the next run may start."""
    longest = ledger.WINDOW
    for rule in rules:
        guards = rule.guards
        windows = (
            guards.cooldown,
            guards.max_runs.per if guards.max_runs else None,
            guards.loop_breaker.within if guards.loop_breaker else None,
        )
        longest = max([longest, *(window for window in windows if window)])
    return longest


def _before(now: datetime, age: timedelta) -> datetime:
    try:
        return max(now - age, EPOCH)
    except OverflowError:  # a window of centuries: keep everything
        return EPOCH


@dataclass(frozen=True)
class Cutoffs:
    """Records older than these go (each a point in time)."""

    incidents: datetime  # resolved before this: incidents and what they hold; also history of no incident
    suppressed: datetime
    alert_audit: datetime

    @classmethod
    def at(cls, now: datetime, policy: Policy, guard: timedelta) -> Cutoffs:
        return cls(
            incidents=min(_before(now, policy.incidents), _before(now, guard)),
            suppressed=_before(now, policy.suppressed),  # suppressed runs never count for a guard
            alert_audit=_before(now, policy.alert_audit),
        )


@dataclass
class Deleted:
    """What a batch deleted: rows per table, and with `keep_rows` the rows themselves (for the archive)."""

    keep_rows: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def run(self, conn: Connection, statement: Delete, table: Table) -> int:
        if self.keep_rows:
            found = [dict(row) for row in conn.execute(statement.returning(*table.c)).mappings()]
            self.rows.setdefault(table.name, []).extend(found)
            deleted = len(found)
        else:
            deleted = conn.execute(statement).rowcount
        self.counts[table.name] += deleted
        return deleted

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_e = executions_t.c
_i = incidents_t.c
_q = quarantines_t.c
_a = audit_t.c


def _one_of(column: Any, values: Iterable[str]) -> ColumnElement[bool]:
    """`column IN ('a', 'b')` with the values rendered into the SQL, as in playbooks/guards.py: a partial
    index (and a prepared statement's generic plan) is usable only with the literals."""
    return column.in_([literal_column(f"'{value}'") for value in sorted(values)])


_SUPPRESSED = _e.status == literal_column("'suppressed'")
_FINISHED = _one_of(_e.status, TERMINAL)


def _kept_execution(lifted_before: datetime) -> ColumnElement[bool]:
    """The execution a quarantine tripped, while the quarantine is in force or was lifted after
    `lifted_before`: the loop breaker's evidence goes only with its record."""
    return exists().where(_q.execution_id == _e.id, or_(_q.lifted_at.is_(None), _q.lifted_at >= lifted_before))


def prunable_incident(cut: datetime) -> ColumnElement[bool]:
    """An incident that may go: resolved before `cut`, holding no alert still firing, no execution still in
    flight or younger than `cut` (a guard may count it), and no quarantine in force."""
    live = executions_t.alias("live")
    return and_(
        _i.status == literal_column("'resolved'"),
        _i.resolved_at < cut,
        ~exists().where(
            links_t.c.incident_id == _i.id,
            alerts_t.c.id == links_t.c.alert_id,
            alerts_t.c.status == literal_column("'firing'"),
        ),
        ~exists().where(
            live.c.incident_id == _i.id,
            or_(_one_of(live.c.status, ACTIVE), live.c.created_at >= cut),
        ),
        ~exists().where(_q.incident_id == _i.id, _q.lifted_at.is_(None)),
    )


def delete_executions(conn: Connection, ids: list[int], deleted: Deleted, *, lifted_before: datetime) -> None:
    """Executions with their steps, pages, audit rows, ended silences and the quarantines they tripped
    (lifted before `lifted_before`): deleted with them, not left to lose their reference to them."""
    if not ids:
        return
    ended = or_(silences_t.c.expired_at.is_not(None), silences_t.c.ends_at < lifted_before)
    deleted.run(conn, delete(silences_t).where(silences_t.c.execution_id.in_(ids), ended), silences_t)
    deleted.run(conn, delete(quarantines_t).where(_q.execution_id.in_(ids)), quarantines_t)
    deleted.run(conn, delete(audit_t).where(_a.execution_id.in_(ids)), audit_t)
    deleted.run(conn, delete(steps_t).where(steps_t.c.execution_id.in_(ids)), steps_t)
    deleted.run(conn, delete(pages_t).where(pages_t.c.execution_id.in_(ids)), pages_t)
    deleted.run(conn, delete(executions_t).where(_e.id.in_(ids)), executions_t)


def _executions_where(
    conn: Connection, deleted: Deleted, *where: ColumnElement[bool], order: Any, lifted_before: datetime, limit: int
) -> int:
    """Up to `limit` executions matching `where` (never one a quarantine still holds), with their children."""
    query = select(_e.id).where(*where, ~_kept_execution(lifted_before)).order_by(order).limit(limit)
    ids = list(conn.scalars(query))
    delete_executions(conn, ids, deleted, lifted_before=lifted_before)
    return len(ids)


def suppressed_executions(
    conn: Connection, deleted: Deleted, *, cut: datetime, history_cut: datetime, limit: int
) -> int:
    """Up to `limit` suppressed executions created before `cut`, except an open incident's, and one that
    tripped a quarantine lifted after `history_cut` (the quarantine is history, kept as long as incidents)."""
    open_incident = exists().where(_i.id == _e.incident_id, _i.status != literal_column("'resolved'"))
    where = (_SUPPRESSED, _e.created_at < cut, ~open_incident)
    return _executions_where(conn, deleted, *where, order=_e.created_at, lifted_before=history_cut, limit=limit)


def next_incidents(conn: Connection, cut: datetime, after: tuple[datetime, int] | None, limit: int) -> list[Any]:
    """The next `limit` prunable incidents in the order they resolved, after the cursor `after`
    (resolved_at, id): a round walks them once, however many it has to leave."""
    query = select(_i.id, _i.resolved_at).where(prunable_incident(cut))
    if after is not None:
        query = query.where(tuple_(_i.resolved_at, _i.id) > tuple_(*after))
    return list(conn.execute(query.order_by(_i.resolved_at, _i.id).limit(limit)))


def executions_of(conn: Connection, deleted: Deleted, *, incidents: list[int], cut: datetime, limit: int) -> int:
    """Up to `limit` finished executions of `incidents` created before `cut`, with their children."""
    where = (_e.incident_id.in_(incidents), _FINISHED, _e.created_at < cut)
    return _executions_where(conn, deleted, *where, order=_e.id, lifted_before=cut, limit=limit)


def alerts_of(conn: Connection, deleted: Deleted, *, incidents: list[int], limit: int) -> int:
    """Up to `limit` alerts held by `incidents` (prunable: none of their alerts fires) and by no other
    incident, with their links. Read from the links alone: a condition on the alerts' status let SQLite
    walk every resolved alert instead (2 s a batch at a million rows)."""
    elsewhere = links_t.alias("elsewhere")
    ids = list(
        conn.scalars(
            select(links_t.c.alert_id)
            .where(
                links_t.c.incident_id.in_(incidents),
                ~exists().where(elsewhere.c.alert_id == links_t.c.alert_id, elsewhere.c.incident_id.notin_(incidents)),
            )
            .order_by(links_t.c.alert_id)
            .limit(limit)
        )
    )
    if ids:
        deleted.run(conn, delete(links_t).where(links_t.c.alert_id.in_(ids)), links_t)
        deleted.run(conn, delete(alerts_t).where(alerts_t.c.id.in_(ids)), alerts_t)
    return len(ids)


def audits_of(conn: Connection, deleted: Deleted, *, incidents: list[int], limit: int) -> int:
    """Up to `limit` audit rows of `incidents`."""
    ids = list(conn.scalars(select(_a.id).where(_a.incident_id.in_(incidents)).order_by(_a.id).limit(limit)))
    if ids:
        deleted.run(conn, delete(audit_t).where(_a.id.in_(ids)), audit_t)
    return len(ids)


def incidents(conn: Connection, deleted: Deleted, *, ids: list[int], cut: datetime) -> int:
    """`ids` whose executions, alerts and audit rows are gone, with their links, Slack threads and ended silences.

    Checked again here: an incident that gained a run meanwhile, or still holds one, stays."""
    gone = list(
        conn.scalars(
            select(_i.id).where(
                _i.id.in_(ids),
                prunable_incident(cut),
                ~exists().where(_e.incident_id == _i.id),
                ~exists().where(_a.incident_id == _i.id),
            )
        )
    )
    if not gone:
        return 0
    deleted.run(conn, delete(links_t).where(links_t.c.incident_id.in_(gone)), links_t)
    threads = notification_threads_t.c
    deleted.run(conn, delete(notification_threads_t).where(threads.incident_id.in_(gone)), notification_threads_t)
    ended = or_(silences_t.c.expired_at.is_not(None), silences_t.c.ends_at < cut)
    deleted.run(conn, delete(silences_t).where(silences_t.c.incident_id.in_(gone), ended), silences_t)
    deleted.run(conn, delete(quarantines_t).where(_q.incident_id.in_(gone), _q.lifted_at < cut), quarantines_t)
    deleted.run(conn, delete(incidents_t).where(_i.id.in_(gone)), incidents_t)
    return len(gone)


def alert_audits(
    conn: Connection, deleted: Deleted, *, cut: datetime, after: tuple[datetime, int] | None, limit: int
) -> tuple[datetime, int] | None:
    """Up to `limit` `alert.*` audit rows from before `cut` and after the cursor `after` (at, id), except an
    open incident's; the cursor to go on from, or None when there are no more. Rows an open incident kept
    stay behind the cursor: they go with their incident."""
    open_incident = exists().where(_i.id == _a.incident_id, _i.status != literal_column("'resolved'"))
    query = select(_a.id, _a.at).where(_a.at < cut, _one_of(_a.action, ALERT_AUDITS), ~open_incident)
    if after is not None:
        query = query.where(tuple_(_a.at, _a.id) > tuple_(*after))
    found = list(conn.execute(query.order_by(_a.at, _a.id).limit(limit)))
    if not found:
        return None
    deleted.run(conn, delete(audit_t).where(_a.id.in_([row.id for row in found])), audit_t)
    return found[-1].at, found[-1].id


def history(conn: Connection, deleted: Deleted, *, cut: datetime, limit: int) -> int:
    """Up to `limit` rows of each kind of record that belongs to no incident, from before `cut`: finished
    executions, audit rows, failover events, lifted quarantines, ended silences. Returns the most deleted
    from one table (0: nothing left)."""
    where = (_e.incident_id.is_(None), _FINISHED, _e.updated_at < cut)
    found = [_executions_where(conn, deleted, *where, order=_e.id, lifted_before=cut, limit=limit)]
    singles: list[tuple[Table, ColumnElement[bool], tuple[Any, ...]]] = [
        (audit_t, and_(_a.at < cut, _a.incident_id.is_(None), _a.execution_id.is_(None)), (_a.at, _a.id)),
        (failover_events_t, failover_events_t.c.at < cut, (failover_events_t.c.id,)),
        (quarantines_t, _q.lifted_at < cut, (_q.id,)),
        (silences_t, and_(silences_t.c.incident_id.is_(None), silences_t.c.ends_at < cut), (silences_t.c.id,)),
    ]
    for table, old, order in singles:
        key = table.c.id
        batch = list(conn.scalars(select(key).where(old).order_by(*order).limit(limit)))
        if batch:
            deleted.run(conn, delete(table).where(key.in_(batch)), table)
        found.append(len(batch))
    return max(found)
