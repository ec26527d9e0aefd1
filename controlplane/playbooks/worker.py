"""Owns claiming executions and running them on worker threads, with heartbeated leases.

A claim is a lease: `lease_owner` + `lease_expires_at`, renewed by a heartbeat while the
execution runs. An execution whose lease expired (its worker died: kill -9, lost node) is
claimed again and resumed at its current step, with the same idempotency keys; after
`max_claims` claims it is failed instead, so nothing stays `running` forever.
On PostgreSQL, claims use FOR UPDATE SKIP LOCKED so replicas never claim the same row.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from controlplane.db.engine import write_transaction
from controlplane.db.tables import executions_t
from controlplane.playbooks import pages
from controlplane.playbooks.executor import Executor
from controlplane.playbooks.state import transition

log = structlog.get_logger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def claim_next(conn: Connection, *, owner: str, now: datetime, lease: timedelta, max_claims: int) -> int | None:
    """Claim the oldest runnable execution for `owner`; None when there is none."""
    c = executions_t.c
    runnable = or_(
        and_(c.status == "pending", or_(c.wake_at.is_(None), c.wake_at <= now)),
        and_(c.status == "waiting", c.wake_at <= now),
        and_(c.status == "running", c.lease_expires_at < now),  # its worker died
    )
    query = (
        select(c.id, c.status, c.claims, c.lease_owner, c.rule_name, c.incident_id, c.dry_run, c.page_on_failure)
        .where(runnable)
        .order_by(c.id)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    row = conn.execute(query).first()
    if row is None:
        return None
    takeover = row.status == "running"
    if takeover and row.claims >= max_claims:
        reason = f"its worker was lost {row.claims} times (last: {row.lease_owner}); not retried again"
        failed = transition(
            conn,
            row.id,
            "failed",
            actor="controlplane:worker",
            now=now,
            from_states={"running"},
            reason=reason,
            incident_id=row.incident_id,
            values=None if row.dry_run else {"outcome": "failed", "outcome_at": now},
        )
        if failed and row.page_on_failure and not row.dry_run:
            pages.record(
                conn,
                kind="execution_failed",
                execution_id=row.id,
                incident_id=row.incident_id,
                rule=row.rule_name,
                reason=reason,
                now=now,
            )
        return None
    ok = transition(
        conn,
        row.id,
        "running",
        actor="controlplane:worker",
        now=now,
        from_states={row.status},
        values={
            "lease_owner": owner,
            "lease_expires_at": now + lease,
            "claims": row.claims + (0 if row.status == "waiting" else 1),
            "started_at": c.started_at if row.status != "pending" else now,
            "wake_at": None,
        },
        # A waiting execution re-checking is routine; claims and takeovers are worth a line.
        audit_it=row.status != "waiting",
        reason=f"taken over from {row.lease_owner} (lease expired)" if takeover else f"claimed by {owner}",
    )
    return row.id if ok else None


class Worker:
    """`threads` loops that claim and run executions, woken early by `notify()` after ingest commits."""

    def __init__(
        self,
        *,
        engine: Engine,
        executor: Executor,
        instance_id: str,
        threads: int,
        lease_seconds: float,
        poll_seconds: float,
        max_claims: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._executor = executor
        self._instance_id = instance_id
        self._threads_wanted = threads
        self._lease = timedelta(seconds=lease_seconds)
        self._poll = poll_seconds
        self._max_claims = max_claims
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, str] = {}  # execution id -> lease owner, for the heartbeat
        self._lock = threading.Lock()

    def start(self) -> None:
        self._stopping.clear()
        for n in range(self._threads_wanted):
            thread = threading.Thread(target=self._loop, name=f"playbook-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="playbook-heartbeat", daemon=True)
        heartbeat.start()
        self._threads.append(heartbeat)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; steps in flight finish (or their lease expires and another replica resumes them)."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def notify(self) -> None:
        self._wake.set()

    def run_once(self) -> int | None:
        """Claim and run one execution in this thread (tests, `controlplane` CLI); returns its id."""
        owner = f"{self._instance_id}:{uuid.uuid4().hex[:8]}"
        with write_transaction(self._engine, sync="normal") as conn:
            execution_id = claim_next(
                conn, owner=owner, now=self._clock(), lease=self._lease, max_claims=self._max_claims
            )
        if execution_id is None:
            return None
        with self._lock:
            self._running[execution_id] = owner
        try:
            self._executor.run(execution_id, owner)
        finally:
            with self._lock:
                self._running.pop(execution_id, None)
        return execution_id

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.run_once() is not None:
                    continue
            except (OperationalError, InterfaceError) as exc:  # the database is down: say so once a poll, no trace
                log.warning("worker.database_unavailable", error=str(exc.orig or exc).splitlines()[0])
                self._stopping.wait(self._poll)
                continue
            except Exception:
                log.exception("worker.error")
                self._stopping.wait(self._poll)  # the database may be down: back off, then retry
                continue
            self._wake.wait(self._poll)
            self._wake.clear()

    def _heartbeat_loop(self) -> None:
        interval = max(self._lease.total_seconds() / 3, 0.2)
        while not self._stopping.wait(interval):
            with self._lock:
                held = dict(self._running)
            if not held:
                continue
            try:
                with write_transaction(self._engine, sync="normal") as conn:
                    for execution_id, owner in held.items():
                        conn.execute(
                            update(executions_t)
                            .where(executions_t.c.id == execution_id, executions_t.c.lease_owner == owner)
                            .values(lease_expires_at=self._clock() + self._lease)
                        )
            except Exception as exc:
                log.warning("worker.heartbeat_failed", error=str(exc).splitlines()[0])
