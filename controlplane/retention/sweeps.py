"""Owns running retention on the leader: a round every interval deletes what `prune` says may go, in
small transactions paced so ingest keeps its share of the database, then gives SQLite its space back.

A batch is one write transaction, fenced by the leader's term: a replica that lost the lease deletes
nothing. After each batch the round sleeps four times as long as the batch took, so pruning holds the
write lock at most a fifth of the time even in a backlog of millions of rows. With an archive directory, each
batch's rows are appended there before its deletes commit; a write that fails deletes nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from controlplane.db.engine import write_transaction
from controlplane.interval_jobs import IntervalJobs
from controlplane.leader import StaleLeader
from controlplane.retention import archive, prune
from controlplane.retention.prune import Cutoffs, Deleted, Policy
from controlplane.rules.schema import Rule

log = structlog.get_logger(__name__)

JOB_PREFIX = "retention:"
INCIDENTS_PER_BATCH = 50  # incidents taken at a time; their alerts, runs and audit rows go in batches of their own
VACUUM_PAGES = 1024  # SQLite pages (4 KiB) given back per transaction
# After each batch the round waits this many times as long as the batch took: pruning holds the write
# lock at most a fifth of the time, so ingest keeps most of it (at a half, ingest fell to 0.4x on SQLite).
PAUSE_FACTOR = 4
Fence = Callable[[Connection], object]
T = TypeVar("T")


class _Stopped(Exception):
    """The service is stopping, or this replica no longer leads: the round ends where it is."""


@dataclass(frozen=True)
class Round:
    """What one round deleted, per table, and how long it took."""

    deleted: Counter[str]
    seconds: float
    vacuumed_pages: int = 0


class RetentionSweeps:
    """Runs `sweep_now` every `interval_seconds` on the leader; followers skip the round."""

    def __init__(
        self,
        engine: Engine,
        *,
        policy: Policy,
        rules: Callable[[], list[Rule]],
        is_leader: Callable[[], bool],
        fence: Fence,
        counted: Callable[[str, int], None],
        failed: Callable[[], None],
        batch_rows: int = 500,
        archive_dir: Path | None = None,
        interval_seconds: float = 600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._policy = policy
        self._rules = rules
        self._is_leader = is_leader
        self._fence = fence
        self._counted = counted
        self._failed = failed
        self._batch = batch_rows
        self._archive_dir = archive_dir
        self._clock = clock
        self._interval = timedelta(seconds=interval_seconds)
        self._stopping = threading.Event()
        self._warned_no_vacuum = False
        self._alert_audits_after: tuple[datetime, int] | None = None  # (at, id) of the last alert.* row deleted
        self._jobs = IntervalJobs(lambda _name: self.sweep_now(), prefix=JOB_PREFIX)

    def start(self) -> None:
        self._stopping.clear()
        self._jobs.sync({"prune": self._interval})
        self._jobs.start()

    def shutdown(self, wait: bool = True) -> None:
        self._stopping.set()
        self._jobs.shutdown(wait=wait)

    def sweep_now(self) -> Round | None:
        """One round; None when this replica does not lead or the round failed (logged and counted)."""
        if not self._is_leader():
            return None
        started = time.monotonic()
        now = self._clock()
        cut = Cutoffs.at(now, self._policy, prune.guard_window(self._rules()))
        deleted: Counter[str] = Counter()
        try:
            if self._archive_dir is not None:
                archive.check_directory(self._archive_dir)
            self._prune(cut, now, deleted)
            vacuumed = self._give_space_back() if deleted else 0
        except _Stopped:
            vacuumed = 0
        except StaleLeader as exc:
            log.info("retention.skipped_not_leader", reason=str(exc))
            vacuumed = 0
        except (OperationalError, InterfaceError) as exc:  # the database is down: the next round goes on
            error = str(exc.orig or exc).splitlines()[0]
            log.warning("retention.database_unavailable", error=error, pruned_before=dict(deleted))
            self._failed()
            return None
        except OSError as exc:
            # The batch whose rows could not be archived deleted nothing; the ones before it were archived.
            log.error(
                "retention.archive_failed",
                directory=str(self._archive_dir),
                error=str(exc),
                pruned_before=dict(deleted),
            )
            self._failed()
            return None
        except Exception:  # the schedule outlives any one round
            log.exception("retention.round_crashed", pruned_before=dict(deleted))
            self._failed()
            return None
        finished = Round(deleted, time.monotonic() - started, vacuumed)
        if deleted:
            log.info(
                "retention.pruned",
                rows=dict(deleted),
                seconds=round(finished.seconds, 2),
                vacuumed_pages=vacuumed,
                incidents_before=cut.incidents.isoformat(),
                archived_to=str(self._archive_dir) if self._archive_dir else None,
            )
        return finished

    def _prune(self, cut: Cutoffs, now: datetime, deleted: Counter[str]) -> None:
        limit = self._batch
        suppressed = partial(prune.suppressed_executions, cut=cut.suppressed, history_cut=cut.incidents, limit=limit)
        self._until_none(suppressed, now, deleted)
        after = None
        while True:
            with self._engine.connect() as conn:
                found = prune.next_incidents(conn, cut.incidents, after, INCIDENTS_PER_BATCH)
            if not found:
                break
            after = (found[-1].resolved_at, found[-1].id)
            ids = [row.id for row in found]
            self._until_none(partial(prune.executions_of, incidents=ids, cut=cut.incidents, limit=limit), now, deleted)
            self._until_none(partial(prune.alerts_of, incidents=ids, limit=limit), now, deleted)
            self._until_none(partial(prune.audits_of, incidents=ids, limit=limit), now, deleted)
            self._once(partial(prune.incidents, ids=ids, cut=cut.incidents), now, deleted)
        while True:  # from where the last round left off: rows an open incident kept are not walked again
            step = partial(prune.alert_audits, cut=cut.alert_audit, after=self._alert_audits_after, limit=limit)
            cursor = self._once(step, now, deleted)
            if cursor is None:
                break
            self._alert_audits_after = cursor
        self._until_none(partial(prune.history, cut=cut.incidents, limit=limit), now, deleted)

    def _until_none(self, step: Callable[[Connection, Deleted], int], now: datetime, deleted: Counter[str]) -> None:
        while self._once(step, now, deleted):
            pass

    def _once(self, step: Callable[[Connection, Deleted], T], now: datetime, deleted: Counter[str]) -> T:
        """One batch in one fenced transaction, archived before it commits; then a pause as long as it took."""
        if self._stopping.is_set() or not self._is_leader():
            raise _Stopped
        started = time.monotonic()
        batch = Deleted(keep_rows=self._archive_dir is not None)
        with write_transaction(self._engine) as conn:
            self._fence(conn)
            result = step(conn, batch)
            if self._archive_dir is not None and batch.total:
                archive.append(self._archive_dir, batch.rows, now)
        for table, rows in batch.counts.items():
            if rows:
                deleted[table] += rows
                self._counted(table, rows)
        if batch.total:
            self._stopping.wait(PAUSE_FACTOR * (time.monotonic() - started))
        return result

    def _give_space_back(self) -> int:
        """SQLite: free pages back to the file system, a few MiB per transaction (PostgreSQL: autovacuum)."""
        if self._engine.dialect.name != "sqlite":
            return 0
        with self._engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
        if mode != 2:  # a database made before incremental vacuum: freed pages are reused, never returned
            if not self._warned_no_vacuum:
                log.warning(
                    "retention.sqlite_space_kept",
                    free_pages=free,
                    hint="run `controlplane vacuum` once with the service stopped: the file then shrinks as rows go",
                )
                self._warned_no_vacuum = True
            return 0
        vacuumed = 0
        while free > 0:
            if self._stopping.is_set():
                break
            started = time.monotonic()
            with write_transaction(self._engine) as conn:
                # The sqlite3 module steps a statement once, and each step of this pragma frees one page:
                # `incremental_vacuum(N)` through execute() freed one, and executescript() would commit first.
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                try:
                    for _ in range(min(free, VACUUM_PAGES)):
                        cursor.execute("PRAGMA incremental_vacuum")
                finally:
                    cursor.close()  # its statement, stepped once, would keep the commit from happening
                left = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
            vacuumed += free - left
            if left >= free:
                break
            free = left
            self._stopping.wait(PAUSE_FACTOR * (time.monotonic() - started))
        return vacuumed
