"""Owns what people do to an incident by hand: acknowledge, resolve, add a note. Audited; no HTTP here.

Ingest opens and resolves incidents from alerts; these are the operator's transitions. Each is a
conditional UPDATE, so two people (or a person and a resolving webhook) racing on one incident
leave exactly one winner, and the loser gets a Conflict that says what happened.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from controlplane.audit import audit
from controlplane.db.tables import incidents_t
from controlplane.errors import Conflict, InvalidInput, NotFound

NOTE_MAX_CHARS = 4000


def _status(conn: Connection, incident_id: int) -> str:
    status = conn.execute(select(incidents_t.c.status).where(incidents_t.c.id == incident_id)).scalar()
    if status is None:
        raise NotFound(f"incident {incident_id} not found")
    return str(status)


def acknowledge(*, conn: Connection, incident_id: int, actor: str, now: datetime) -> None:
    """open -> acknowledged: someone is on it. Alerts keep flowing in; the incident stays unresolved."""
    res = conn.execute(
        update(incidents_t)
        .where(incidents_t.c.id == incident_id, incidents_t.c.status == "open")
        .values(status="acknowledged", acknowledged_at=now, updated_at=now)
    )
    if res.rowcount != 1:
        raise Conflict(f"incident {incident_id} is {_status(conn, incident_id)}: only an open one can be acknowledged")
    audit(conn, actor=actor, action="incident.acknowledged", incident_id=incident_id, detail={}, now=now)


def resolve(*, conn: Connection, incident_id: int, actor: str, now: datetime, reason: str = "") -> None:
    """Resolve by hand. `open_key` goes NULL, so an alert that fires again for the key opens a new incident."""
    res = conn.execute(
        update(incidents_t)
        .where(incidents_t.c.id == incident_id, incidents_t.c.status != "resolved")
        .values(status="resolved", open_key=None, resolved_at=now, updated_at=now)
    )
    if res.rowcount != 1:
        _status(conn, incident_id)  # NotFound when it does not exist
        raise Conflict(f"incident {incident_id} is already resolved")
    audit(
        conn,
        actor=actor,
        action="incident.resolved",
        incident_id=incident_id,
        detail={"manual": True, "reason": reason},
        now=now,
    )


def add_note(*, conn: Connection, incident_id: int, actor: str, text: str, now: datetime) -> None:
    text = text.strip()
    if not text:
        raise InvalidInput("a note needs some text")
    if len(text) > NOTE_MAX_CHARS:
        raise InvalidInput(f"a note has at most {NOTE_MAX_CHARS} characters")
    _status(conn, incident_id)
    conn.execute(update(incidents_t).where(incidents_t.c.id == incident_id).values(updated_at=now))
    audit(conn, actor=actor, action="incident.note", incident_id=incident_id, detail={"text": text}, now=now)
