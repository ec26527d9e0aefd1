"""Owns the silences the control plane creates in Alertmanager: creating them (for a playbook step or a person),
recording them, expiring them, and expiring an incident's when it resolves.

Every silence is recorded in the `silences` table with the Alertmanager it went to, so a rollback
or the incident's resolution can expire it there even after the settings change. Network calls
run outside any transaction: a slow Alertmanager holds no database lock.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, select, update

from controlplane.audit import audit
from controlplane.config import Settings
from controlplane.db.engine import write_transaction
from controlplane.db.tables import dialect_insert, silences_t
from controlplane.durations import format_duration
from controlplane.errors import InvalidInput, Unavailable
from controlplane.incidents import service as incidents
from controlplane.integrations.alertmanager import CREATED_BY, AlertmanagerClient, AlertmanagerError, equality_matchers
from controlplane.silences.schemas import SilenceOut

log = structlog.get_logger(__name__)

MAX_SILENCE = timedelta(days=7)  # the longest a playbook step may silence for
# What the console offers (within a step's 7 days); anything else is refused, not rounded.
DURATIONS: dict[str, timedelta] = {
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "12h": timedelta(hours=12),
    "1d": timedelta(days=1),
    "3d": timedelta(days=3),
}


def _record(
    conn: Connection,
    *,
    silence_id: str,
    alertmanager_url: str,
    matchers: dict[str, str],
    created_by: str,
    incident_id: int | None,
    execution_id: int | None,
    now: datetime,
    ends_at: datetime,
) -> None:
    conn.execute(
        dialect_insert(conn, silences_t)
        .values(
            silence_id=silence_id,
            incident_id=incident_id,
            execution_id=execution_id,
            alertmanager_url=alertmanager_url,
            matchers=matchers,
            created_by=created_by,
            created_at=now,
            ends_at=ends_at,
            expired_at=None,
        )
        .on_conflict_do_nothing(index_elements=["silence_id"])
    )


@dataclass(frozen=True)
class Silences:
    """The silences a playbook step makes and lifts, on the service's database and Alertmanager
    (the `SilencesPort` of actions/ports.py)."""

    engine: Engine
    alertmanager_url: str

    def for_step(
        self,
        *,
        matchers: dict[str, str],
        now: datetime,
        ends_at: datetime,
        comment: str,
        marker: str,
        rule: str,
        incident_id: int | None,
        execution_id: int,
    ) -> str:
        """Silence `matchers` until `ends_at` for a playbook step and record it; the silence id.

        `marker`, unique to the step and part of `comment`, finds a silence an earlier try of the
        step created but did not record, so a retried step reuses it. Raises AlertmanagerError.
        """
        client = AlertmanagerClient(self.alertmanager_url)
        earlier = [
            s
            for s in client.list_silences()
            if s.created_by == CREATED_BY and marker in s.comment and s.state != "expired"
        ]
        if earlier:
            silence_id = earlier[0].id
        else:
            silence_id = client.create_silence(
                matchers=equality_matchers(matchers), starts_at=now, ends_at=ends_at, comment=comment
            )
        with write_transaction(self.engine) as conn:
            _record(
                conn,
                silence_id=silence_id,
                alertmanager_url=client.url,
                matchers=matchers,
                created_by=f"rule:{rule}",
                incident_id=incident_id,
                execution_id=execution_id,
                now=now,
                ends_at=ends_at,
            )
        return silence_id

    def expire(self, silence_id: str, *, now: datetime) -> bool:
        """Expire one silence where it was created (this Alertmanager for one not recorded); True if
        Alertmanager still knew it. Already expired or unknown counts as done. Raises AlertmanagerError."""
        with self.engine.connect() as conn:
            url = conn.execute(
                select(silences_t.c.alertmanager_url).where(silences_t.c.silence_id == silence_id)
            ).scalar()
        known = AlertmanagerClient(url or self.alertmanager_url).expire(silence_id)
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(silences_t)
                .where(silences_t.c.silence_id == silence_id, silences_t.c.expired_at.is_(None))
                .values(expired_at=now)
            )
        return known

    def firing(self, matchers: dict[str, str]) -> int:
        """How many firing, unsilenced alerts the matchers match in Alertmanager (a plan's read only)."""
        return len(AlertmanagerClient(self.alertmanager_url).firing_alerts(matchers))


def silence_incident(
    *, engine: Engine, alertmanager_url: str, incident_id: int, duration: str, comment: str, actor: str, now: datetime
) -> str:
    """A person silences the incident's alerts (equality on its non-empty group labels) until now + duration.

    Recorded like a step's silence, so resolving the incident expires it too: a person's silence
    must not hide the next episode either. Audited as `incident.silenced`; the silence id.
    """
    length = DURATIONS.get(duration)
    if length is None:
        raise InvalidInput(f"duration must be one of {', '.join(DURATIONS)}")
    with engine.connect() as conn:
        incident = incidents.incident_row(conn=conn, incident_id=incident_id)
    labels = {name: value for name, value in incident["group_labels"].items() if value}
    if not labels:
        # Matchers that all match the empty string would mute every alert Alertmanager has.
        raise InvalidInput("this incident has no group label values to silence on")
    text = comment.strip() or f"Silenced from the controlplane console: incident #{incident_id} {incident['title']}"
    client = AlertmanagerClient(alertmanager_url)
    ends_at = now + length
    try:
        silence_id = client.create_silence(
            matchers=equality_matchers(labels), starts_at=now, ends_at=ends_at, comment=text[:2000], created_by=actor
        )
    except AlertmanagerError as exc:
        if exc.retriable:
            raise Unavailable(f"Alertmanager did not take the silence: {exc}") from None
        raise InvalidInput(f"Alertmanager refused the silence: {exc}") from None
    with write_transaction(engine) as conn:
        _record(
            conn,
            silence_id=silence_id,
            alertmanager_url=client.url,
            matchers=labels,
            created_by=actor,
            incident_id=incident_id,
            execution_id=None,
            now=now,
            ends_at=ends_at,
        )
        audit(
            conn,
            actor=actor,
            action="incident.silenced",
            incident_id=incident_id,
            detail={
                "silence_id": silence_id,
                "matchers": labels,
                "duration": format_duration(length),
                "ends_at": ends_at.isoformat(),
                "comment": text,
            },
            now=now,
        )
    return silence_id


def expire_silences_for_incident(
    engine: Engine, settings: Settings, incident_id: int, actor: str, *, now: datetime | None = None
) -> int:
    """Expire every silence the control plane created for the incident that may still mute; returns how many.

    For when the incident resolves: its silences must not hide the next episode. Makes network
    calls, so run it after the resolving transaction commits, off the webhook's request path.
    Never raises for one silence: a failure is audited (`silence.expire_failed`) and the rest go on.
    """
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        rows = conn.execute(
            select(silences_t.c.silence_id, silences_t.c.execution_id).where(
                silences_t.c.incident_id == incident_id,
                silences_t.c.expired_at.is_(None),
                silences_t.c.ends_at > now,
            )
        ).all()
    expired = 0
    for row in rows:
        detail: dict[str, Any] = {"silence_id": row.silence_id, "reason": "incident resolved"}
        try:
            Silences(engine, settings.alertmanager_url).expire(row.silence_id, now=now)
            what = "silence.expired"
            expired += 1
        except AlertmanagerError as exc:
            what = "silence.expire_failed"
            detail["error"] = str(exc)
            log.error("silence.expire_failed", incident_id=incident_id, silence_id=row.silence_id, error=str(exc))
        with write_transaction(engine) as conn:
            audit(
                conn,
                actor=actor,
                action=what,
                incident_id=incident_id,
                execution_id=row.execution_id,
                detail=detail,
                now=now,
            )
    return expired


class ExpiryOnResolve:
    """Expires the silences of resolved incidents on a thread of its own, off the webhook's path (HTTP calls).

    One thread: expiring silences must not wait behind action calls, nor they behind it, and at
    most one Alertmanager call runs at a time. Each queued item is an incident id.
    """

    ACTOR = "controlplane:resolve"

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="silence-expiry")

    def submit(self, incident_id: int) -> None:
        self._pool.submit(expire_silences_for_incident, self._engine, self._settings, incident_id, self.ACTOR)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def of_incident(*, conn: Connection, incident_id: int) -> list[SilenceOut]:
    """The incident's silences, newest first (the console shows them beside the incident)."""
    columns = [silences_t.c[name] for name in SilenceOut.model_fields]
    query = select(*columns).where(silences_t.c.incident_id == incident_id).order_by(silences_t.c.id.desc())
    return [SilenceOut.model_validate(dict(row)) for row in conn.execute(query).mappings()]
