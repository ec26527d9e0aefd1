"""Owns the pages that tell a human automation failed: an execution that ended failed or rolled back, an
approval nobody gave in time, a rule its loop breaker stopped.

A page is written in the transaction that decided it (`record`), so it is never lost to a crash,
and sent afterwards by `Pager`, which runs on every replica: a page is claimed for a while before
it is sent (`claim_due`), so two replicas never send it together, and a sender that died holding
it leaves it to another once the claim runs out. Each page is sent once through `notify.escalate`
(routed like `notify.oncall`, by the incident's severity), whose idempotency key finds a page
already sent by a sender that died before marking it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import structlog
from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from controlplane.db.engine import write_transaction
from controlplane.db.tables import dialect_insert, pages_t

log = structlog.get_logger(__name__)

# approval_requested is not a failure: it asks for an approval, in Slack (playbooks/slack_approvals.py).
Kind = Literal["execution_failed", "approval_expired", "quarantined", "approval_requested"]
MAX_ATTEMPTS = 5  # claims of one page; a page that no sender got through by then is given up, and logged
CLAIM = timedelta(seconds=60)  # longer than one send with its retries (paging.py: 3 tries, a few seconds)


def record(
    conn: Connection,
    *,
    kind: Kind,
    execution_id: int,
    incident_id: int | None,
    rule: str,
    reason: str,
    now: datetime,
) -> None:
    """Queue a page in the caller's transaction; a second one of the same kind for the execution is ignored."""
    conn.execute(
        dialect_insert(conn, pages_t)
        .values(
            kind=kind,
            execution_id=execution_id,
            incident_id=incident_id,
            rule_name=rule,
            reason=reason[:4000],
            created_at=now,
            claimed_until=None,
            attempts=0,
            sent_at=None,
            outcome=None,
            error=None,
        )
        .on_conflict_do_nothing(index_elements=["kind", "execution_id"])
    )


@dataclass(frozen=True)
class DuePage:
    id: int
    kind: Kind
    execution_id: int
    incident_id: int | None
    rule: str
    reason: str
    attempts: int


@dataclass(frozen=True)
class Sent:
    """What became of one send: the route it took (pagerduty, slack, log) and whether it got there."""

    route: str
    delivered: bool
    error: str | None = None


_p = pages_t.c


def claim_due(conn: Connection, *, now: datetime, limit: int = 20) -> list[DuePage]:
    """Claim the oldest unsent pages that nobody holds, for CLAIM; each claim counts as an attempt."""
    due = and_(_p.sent_at.is_(None), or_(_p.claimed_until.is_(None), _p.claimed_until < now))
    query = select(_p.id).where(due).order_by(_p.id).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(conn.execute(query).scalars())
    if not ids:
        return []
    rows = conn.execute(
        update(pages_t)
        .where(_p.id.in_(ids), due)
        .values(claimed_until=now + CLAIM, attempts=_p.attempts + 1)
        .returning(_p.id, _p.kind, _p.execution_id, _p.incident_id, _p.rule_name, _p.reason, _p.attempts)
    ).all()
    return sorted(
        (DuePage(r.id, r.kind, r.execution_id, r.incident_id, r.rule_name, r.reason, r.attempts) for r in rows),
        key=lambda page: page.id,
    )


def mark(conn: Connection, page_id: int, *, now: datetime, outcome: str, error: str | None) -> None:
    conn.execute(
        update(pages_t).where(_p.id == page_id).values(sent_at=now, claimed_until=None, outcome=outcome, error=error)
    )


def release(conn: Connection, page_id: int, *, error: str) -> None:
    """A send that raised: another try after the claim runs out, unless this was the last."""
    conn.execute(update(pages_t).where(_p.id == page_id).values(error=error))


Send = Callable[[DuePage], Sent]


class Pager:
    """Sends the due pages every `poll_seconds`, and at once when woken; on every replica (claims keep them apart)."""

    def __init__(
        self,
        engine: Engine,
        *,
        send: Send,
        poll_seconds: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        counted: Callable[[str, str], None] = lambda _kind, _outcome: None,
    ) -> None:
        self._engine = engine
        self._send = send
        self._poll = poll_seconds
        self._clock = clock
        self._counted = counted
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="pager", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_once()
            except (OperationalError, InterfaceError) as exc:  # the database is down: once a poll, no trace
                log.warning("pager.database_unavailable", error=str(exc.orig or exc).splitlines()[0])
            except Exception:  # a bug: the next round tries again
                log.exception("pager.round_failed")
            self._wake.wait(self._poll)
            self._wake.clear()

    def run_once(self) -> int:
        """Send what is due now, in this thread; how many pages were sent (delivered or not)."""
        sent = 0
        while not self._stopping.is_set():
            with write_transaction(self._engine) as conn:
                due = claim_due(conn, now=self._clock())
            if not due:
                return sent
            for page in due:
                self._one(page)
                sent += 1
        return sent

    def _one(self, page: DuePage) -> None:
        try:
            result = self._send(page)
        except Exception as exc:  # a bug or the database: keep the page for another try, or give it up
            error = f"{type(exc).__name__}: {exc}"
            log.exception("page.send_crashed", page=page.id, kind=page.kind, execution_id=page.execution_id)
            with write_transaction(self._engine) as conn:
                if page.attempts >= MAX_ATTEMPTS:
                    mark(conn, page.id, now=self._clock(), outcome="not_delivered", error=error)
                    self._counted(page.kind, "not_delivered")
                else:
                    release(conn, page.id, error=error)
            return
        outcome = result.route if result.delivered else "not_delivered"
        with write_transaction(self._engine) as conn:
            mark(conn, page.id, now=self._clock(), outcome=outcome, error=result.error)
        self._counted(page.kind, outcome)
        if result.delivered:
            log.warning("page.sent", kind=page.kind, execution_id=page.execution_id, route=result.route)
        else:
            log.error("page.not_delivered", kind=page.kind, execution_id=page.execution_id, error=result.error)
