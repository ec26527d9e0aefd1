"""Owns the loop breaker's quarantines: a rule that ran `runs` times for one guard key within `within`
without a lasting fix stops acting on that key until a person lifts the quarantine.

Which runs count: those that acted (not suppressed, not dry runs, not cancelled) since the window
began or the key's last quarantine was lifted, whichever is later, except runs whose fix has lasted
so far (ledger outcome `resolved`; a run whose alert came back is `recurred` by then, see
ledger.mark_recurred). The guards decide it with the others, under the rule's lock
(guards.decide); this module writes and reads the quarantine rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, update

from controlplane.audit import audit
from controlplane.db.tables import executions_t, quarantines_t
from controlplane.durations import format_duration
from controlplane.errors import Conflict, NotFound
from controlplane.rules.schema import LoopBreaker

_e = executions_t.c
_q = quarantines_t.c
RAN = ("succeeded", "failed", "rolled_back")  # finished runs that acted; an active one suppresses by itself


@dataclass(frozen=True)
class Run:
    id: int
    status: str
    outcome: str | None
    created_at: datetime

    def describe(self) -> str:
        settled = f" ({self.outcome})" if self.outcome and self.outcome != self.status else ""
        return f"#{self.id} {self.status}{settled}"


def counted_runs(conn: Connection, *, rule: str, guard_key: str, since: datetime) -> list[Run]:
    """The runs of (rule, key) since `since` that did not fix it for good, oldest first."""
    rows = conn.execute(
        select(_e.id, _e.status, _e.outcome, _e.created_at)
        .where(
            _e.rule_name == rule,
            _e.guard_key == guard_key,
            _e.status.in_(RAN),
            _e.dry_run.is_(False),
            _e.created_at > since,
            (_e.outcome.is_(None)) | (_e.outcome != "resolved"),
        )
        .order_by(_e.id)
    ).all()
    return [Run(r.id, r.status, r.outcome, r.created_at) for r in rows]


def reason_for(breaker: LoopBreaker, guard_key: str, runs: Sequence[Run]) -> str:
    history = ", ".join(run.describe() for run in runs)
    return (
        f"loop breaker: {len(runs)} run{'' if len(runs) == 1 else 's'} for {guard_key} "
        f"within {format_duration(breaker.within)} "
        f"without a lasting fix ({history}); quarantined until a person lifts it"
    )


def quarantine(
    conn: Connection,
    *,
    rule: str,
    guard_key: str,
    execution_id: int,
    incident_id: int | None,
    reason: str,
    runs: Sequence[int],
    now: datetime,
) -> int:
    """Record the quarantine the execution `execution_id` tripped; audited as `rule.quarantined`."""
    quarantine_id: int = conn.execute(
        quarantines_t.insert()
        .values(
            rule_name=rule,
            guard_key=guard_key,
            execution_id=execution_id,
            incident_id=incident_id,
            reason=reason,
            runs=list(runs),
            created_at=now,
            lifted_at=None,
            lifted_by=None,
            lift_reason=None,
        )
        .returning(_q.id)
    ).scalar_one()
    audit(
        conn,
        actor=f"rule:{rule}",
        action="rule.quarantined",
        incident_id=incident_id,
        execution_id=execution_id,
        detail={"quarantine_id": quarantine_id, "guard_key": guard_key, "runs": list(runs), "reason": reason},
        now=now,
    )
    return quarantine_id


def active(conn: Connection, *, rule: str | None = None, guard_key: str | None = None) -> list[dict[str, object]]:
    """Quarantines not lifted yet, newest first (of one rule, or one rule and key)."""
    query = select(quarantines_t).where(_q.lifted_at.is_(None)).order_by(_q.id.desc())
    if rule is not None:
        query = query.where(_q.rule_name == rule)
    if guard_key is not None:
        query = query.where(_q.guard_key == guard_key)
    return [dict(row) for row in conn.execute(query).mappings()]


def of_incident(conn: Connection, *, incident_id: int) -> list[dict[str, object]]:
    """Quarantines not lifted yet that stop a rule acting on a key this incident's alerts triggered."""
    # From the quarantines in force (few), not from the incident's runs: a storm's incident has tens of thousands.
    triggered_here = (
        select(_e.id)
        .where(_e.incident_id == incident_id, _e.rule_name == _q.rule_name, _e.guard_key == _q.guard_key)
        .exists()
    )
    query = select(quarantines_t).where(_q.lifted_at.is_(None), triggered_here).order_by(_q.id.desc())
    return [dict(row) for row in conn.execute(query).mappings()]


def lift(conn: Connection, quarantine_id: int, *, actor: str, reason: str, now: datetime) -> dict[str, object]:
    """A person lets the rule act on the key again; runs before now no longer count.

    Audited as `rule.quarantine_lifted`; Conflict when it was lifted already."""
    row = conn.execute(select(quarantines_t).where(_q.id == quarantine_id)).mappings().first()
    if row is None:
        raise NotFound(f"quarantine {quarantine_id} not found")
    done = conn.execute(
        update(quarantines_t)
        .where(_q.id == quarantine_id, _q.lifted_at.is_(None))
        .values(lifted_at=now, lifted_by=actor, lift_reason=reason)
    ).rowcount
    if done != 1:
        raise Conflict(f"quarantine {quarantine_id} was lifted already")
    audit(
        conn,
        actor=actor,
        action="rule.quarantine_lifted",
        incident_id=row["incident_id"],
        execution_id=row["execution_id"],
        detail={
            "quarantine_id": quarantine_id,
            "rule": row["rule_name"],
            "guard_key": row["guard_key"],
            "reason": reason,
        },
        now=now,
    )
    return {**row, "lifted_at": now, "lifted_by": actor, "lift_reason": reason}
