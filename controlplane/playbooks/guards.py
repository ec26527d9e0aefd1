"""Owns the guards: global pause and dry-run, quarantine, cooldown, rate and concurrency limits, the loop
breaker, approval.

Every decision reads the database under a per-rule lock, so limits hold across replicas
and restarts; the in-memory state of a process is never trusted for them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import BindParameter, Connection, bindparam, func, literal_column, select, text

from controlplane.audit import audit
from controlplane.db.tables import automation_t, dialect_insert, executions_t, quarantines_t
from controlplane.durations import format_duration
from controlplane.playbooks import quarantine
from controlplane.playbooks.state import ACTIVE
from controlplane.rules.schema import Rule


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
    runs: tuple[int, ...] = ()  # loop_breaker: the runs that tripped it


_AUTOMATION = select(automation_t).where(automation_t.c.id == 1)  # built once: every triggering ingest batch reads it


def automation(conn: Connection) -> Automation:
    row = conn.execute(_AUTOMATION).first()
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


@dataclass
class GuardSession:
    """The guard decisions of one transaction: each rule locked once, and what stays decided.

    Within one transaction (one `now`, one automation state) a suppressed (rule, guard key)
    stays suppressed: the transaction only adds executions, and more executions never lift a
    guard. And once it starts an execution, the next trigger of that key finds it in progress.
    So a storm batch decides each key once instead of querying the guards for every alert.
    """

    conn: Connection
    _locked: set[str] = field(default_factory=set)
    _decided: dict[tuple[str, str], Decision] = field(default_factory=dict)

    def lock(self, rule_names: Iterable[str]) -> None:
        """Take the rules' locks in name order: transactions that lock several rules never deadlock."""
        for name in sorted(set(rule_names) - self._locked):
            lock_rule(self.conn, name)
            self._locked.add(name)

    def decide(self, *, rule: Rule, guard_key: str, now: datetime, state: Automation) -> Decision:
        self.lock([rule.name])
        known = self._decided.get((rule.name, guard_key))
        if known is not None:
            return known
        decision = decide(self.conn, rule=rule, guard_key=guard_key, now=now, state=state)
        if decision.guard == "loop_breaker":  # it trips once; the key's next triggers find it quarantined
            reason = f"quarantined by the loop breaker for {guard_key}: lift it to run"
            self._decided[rule.name, guard_key] = Decision("suppressed", decision.dry_run, reason, "quarantined")
        elif decision.status == "suppressed":
            self._decided[rule.name, guard_key] = decision
        return decision

    def started(self, rule: Rule, guard_key: str, execution_id: int, dry_run: bool) -> None:
        """An execution of (rule, key) was created not suppressed: later triggers find it in progress."""
        reason = f"execution #{execution_id} for {guard_key} is still in progress"
        self._decided[rule.name, guard_key] = Decision("suppressed", dry_run, reason, "active")


# Everything the guards read, in one round trip (a storm decides thousands of times a minute).
# The indexes behind each part are in db/models.py (Execution); suppressed rows never count.
_e = executions_t.c
_q = quarantines_t.c
_RULE: BindParameter[str] = bindparam("rule")
_KEY: BindParameter[str] = bindparam("key")
# Status constants are rendered into the SQL, not bound: a prepared statement's generic plan
# (psycopg prepares after five runs) can use the partial indexes only if it sees the literal.
_COUNTED = _e.status != literal_column("'suppressed'")
_IS_ACTIVE = _e.status.in_([literal_column(f"'{status}'") for status in sorted(ACTIVE)])
_GUARD_FACTS = select(
    select(_e.id)
    .where(_e.rule_name == _RULE, _e.guard_key == _KEY, _IS_ACTIVE)
    .order_by(_e.id)
    .limit(1)
    .scalar_subquery()
    .label("active"),
    select(func.max(_e.created_at))
    .where(_e.rule_name == _RULE, _COUNTED, _e.guard_key == _KEY, _e.created_at > bindparam("cooldown_since"))
    .scalar_subquery()
    .label("last"),
    select(func.count())
    .where(_e.rule_name == _RULE, _COUNTED, _e.created_at > bindparam("runs_since"))
    .scalar_subquery()
    .label("runs"),
    select(func.count()).where(_e.rule_name == _RULE, _IS_ACTIVE).scalar_subquery().label("running"),
    select(_q.id)
    .where(_q.rule_name == _RULE, _q.guard_key == _KEY, _q.lifted_at.is_(None))
    .order_by(_q.id)
    .limit(1)
    .scalar_subquery()
    .label("quarantined"),
    select(func.max(_q.lifted_at))
    .where(_q.rule_name == _RULE, _q.guard_key == _KEY)
    .scalar_subquery()
    .label("lifted"),  # runs before the key's last lift do not count for the loop breaker
)


def decide(conn: Connection, *, rule: Rule, guard_key: str, now: datetime, state: Automation) -> Decision:
    """Which status a new execution of `rule` for `guard_key` starts in. Call under lock_rule()."""
    guards = rule.guards
    dry_run = rule.shadow or state.dry_run  # shadow: every guard decides as if live; the run acts on nothing
    if state.paused:
        return Decision("suppressed", dry_run, f"automation paused: {state.reason or 'no reason given'}", "paused")
    facts = conn.execute(
        _GUARD_FACTS,
        {
            "rule": rule.name,
            "key": guard_key,
            # No such guard: a window from now on, which holds nothing.
            "cooldown_since": now - guards.cooldown if guards.cooldown else now,
            "runs_since": now - guards.max_runs.per if guards.max_runs else now,
        },
    ).one()
    if facts.quarantined is not None:
        reason = f"quarantined by the loop breaker for {guard_key} (quarantine #{facts.quarantined}): lift it to run"
        return Decision("suppressed", dry_run, reason, "quarantined")
    if facts.active is not None:
        reason = f"execution #{facts.active} for {guard_key} is still in progress"
        return Decision("suppressed", dry_run, reason, "active")
    if guards.cooldown and facts.last is not None:
        until = facts.last + guards.cooldown
        return Decision(
            "suppressed",
            dry_run,
            f"cooldown {format_duration(guards.cooldown)}: next run allowed after {until.isoformat()}",
            "cooldown",
        )
    if guards.max_runs and facts.runs >= guards.max_runs.count:
        return Decision(
            "suppressed",
            dry_run,
            f"max_runs: {guards.max_runs.count} per {format_duration(guards.max_runs.per)} reached",
            "max_runs",
        )
    if guards.max_concurrent and facts.running >= guards.max_concurrent:
        return Decision(
            "suppressed", dry_run, f"max_concurrent: {guards.max_concurrent} already in progress", "max_concurrent"
        )
    if dry_run:
        would = "; live, it would wait for approval" if guards.approval else ""
        why = "shadow rule" if rule.shadow else "global dry run"
        return Decision("pending", True, f"{why}: actions are planned, not called{would}")
    breaker = guards.loop_breaker
    if breaker is not None:
        since = max(now - breaker.within, facts.lifted) if facts.lifted is not None else now - breaker.within
        runs = quarantine.counted_runs(conn, rule=rule.name, guard_key=guard_key, since=since)
        if len(runs) >= breaker.runs:
            reason = quarantine.reason_for(breaker, guard_key, runs)
            return Decision("suppressed", False, reason, "loop_breaker", runs=tuple(run.id for run in runs))
    if guards.approval:
        return Decision("awaiting_approval", False, "waiting for approval")
    return Decision("pending", False, "")
