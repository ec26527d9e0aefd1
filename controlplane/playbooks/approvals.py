"""Owns approval timeouts: an execution nobody approved or rejected in time is cancelled, by the leader.

Without them an execution would wait in awaiting_approval forever: a late approval would act
on an alert long gone, and with `max_concurrent` the waiting run would hold a slot meanwhile.
The sweep is leader work (one replica is enough) and fenced by the leader's term.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, select

from controlplane.db.engine import write_transaction
from controlplane.db.tables import executions_t
from controlplane.durations import format_duration
from controlplane.interval_jobs import IntervalJobs
from controlplane.leader import Fence, StaleLeader
from controlplane.playbooks import pages
from controlplane.playbooks.state import transition
from controlplane.rules.schema import DEFAULT_APPROVAL_TIMEOUT, Rule

log = structlog.get_logger(__name__)

ACTOR = "controlplane:approval-timeout"
# A timeout ends within this long of its time; a sweep is one indexed query when nothing waits.
SWEEP_SECONDS = 15.0
JOB_PREFIX = "approval-timeouts:"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def approval_timeout(rule: Rule | None) -> timedelta:
    """How long an execution of `rule` waits; the default when the rule is gone or no longer asks for approval."""
    if rule is None or not rule.guards.approval:
        return DEFAULT_APPROVAL_TIMEOUT
    return rule.guards.approval_timeout


def expire_approvals(conn: Connection, *, now: datetime, rules: Sequence[Rule], actor: str = ACTOR) -> list[int]:
    """Cancel every execution awaiting approval for its rule's approval_timeout or longer; returns their ids.

    An execution waits from its creation, the only time it enters awaiting_approval. One that a
    person approved or rejected meanwhile is left as it is (transition() refuses it).
    """
    by_name = {rule.name: rule for rule in rules}
    # Only runs waiting at least the shortest timeout can be due: the query leaves the others out.
    shortest = min([DEFAULT_APPROVAL_TIMEOUT, *(approval_timeout(rule) for rule in rules)])
    e = executions_t.c
    rows = conn.execute(
        select(e.id, e.rule_name, e.incident_id, e.created_at, e.page_on_failure)
        .where(executions_t.c.status == "awaiting_approval", executions_t.c.created_at <= now - shortest)
        .order_by(executions_t.c.id)
    ).all()
    expired: list[int] = []
    for row in rows:
        timeout = approval_timeout(by_name.get(row.rule_name))
        if now - row.created_at >= timeout and _cancel(conn, row.id, row.incident_id, timeout, now=now, actor=actor):
            expired.append(row.id)
            if row.page_on_failure:  # nobody decided: whoever should have must hear of it
                pages.record(
                    conn,
                    kind="approval_expired",
                    execution_id=row.id,
                    incident_id=row.incident_id,
                    rule=row.rule_name,
                    reason=f"approval timed out after {format_duration(timeout)}: nobody approved or rejected it",
                    now=now,
                )
    return expired


def _cancel(
    conn: Connection, execution_id: int, incident_id: int | None, timeout: timedelta, *, now: datetime, actor: str
) -> bool:
    waited = format_duration(timeout)
    return transition(
        conn,
        execution_id,
        "cancelled",
        actor=actor,
        now=now,
        reason=f"approval timed out after {waited}: nobody approved or rejected it",
        from_states={"awaiting_approval"},
        incident_id=incident_id,
        values={"decided_by": actor, "decided_at": now},
        detail={"approval_timeout": waited},
    )


class ApprovalTimeouts:
    """Runs `expire_approvals` every `interval_seconds` on the leader; other replicas skip the round.

    `is_leader` spares followers a write transaction each round; `fence` (LeaderElector.fence),
    first in the sweep's transaction, stops a leader that lost its term since it checked.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        rules: Callable[[], Sequence[Rule]],
        is_leader: Callable[[], bool],
        fence: Fence,
        interval_seconds: float = SWEEP_SECONDS,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine = engine
        self._rules = rules
        self._is_leader = is_leader
        self._fence = fence
        self._interval = timedelta(seconds=interval_seconds)
        self._clock = clock
        self._jobs = IntervalJobs(lambda _name: self.sweep_now(), prefix=JOB_PREFIX)

    def start(self) -> None:
        self._jobs.sync({"sweep": self._interval})
        self._jobs.start()

    def shutdown(self, wait: bool = True) -> None:
        self._jobs.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return self._jobs.running

    def sweep_now(self) -> list[int]:
        """One sweep in this thread: the ids cancelled; none when this replica does not lead."""
        if not self._is_leader():
            return []
        try:
            with write_transaction(self._engine) as conn:
                self._fence(conn)
                expired = expire_approvals(conn, now=self._clock(), rules=self._rules(), actor=ACTOR)
        except StaleLeader as exc:  # leadership moved on since is_leader answered: not an error
            log.info("approvals.sweep_skipped_not_leader", reason=str(exc))
            return []
        except Exception:  # the schedule outlives any one sweep (the database may be down)
            log.exception("approvals.sweep_crashed")
            return []
        if expired:
            log.info("approvals.timed_out", executions=expired)
        return expired
