"""Owns the incident state machine: an incident opens for a key, and every status change goes through `transition()`.

open -> acknowledged -> resolved, or open -> resolved. Both are conditional writes, so two actors
racing on one incident (two people, a person and a resolving webhook, two replicas) leave exactly
one winner, and each change is audited once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, update

from controlplane.audit import PendingAudits, audit
from controlplane.db.tables import dialect_insert, incidents_t

Status = Literal["open", "acknowledged", "resolved"]

# to-state -> the states it may be entered from ("open" is entered only by open_incident)
_ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "acknowledged": ("open",),
    "resolved": ("open", "acknowledged"),
}


def open_incident(
    conn: Connection,
    *,
    key: str,
    severity: str,
    title: str,
    group_labels: dict[str, str],
    actor: str,
    now: datetime,
    pending: PendingAudits | None = None,
) -> int | None:
    """A new open incident for `key`; None when one is open for the key already (another transaction won).

    `open_key` is unique: it holds the key while the incident is unresolved, so a key has at
    most one open incident, and NULL after, so the key's next episode opens a new one.
    """
    incident_id: int | None = conn.execute(
        dialect_insert(conn, incidents_t)
        .values(
            key=key,
            open_key=key,
            status="open",
            severity=severity,
            title=title,
            group_labels=group_labels,
            opened_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["open_key"])
        .returning(incidents_t.c.id)
    ).scalar()
    if incident_id is not None:
        audit(
            conn,
            actor=actor,
            action="incident.opened",
            incident_id=incident_id,
            detail={"key": key, "severity": severity, "title": title},
            now=now,
            pending=pending,
        )
    return incident_id


def transition(
    conn: Connection,
    incident_id: int,
    to: Status,
    *,
    actor: str,
    now: datetime,
    detail: dict[str, Any] | None = None,
    pending: PendingAudits | None = None,
) -> bool:
    """Move the incident to `to` if it is in a state that allows it, and audit `incident.<to>`.

    Returns False when it is not (already resolved, not open, or no such incident): the caller
    lost the race or asked for something the incident's state refuses.
    """
    sources = _ALLOWED_FROM.get(to)
    if sources is None:
        raise ValueError(f"no transition into {to!r}")
    changes: dict[str, Any] = {"status": to, "updated_at": now}
    if to == "acknowledged":
        changes["acknowledged_at"] = now
    elif to == "resolved":
        changes.update(open_key=None, resolved_at=now)  # the key is free for its next episode
    stmt = update(incidents_t).where(incidents_t.c.id == incident_id, incidents_t.c.status.in_(sources))
    if conn.execute(stmt.values(**changes)).rowcount != 1:
        return False
    audit(
        conn,
        actor=actor,
        action=f"incident.{to}",
        incident_id=incident_id,
        detail=detail or {},
        now=now,
        pending=pending,
    )
    return True
