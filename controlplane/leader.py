"""Owns leader election: one replica leads singleton work, fenced by a term that grows with each new leader.

The lease is a database row (on SQLite as on PostgreSQL, so two processes on one file are
safe too). A leader renews it every third of the lease; one that cannot renew in time
steps down on its own clock before the lease expires for others. Every leader-only write
calls `fence()` in its transaction: a leader that was paused (GC, SIGSTOP, a slow disk)
and wakes after another took over finds a newer term and writes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, select, update

from controlplane.audit import audit
from controlplane.db.engine import write_transaction
from controlplane.db.tables import dialect_insert, leases_t

# Short enough that a new leader acts within ~10 s of the old one dying (it renews every 2 s).
LEADER_LEASE_SECONDS = 6.0
log = structlog.get_logger(__name__)


class StaleLeader(Exception):
    """This replica's term is over: another leader took over, so its leader-only write is refused."""


# LeaderElector.fence as leader work takes it: called first in the write, raises StaleLeader.
Fence = Callable[[Connection], object]


@dataclass(frozen=True)
class Leadership:
    holder: str
    term: int
    expires_at: datetime
    is_me: bool


def utcnow() -> datetime:
    return datetime.now(UTC)


def acquire_or_renew(conn: Connection, *, name: str, me: str, now: datetime, lease: timedelta) -> Leadership:
    """Renew our lease, or take an expired one (with a new term), or report who leads."""
    for _ in range(2):
        row = conn.execute(select(leases_t).where(leases_t.c.name == name).with_for_update()).first()
        if row is None:
            inserted = conn.execute(
                dialect_insert(conn, leases_t)
                .values(name=name, holder=me, term=1, acquired_at=now, renewed_at=now, expires_at=now + lease)
                .on_conflict_do_nothing(index_elements=["name"])
                .returning(leases_t.c.term)
            ).scalar()
            if inserted is None:
                continue  # another replica created it first: read it again
            return Leadership(me, 1, now + lease, True)
        if row.holder == me and row.expires_at > now:
            conn.execute(update(leases_t).where(leases_t.c.name == name).values(renewed_at=now, expires_at=now + lease))
            return Leadership(me, row.term, now + lease, True)
        if row.expires_at <= now:
            # Any lapse starts a new term, even for the same holder: it may have missed writes fenced by others.
            term = row.term + 1
            conn.execute(
                update(leases_t)
                .where(leases_t.c.name == name, leases_t.c.term == row.term)
                .values(holder=me, term=term, acquired_at=now, renewed_at=now, expires_at=now + lease)
            )
            return Leadership(me, term, now + lease, True)
        return Leadership(row.holder, row.term, row.expires_at, False)
    raise RuntimeError(f"could not read or create the lease {name!r}")


def fence(conn: Connection, *, name: str, term: int) -> None:
    """Refuse a leader-only write unless `term` is still the current one (call inside the write's transaction)."""
    query = select(leases_t.c.term).where(leases_t.c.name == name)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)  # a takeover waits for this transaction, or fails it
    current = conn.execute(query).scalar()
    if current != term:
        raise StaleLeader(f"leader term {term} is over (current: {current})")


class LeaderElector:
    """Keeps trying to lead; `is_leader` and `term` say where this replica stands right now."""

    def __init__(
        self,
        engine: Engine,
        *,
        instance_id: str,
        name: str = "controlplane",
        lease_seconds: float = 15.0,
        clock: Callable[[], datetime] = utcnow,
        on_change: Callable[[bool, int], None] | None = None,
    ) -> None:
        self._engine = engine
        self.name = name
        self.instance_id = instance_id
        self._lease = timedelta(seconds=lease_seconds)
        self._clock = clock
        self.on_change = on_change
        self._state: Leadership | None = None
        self._valid_until: datetime | None = None  # our own view: step down before others may take over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported = False  # what on_change last heard: a lapse by time is reported at the next tick

    @property
    def is_leader(self) -> bool:
        state, until = self._state, self._valid_until
        return bool(state and state.is_me and until and self._clock() < until)

    @property
    def term(self) -> int | None:
        return self._state.term if self.is_leader and self._state else None

    @property
    def leader(self) -> Leadership | None:
        return self._state

    def tick(self) -> bool:
        """One election round; returns whether this replica leads now."""
        was = self.is_leader
        started = self._clock()
        try:
            with write_transaction(self._engine) as conn:
                state = acquire_or_renew(conn, name=self.name, me=self.instance_id, now=started, lease=self._lease)
                if state.is_me and not (was and self._state and self._state.term == state.term):
                    audit(
                        conn,
                        actor=f"controlplane:{self.instance_id}",
                        action="leader.elected",
                        incident_id=None,
                        detail={"term": state.term, "lease": self.name},
                        now=started,
                    )
        except Exception as exc:
            log.warning("leader.tick_failed", error=str(exc).splitlines()[0])
            self._notify()
            return self.is_leader
        self._state = state
        # Measured from before the round trip, and a margin short of the lease, so we always
        # step down before another replica can see the lease as expired.
        self._valid_until = started + self._lease * 0.8 if state.is_me else None
        self._notify()
        return self.is_leader

    def fence(self, conn: Connection) -> int:
        """Inside a leader-only write: raise StaleLeader unless we still lead; returns the term."""
        term = self.term
        if term is None:
            raise StaleLeader(f"{self.instance_id} is not the leader")
        fence(conn, name=self.name, term=term)
        return term

    def start(self) -> None:
        self._stop.clear()
        self.tick()
        self._thread = threading.Thread(target=self._loop, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; a leader releases its lease so another replica takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if release and self.is_leader and self._state is not None:
            try:
                with write_transaction(self._engine) as conn:
                    conn.execute(
                        update(leases_t)
                        .where(
                            leases_t.c.name == self.name,
                            leases_t.c.holder == self.instance_id,
                            leases_t.c.term == self._state.term,
                        )
                        .values(expires_at=self._clock())
                    )
            except Exception as exc:
                log.warning("leader.release_failed", error=str(exc).splitlines()[0])
        self._state, self._valid_until = None, None
        self._notify()

    def _loop(self) -> None:
        interval = max(self._lease.total_seconds() / 3, 0.05)
        while not self._stop.wait(interval):
            self.tick()

    def _notify(self) -> None:
        now = self.is_leader
        if now != self._reported:
            self._reported = now
            log.info(
                "leader.changed", leader=now, term=self._state.term if self._state else None, instance=self.instance_id
            )
            if self.on_change is not None:
                try:
                    self.on_change(now, self._state.term if self._state else 0)
                except Exception:
                    log.exception("leader.on_change_failed")
