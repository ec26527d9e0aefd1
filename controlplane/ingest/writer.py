"""Owns group commit: writer threads commit concurrent webhooks' alerts in shared transactions.

Each webhook still waits for its own commit before it is answered, so nothing is
acknowledged that is not durable; what is shared is the fsync. There are two lanes, each one
thread batching what arrived while it committed: express for groups that sent few alerts
lately, bulk for the rest (lanes.py), so a page from a quiet service does not queue behind a
storm's batches. On SQLite the lanes still take turns at the database's one write lock, but
express work no longer waits behind the bulk work queued before it.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from controlplane.db.engine import write_transaction
from controlplane.errors import Unavailable
from controlplane.incidents.grouping import OpenIncidents
from controlplane.incidents.keys import incident_key
from controlplane.ingest.lanes import LANES, Lane, LaneRouter
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import IngestResult, ingest_notifications
from controlplane.telemetry import Metrics

log = structlog.get_logger(__name__)

PROBE_SECONDS = 0.5  # how often a down database is tried again
# Incident keys' lock ids on PostgreSQL: 2**48 plus 48 bits of a digest, so they meet neither
# lock_rule()'s 32-bit keys nor the migration lock.
_INCIDENT_LOCK_BASE = 2**48
# One statement takes them all, in the order given (unnest yields its array in order).
_LOCK_IN_ORDER = text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")
_CONFLICT_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock: retry the transaction


F = TypeVar("F")


class IngestHook(Protocol[F]):
    """What runs around each group-commit transaction (flows.AlertFlows is the service's)."""

    def in_transaction(self, conn: Connection, new_alert_ids: list[int]) -> F:
        """Once a batch that stored new alerts, inside its transaction, after every incident lock: it creates
        their executions, so an acknowledged alert never lacks them (its own locks come last, in one order)."""
        ...

    def committed(self, results: Sequence[IngestResult], followups: F | None) -> None:
        """Once the batch is committed, with what `in_transaction` returned (None when it did not run)."""
        ...


@dataclass
class _Job:
    notification: AlertmanagerNotification
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[IngestResult]
    enqueued: float = field(default_factory=time.perf_counter)


def incident_lock_ids(notifications: Sequence[AlertmanagerNotification], group_by: Sequence[str]) -> list[int]:
    """The lock ids of the incident keys a batch touches, sorted: the order every transaction takes them in.

    Replicas of an HA Alertmanager pair get the same alerts in different orders. Taking row locks
    as the alerts came made their transactions lock the same incidents in opposite orders and
    deadlock (each costing PostgreSQL's deadlock_timeout). Locking every key up front in one
    order cannot deadlock, and batches of different incidents still commit side by side.
    The rule locks come after (trigger_for_alerts takes them in name order), so the order holds.
    """
    keys = {incident_key(alert.labels, group_by) for n in notifications for alert in n.alerts}
    return sorted(
        _INCIDENT_LOCK_BASE + int.from_bytes(hashlib.blake2b(key.encode(), digest_size=6).digest(), "big")
        for key in keys
    )


def _is_conflict(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in _CONFLICT_SQLSTATES


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError) and not _is_conflict(exc)


class IngestWriter:
    """Runs ingest transactions on one thread, batching whatever arrived while the last one committed."""

    def __init__(
        self,
        engine: Engine,
        *,
        group_by: Sequence[str],
        metrics: Metrics,
        max_batch: int = 256,
        commit_timeout: float = 5.0,
        hook: IngestHook[Any] | None = None,
        router: LaneRouter | None = None,
    ) -> None:
        self._engine = engine
        self._group_by = list(group_by)
        self._metrics = metrics
        self._max_batch = max_batch
        self._commit_timeout = commit_timeout
        self._hook = hook
        self._router = router or LaneRouter()
        self._queues: dict[Lane, queue.SimpleQueue[_Job | None]] = {lane: queue.SimpleQueue() for lane in LANES}
        self._threads: list[threading.Thread] = []
        self._accepting = False
        # Set while the database is known to be down: webhooks get their 503 at once instead of
        # waiting out a connect timeout each; the writer thread probes until it answers again.
        self._down_since: float | None = None

    def start(self) -> None:
        self._accepting = True
        self._threads = [
            threading.Thread(target=self._run, args=(self._queues[lane],), name=f"ingest-{lane}", daemon=True)
            for lane in LANES
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work, commit what is queued, and join the threads."""
        self._accepting = False
        for lane_queue in self._queues.values():
            lane_queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    async def submit(self, notification: AlertmanagerNotification) -> IngestResult:
        """Queue a notification and wait until it is committed (or raise Unavailable)."""
        if not self._accepting:
            raise Unavailable("shutting down")
        if self._down_since is not None:
            raise Unavailable("database unavailable: retry later")
        loop = asyncio.get_running_loop()
        lane = self._router.route(notification.groupKey, len(notification.alerts))
        self._metrics.ingest_lane.labels(lane).inc()
        job = _Job(notification, loop, loop.create_future())
        self._queues[lane].put(job)
        try:
            return await asyncio.wait_for(job.future, self._commit_timeout)
        except TimeoutError:
            raise Unavailable(f"not committed within {self._commit_timeout:g}s") from None

    @property
    def database_down(self) -> bool:
        return self._down_since is not None

    def _run(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        while True:
            if self._down_since is not None:
                try:
                    job = jobs.get(timeout=PROBE_SECONDS)
                except queue.Empty:
                    self._probe()
                    continue
            else:
                job = jobs.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    more = jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        for attempt in range(3):
            try:
                followups: Any = None
                results: list[IngestResult] = []
                with write_transaction(self._engine) as conn:
                    if conn.dialect.name == "postgresql":
                        keys = incident_lock_ids([job.notification for job in batch], self._group_by)
                        conn.execute(_LOCK_IN_ORDER, {"keys": keys})
                    open_incidents = OpenIncidents()  # valid for this transaction only
                    notifications = [job.notification for job in batch]
                    results = ingest_notifications(
                        conn, notifications, group_by=self._group_by, open_incidents=open_incidents
                    )
                    new_alert_ids = [i for r in results for i in r.new_alert_ids]
                    if self._hook is not None and new_alert_ids:
                        # Once for the batch, after every incident lock: rule locks come last, in one order.
                        followups = self._hook.in_transaction(conn, new_alert_ids)
            except Exception as exc:
                if _is_conflict(exc) and attempt < 2:
                    continue
                self._fail(batch, exc)
                return
            self._metrics.ingest_batch_size.observe(len(batch))
            if self._hook is not None:
                try:
                    self._hook.committed(results, followups)
                except Exception:  # the alerts are committed; a failing hook must not turn that into a 5xx
                    log.exception("ingest.after_commit_failed")
            for job, result in zip(batch, results, strict=True):
                self._deliver(job, result)
            return

    def _probe(self) -> None:
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return
        log.info("ingest.database_back", down_seconds=round(time.monotonic() - (self._down_since or 0), 1))
        self._down_since = None

    def _fail(self, batch: list[_Job], exc: Exception) -> None:
        if _is_unavailable(exc):
            if self._down_since is None:
                self._down_since = time.monotonic()
            log.warning("ingest.database_unavailable", error=str(exc).splitlines()[0], batch=len(batch))
            for job in batch:
                self._deliver(job, Unavailable("database unavailable: retry later"))
        elif len(batch) > 1:
            # One notification the database refuses must not fail the others: commit each alone.
            for job in batch:
                self._commit([job])
        else:
            log.error("ingest.failed", exc_info=exc)
            self._deliver(batch[0], exc)

    def _deliver(self, job: _Job, outcome: IngestResult | Exception) -> None:
        self._router.done(job.notification.groupKey)  # committed or failed: the group may change lanes
        self._metrics.ingest_duration.observe(time.perf_counter() - job.enqueued)

        def settle() -> None:
            if job.future.done():  # the webhook gave up waiting (timeout) already
                return
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

        job.loop.call_soon_threadsafe(settle)
