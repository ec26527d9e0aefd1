"""Owns reading incidents and alerts: newest first, keyset-paginated, no HTTP here."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Connection, case, func, select

from controlplane.errors import NotFound
from controlplane.incidents.schemas import (
    AlertOut,
    AlertPage,
    AuditEventOut,
    IncidentDetail,
    IncidentOut,
    IncidentPage,
)
from controlplane.ingest.store import alerts_t, audit_t, incidents_t, links_t

_ALERT_COLUMNS = [alerts_t.c[name] for name in AlertOut.model_fields]
_INCIDENT_COLUMNS = [incidents_t.c[name] for name in IncidentOut.model_fields if name in incidents_t.c]


def alert_counts(conn: Connection, incident_ids: Sequence[int]) -> defaultdict[int, tuple[int, int]]:
    """(firing, total) alerts per incident; (0, 0) for an incident without alerts."""
    counts: defaultdict[int, tuple[int, int]] = defaultdict(lambda: (0, 0))
    if not incident_ids:
        return counts
    rows = conn.execute(
        select(
            links_t.c.incident_id,
            func.count().label("total"),
            func.sum(case((alerts_t.c.status == "firing", 1), else_=0)).label("firing"),
        )
        .select_from(links_t.join(alerts_t, links_t.c.alert_id == alerts_t.c.id))
        .where(links_t.c.incident_id.in_(incident_ids))
        .group_by(links_t.c.incident_id)
    )
    for r in rows:
        counts[r.incident_id] = (int(r.firing or 0), int(r.total))
    return counts


def list_incidents(
    *,
    conn: Connection,
    statuses: Sequence[str] = (),
    severity: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> IncidentPage:
    query = select(*_INCIDENT_COLUMNS).order_by(incidents_t.c.id.desc()).limit(limit + 1)
    if statuses:
        query = query.where(incidents_t.c.status.in_(statuses))
    if severity:
        query = query.where(incidents_t.c.severity == severity)
    if before is not None:
        query = query.where(incidents_t.c.id < before)
    rows = conn.execute(query).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    counts = alert_counts(conn, [r["id"] for r in rows])
    items = [
        IncidentOut(**r, alerts_firing=counts.get(r["id"], (0, 0))[0], alerts_total=counts.get(r["id"], (0, 0))[1])
        for r in rows
    ]
    return IncidentPage(items=items, next_cursor=items[-1].id if more else None)


def get_incident(*, conn: Connection, incident_id: int) -> IncidentDetail:
    row = conn.execute(select(*_INCIDENT_COLUMNS).where(incidents_t.c.id == incident_id)).mappings().first()
    if row is None:
        raise NotFound(f"incident {incident_id} not found")
    alerts = [
        AlertOut(**r)
        for r in conn.execute(
            select(*_ALERT_COLUMNS)
            .join(links_t, links_t.c.alert_id == alerts_t.c.id)
            .where(links_t.c.incident_id == incident_id)
            .order_by(alerts_t.c.id)
        ).mappings()
    ]
    timeline = [
        AuditEventOut(**r)
        for r in conn.execute(
            select(audit_t).where(audit_t.c.incident_id == incident_id).order_by(audit_t.c.id)
        ).mappings()
    ]
    firing = sum(1 for a in alerts if a.status == "firing")
    return IncidentDetail(**row, alerts_firing=firing, alerts_total=len(alerts), alerts=alerts, timeline=timeline)


def list_alerts(
    *,
    conn: Connection,
    status: str | None = None,
    alertname: str | None = None,
    fingerprint: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> AlertPage:
    query = select(*_ALERT_COLUMNS).order_by(alerts_t.c.id.desc()).limit(limit + 1)
    if status:
        query = query.where(alerts_t.c.status == status)
    if alertname:
        query = query.where(alerts_t.c.alertname == alertname)
    if fingerprint:
        query = query.where(alerts_t.c.fingerprint == fingerprint)
    if before is not None:
        query = query.where(alerts_t.c.id < before)
    rows = conn.execute(query).mappings().all()
    items = [AlertOut(**r) for r in rows[:limit]]
    return AlertPage(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


def count_open_incidents(*, conn: Connection) -> int:
    return conn.execute(select(func.count(incidents_t.c.open_key))).scalar_one()
