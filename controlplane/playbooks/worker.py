"""Owns claiming executions and running them on a bounded pool of worker threads, with heartbeated leases.

A claim is a lease: `lease_owner` + `lease_expires_at`, renewed by a heartbeat while the
execution runs. An execution whose lease expired (its worker died: kill -9, lost node) is
claimed again and resumed at its current step, with the same idempotency keys; after
`max_claims` claims it is failed instead, so nothing stays `running` forever.
On PostgreSQL, claims use FOR UPDATE SKIP LOCKED so replicas never claim the same row.

One claimer thread claims as many runnable executions as the pool has free threads, in one
transaction (each with its own owner token, so every fenced write still names one claim), and
hands each to a thread of the pool. Steps mostly wait on the network, so the pool is sized for
I/O (`worker_threads`), not for cores; a waiting step (`verify.*`) releases its thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, Integer, Row, Select, and_, bindparam, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from controlplane.db.engine import write_transaction
from controlplane.db.tables import executions_t
from controlplane.playbooks import pages
from controlplane.playbooks.executor import Executor
from controlplane.playbooks.state import transition

log = structlog.get_logger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _runnable(*, locked: bool) -> Select[Any]:
    """The oldest runnable executions, `b_limit` of them at `b_now`; `locked`: FOR UPDATE SKIP LOCKED (PostgreSQL)."""
    c = executions_t.c
    now = bindparam("b_now", type_=c.wake_at.type)
    runnable = or_(
        and_(c.status == "pending", or_(c.wake_at.is_(None), c.wake_at <= now)),
        and_(c.status == "waiting", c.wake_at <= now),
        and_(c.status == "running", c.lease_expires_at < now),  # its worker died
    )
    query = (
        select(c.id, c.status, c.claims, c.lease_owner, c.rule_name, c.incident_id, c.dry_run, c.page_on_failure)
        .where(runnable)
        .order_by(c.id)
        .limit(bindparam("b_limit", type_=Integer))
    )
    return query.with_for_update(skip_locked=True) if locked else query


# Built once (building a statement costs more CPU than SQLite takes to run it), run with parameters.
_RUNNABLE = _runnable(locked=False)
_RUNNABLE_LOCKED = _runnable(locked=True)


def claim_next(conn: Connection, *, owner: str, now: datetime, lease: timedelta, max_claims: int) -> int | None:
    """Claim the oldest runnable execution for `owner`; None when there is none."""
    claimed = claim_batch(conn, owners=[owner], now=now, lease=lease, max_claims=max_claims)
    return claimed[0][0] if claimed else None


def claim_batch(
    conn: Connection, *, owners: Sequence[str], now: datetime, lease: timedelta, max_claims: int
) -> list[tuple[int, str]]:
    """Claim up to len(owners) of the oldest runnable executions, one owner token each, in the caller's
    transaction; returns (execution id, owner) for each claimed. An execution whose worker was lost
    `max_claims` times is failed instead (and not returned)."""
    if not owners:
        return []
    query = _RUNNABLE_LOCKED if conn.dialect.name == "postgresql" else _RUNNABLE
    rows = conn.execute(query, {"b_now": now, "b_limit": len(owners)}).all()
    claimed: list[tuple[int, str]] = []
    free = iter(owners)
    for row in rows:
        owner = next(free)
        if _claim_row(conn, row, owner=owner, now=now, lease=lease, max_claims=max_claims):
            claimed.append((row.id, owner))
    return claimed


def _claim_row(
    conn: Connection, row: Row[*tuple[Any, ...]], *, owner: str, now: datetime, lease: timedelta, max_claims: int
) -> bool:
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
        return False
    return transition(
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
            "wake_at": None,
            **({"started_at": now} if row.status == "pending" else {}),  # a resumed run keeps its start
        },
        # A waiting execution re-checking is routine; claims and takeovers are worth a line.
        audit_it=row.status != "waiting",
        reason=f"taken over from {row.lease_owner} (lease expired)" if takeover else f"claimed by {owner}",
    )


# Claims per transaction at most: a claim transaction stays short, so it does not hold up ingest.
CLAIM_BATCH = 64


class Worker:
    """A claimer that fills a pool of `threads` worker threads with claimed executions, woken early by
    `notify()` after ingest commits, and a heartbeat that renews the leases of every claim held."""

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
        if threads < 1:
            raise ValueError(f"a worker needs at least one thread, got {threads}")
        self._engine = engine
        self._executor = executor
        self._instance_id = instance_id
        self._threads_wanted = threads
        self._lease = timedelta(seconds=lease_seconds)
        self._poll = poll_seconds
        self._max_claims = max_claims
        self._clock = clock
        self._wake = threading.Event()  # runnable executions may have appeared, or a thread came free
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[int, str] = {}  # execution id -> lease owner: claimed here, for the heartbeat
        self._lock = threading.Lock()

    def start(self) -> None:
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(self._threads_wanted, thread_name_prefix="playbook-worker")
        claimer = threading.Thread(target=self._claim_loop, name="playbook-claimer", daemon=True)
        claimer.start()
        self._threads.append(claimer)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="playbook-heartbeat", daemon=True)
        heartbeat.start()
        self._threads.append(heartbeat)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; steps in flight finish (or their lease expires and another replica resumes them)."""
        self._stopping.set()
        self._wake.set()
        claimer, others = self._threads[:1], self._threads[1:]
        for thread in claimer:
            thread.join(timeout)  # no claim is handed to the pool after this
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # what was claimed runs on; no new work
            ends = time.monotonic() + timeout
            while self.in_flight and time.monotonic() < ends:
                time.sleep(0.02)
            self._pool = None
        for thread in others:
            thread.join(timeout)
        self._threads.clear()

    def notify(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Executions claimed here and not yet left (running on a thread, or about to)."""
        with self._lock:
            return len(self._running)

    def run_once(self) -> int | None:
        """Claim and run one execution in this thread (tests, `controlplane` CLI); returns its id."""
        claimed = self._claim(1)
        if not claimed:
            return None
        execution_id, owner = claimed[0]
        self._run(execution_id, owner)
        return execution_id

    def _claim(self, count: int) -> list[tuple[int, str]]:
        """Claim up to `count` executions in one transaction; each is in `_running` (heartbeated) on return."""
        owners = [f"{self._instance_id}:{uuid.uuid4().hex[:8]}" for _ in range(count)]
        with write_transaction(self._engine, sync="normal") as conn:
            claimed = claim_batch(
                conn, owners=owners, now=self._clock(), lease=self._lease, max_claims=self._max_claims
            )
        with self._lock:
            self._running.update(claimed)
        return claimed

    def _run(self, execution_id: int, owner: str) -> None:
        try:
            self._executor.run(execution_id, owner)
        finally:
            with self._lock:
                self._running.pop(execution_id, None)
            self._wake.set()  # a thread came free: the claimer may claim again

    def _run_logged(self, execution_id: int, owner: str) -> None:
        """A pool thread's task: its errors are logged (the claim lapses: its lease expires, another run resumes it)."""
        try:
            self._run(execution_id, owner)
        except (OperationalError, InterfaceError) as exc:
            log.warning(
                "worker.database_unavailable", execution_id=execution_id, error=str(exc.orig or exc).splitlines()[0]
            )
        except Exception:
            log.exception("worker.error", execution_id=execution_id)

    def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            # Cleared before looking: a notify() from now on makes the wait below return at once.
            self._wake.clear()
            free = self._threads_wanted - self.in_flight
            if free <= 0:
                self._wake.wait(self._poll)  # a thread coming free sets it
                continue
            wanted = min(free, CLAIM_BATCH)
            try:
                claimed = self._claim(wanted)
            except (OperationalError, InterfaceError) as exc:  # the database is down: say so once a poll, no trace
                log.warning("worker.database_unavailable", error=str(exc.orig or exc).splitlines()[0])
                self._stopping.wait(self._poll)
                continue
            except Exception:
                log.exception("worker.error")
                self._stopping.wait(self._poll)  # back off, then retry
                continue
            for index, (execution_id, owner) in enumerate(claimed):
                # Claimed ones run even when stopping: stop() waits for them before it shuts the pool.
                try:
                    if self._pool is None:
                        raise RuntimeError("the pool is shut")
                    self._pool.submit(self._run_logged, execution_id, owner)
                except RuntimeError:  # stop() gave up waiting for this loop: let the rest go, a replica resumes them
                    with self._lock:
                        for left, _owner in claimed[index:]:
                            self._running.pop(left, None)
                    break
            if len(claimed) < wanted:
                self._wake.wait(self._poll)

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
