"""Owns grouping alerts into incidents: the open incident of an alert's key, opened if there is none, and
resolving an incident once none of its alerts fires.

Called by ingest inside its transaction. On PostgreSQL the caller has already taken the advisory
locks of the batch's incident keys in one order (ingest/writer.py); the row locks here come after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, select, update

from controlplane.audit import PendingAudits
from controlplane.db.tables import alerts_t, incidents_t, links_t
from controlplane.incidents.keys import incident_key
from controlplane.incidents.state import open_incident, transition

SEVERITY_RANK = {"none": 0, "info": 1, "warning": 2, "error": 3, "high": 3, "critical": 4, "page": 4}


def severity_rank(severity: str) -> int:
    return SEVERITY_RANK.get(severity.lower(), 1)


class OpenIncidents(dict[str, tuple[int, str]]):
    """Open incidents this transaction already locked, by key: (id, severity).

    One group-commit transaction often holds many alerts of one incident; after the first,
    the row is ours until commit, so reading and touching it again would only cost time.
    Valid for one transaction only.
    """

    def forget(self, incident_id: int) -> None:
        for key in [k for k, (i, _) in self.items() if i == incident_id]:
            del self[key]


# Built once: every ingest batch runs them, once per incident it touches.
_OPEN_INCIDENT = (
    select(incidents_t.c.id, incidents_t.c.severity).where(incidents_t.c.open_key == bindparam("key")).with_for_update()
)
_TOUCH_INCIDENT = (
    update(incidents_t)
    .where(incidents_t.c.id == bindparam("incident_id"))
    .values(updated_at=bindparam("now"), severity=bindparam("raised_severity"))
)


def incident_for_alert(
    conn: Connection,
    *,
    labels: Mapping[str, str],
    title: str,
    group_by: Sequence[str],
    actor: str,
    now: datetime,
    cache: OpenIncidents,
    pending: PendingAudits,
) -> tuple[int, bool]:
    """The unresolved incident for the alert's key, opened if there is none. Returns (id, opened).

    `title` names an incident this alert opens (the key when empty); a more severe alert raises
    the incident's severity.
    """
    key = incident_key(labels, group_by)
    severity = labels.get("severity", "none")
    cached = cache.get(key)
    if cached is not None:
        cached_id, known_severity = cached
        if severity_rank(severity) > severity_rank(known_severity):
            conn.execute(update(incidents_t).where(incidents_t.c.id == cached_id).values(severity=severity))
            cache[key] = (cached_id, severity)
        return cached_id, False
    for _ in range(3):
        # FOR UPDATE (PostgreSQL) serialises with a concurrent resolve of the same incident.
        row = conn.execute(_OPEN_INCIDENT, {"key": key}).first()
        if row is not None:
            known = row.severity if severity_rank(severity) <= severity_rank(row.severity) else severity
            conn.execute(_TOUCH_INCIDENT, {"incident_id": row.id, "raised_severity": known, "now": now})
            cache[key] = (row.id, known)
            return row.id, False
        group_labels = {name: labels[name] for name in group_by if name in labels}
        opened = open_incident(
            conn,
            key=key,
            severity=severity,
            title=title or key,
            group_labels=group_labels,
            actor=actor,
            now=now,
            pending=pending,
        )
        if opened is not None:
            cache[key] = (opened, severity)
            return opened, True
    raise RuntimeError(f"could not open or find the incident for key {key}")


def resolve_if_clear(conn: Connection, incident_id: int, *, actor: str, now: datetime, cache: OpenIncidents) -> bool:
    """Resolve the incident if none of its alerts fires any more; True if this call resolved it.

    Counts the incident's links: the caller must have written them all (flushed) first.
    """
    conn.execute(select(incidents_t.c.id).where(incidents_t.c.id == incident_id).with_for_update()).first()
    firing = conn.execute(
        select(func.count())
        .select_from(links_t.join(alerts_t, links_t.c.alert_id == alerts_t.c.id))
        .where(links_t.c.incident_id == incident_id, alerts_t.c.status == "firing")
    ).scalar_one()
    if firing:
        return False
    if not transition(conn, incident_id, "resolved", actor=actor, now=now, detail={"reason": "all alerts resolved"}):
        return False
    cache.forget(incident_id)  # a new firing alert with its key opens a new incident
    return True
