"""Owns the effectiveness ledger: what each finished remediation achieved, and each rule's record.

Outcomes (executions.outcome, set once a run is settled):
- `failed`, `rolled_back`: when the run ends so (executor, worker);
- `resolved`: its own `verify.*` step passed, or its incident resolved within WINDOW of its end;
- `not_resolved`: it succeeded, but its incident was still unresolved WINDOW after it ended;
- `recurred`: it was `resolved`, and the same rule fired again for the same guard key within
  WINDOW of that (set in the trigger's transaction, before the guards decide: the loop breaker
  counts it as a run that did not last).
Dry runs, suppressed and cancelled executions get no outcome: they acted on nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, bindparam, case, func, literal_column, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from controlplane.db.engine import write_transaction
from controlplane.db.tables import executions_t, incidents_t
from controlplane.interval_jobs import IntervalJobs
from controlplane.leader import Fence, StaleLeader

log = structlog.get_logger(__name__)

WINDOW = timedelta(hours=1)
OUTCOMES = ("resolved", "not_resolved", "rolled_back", "failed", "recurred")
SUCCESSES = frozenset({"resolved"})
JOB_PREFIX = "ledger:"

_e = executions_t.c
_i = incidents_t.c


# Built once: it runs in every ingest batch that triggers a rule (building it was most of its time).
_MARK_RECURRED = (
    update(executions_t)
    .where(
        # Only succeeded runs are ever `resolved`: naming the status lets the lookup use
        # ix_executions_rule_status_guard (rule, status, key); it runs once per key per ingest batch.
        _e.rule_name == bindparam("recurring_rule"),
        _e.status == literal_column("'succeeded'"),
        _e.guard_key == bindparam("recurring_key"),
        _e.outcome == "resolved",
        _e.finished_at > bindparam("since"),
    )
    .values(outcome="recurred", outcome_at=bindparam("now"))
    .returning(_e.id)
)


def mark_recurred(conn: Connection, *, rule: str, guard_key: str, now: datetime) -> list[int]:
    """The key fired again: its resolved runs that ended within WINDOW did not last. Their ids."""
    params = {"recurring_rule": rule, "recurring_key": guard_key, "since": now - WINDOW, "now": now}
    return list(conn.execute(_MARK_RECURRED, params).scalars())


def settle_due(conn: Connection, *, now: datetime, limit: int = 500) -> list[tuple[str, str]]:
    """Settle succeeded runs not settled yet: `resolved` once their incident resolved within WINDOW of
    their end, `not_resolved` once WINDOW passed without that. The (rule, outcome) of each settled."""
    rows = conn.execute(
        select(_e.id, _e.rule_name, _e.finished_at, _i.resolved_at)
        .select_from(executions_t.outerjoin(incidents_t, _i.id == _e.incident_id))
        .where(
            _e.status == "succeeded",
            _e.outcome.is_(None),
            or_(_i.resolved_at.is_not(None), _e.finished_at <= now - WINDOW),
        )
        .order_by(_e.id)
        .limit(limit)
    ).all()
    settled: list[tuple[str, str]] = []
    for row in rows:
        # An incident resolved later than WINDOW after the run means the window has passed too.
        resolved = row.resolved_at is not None and row.resolved_at <= row.finished_at + WINDOW
        outcome = "resolved" if resolved else "not_resolved"
        done = conn.execute(
            update(executions_t).where(_e.id == row.id, _e.outcome.is_(None)).values(outcome=outcome, outcome_at=now)
        ).rowcount
        if done:
            settled.append((row.rule_name, outcome))
    return settled


@dataclass(frozen=True)
class Record:
    """Outcomes of one rule (or one rule and guard key) over a period, and the share that resolved."""

    rule: str
    guard_key: str | None
    period: str
    counts: dict[str, int]
    finished: int
    success_rate: float | None  # resolved / settled; None before any run was settled


PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
# Literals, as the partial index ix_executions_finished_runs says it (db/models.py): a parameter would not match it.
FINISHED_RUN = _e.status.in_([literal_column(f"'{s}'") for s in ("succeeded", "failed", "rolled_back")])


def records(conn: Connection, *, now: datetime, by_key: bool = False, rule: str | None = None) -> list[Record]:
    """Each rule's (or each rule and key's) outcomes over the last 24 h and 7 d, by when the runs finished."""
    columns = [_e.rule_name, _e.guard_key] if by_key else [_e.rule_name]
    found: list[Record] = []
    for period, length in PERIODS.items():
        counts = [func.sum(case((_e.outcome == outcome, 1), else_=0)).label(outcome) for outcome in OUTCOMES]
        query = (
            select(*columns, func.count().label("finished"), *counts)
            .where(
                _e.finished_at > now - length,
                FINISHED_RUN,
                _e.dry_run.is_(False),
            )
            .group_by(*columns)
            .order_by(*columns)
        )
        if rule is not None:
            query = query.where(_e.rule_name == rule)
        for row in conn.execute(query).mappings():
            by_outcome = {outcome: int(row[outcome] or 0) for outcome in OUTCOMES}
            settled = sum(by_outcome.values())
            rate = by_outcome["resolved"] / settled if settled else None
            found.append(
                Record(
                    rule=row["rule_name"],
                    guard_key=row["guard_key"] if by_key else None,
                    period=period,
                    counts=by_outcome,
                    finished=int(row["finished"]),
                    success_rate=rate,
                )
            )
    return found


class LedgerSweeps:
    """Runs `settle_due` every `interval_seconds` on the leader; followers skip the round."""

    def __init__(
        self,
        engine: Engine,
        *,
        is_leader: Callable[[], bool],
        fence: Fence,
        counted: Callable[[str, str], None],
        interval_seconds: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._is_leader = is_leader
        self._fence = fence
        self._counted = counted
        self._clock = clock
        self._interval = timedelta(seconds=interval_seconds)
        self._jobs = IntervalJobs(lambda _name: self.sweep_now(), prefix=JOB_PREFIX)

    def start(self) -> None:
        self._jobs.sync({"settle": self._interval})
        self._jobs.start()

    def shutdown(self, wait: bool = True) -> None:
        self._jobs.shutdown(wait=wait)

    def sweep_now(self) -> Sequence[tuple[str, str]]:
        if not self._is_leader():
            return []
        try:
            with write_transaction(self._engine) as conn:
                self._fence(conn)
                settled = settle_due(conn, now=self._clock())
        except StaleLeader as exc:
            log.info("ledger.sweep_skipped_not_leader", reason=str(exc))
            return []
        except (OperationalError, InterfaceError) as exc:  # the database is down: the next sweep tries again
            log.warning("ledger.database_unavailable", error=str(exc.orig or exc).splitlines()[0])
            return []
        except Exception:  # the schedule outlives any one sweep
            log.exception("ledger.sweep_crashed")
            return []
        for rule, outcome in settled:
            self._counted(rule, outcome)
        return settled
