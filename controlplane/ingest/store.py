"""Owns what one notification does to the database: dedup alert episodes, audit them, and hand them to incidents.

Grouping into incidents and resolving them is the incidents domain's (incidents/grouping.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from controlplane.audit import PendingAudits, audit
from controlplane.db.tables import alerts_t, links_t
from controlplane.incidents.grouping import OpenIncidents, incident_for_alert, resolve_if_clear
from controlplane.ingest.payload import AlertmanagerAlert, AlertmanagerNotification


@dataclass
class IngestResult:
    """What a notification changed; duplicates change nothing but their receive count."""

    new_alert_ids: list[int] = field(default_factory=list)
    resolved_alert_ids: list[int] = field(default_factory=list)
    duplicates: int = 0
    opened_incident_ids: list[int] = field(default_factory=list)
    resolved_incident_ids: list[int] = field(default_factory=list)
    incident_ids: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.new_alert_ids or self.resolved_alert_ids)


def unquote_receiver(receiver: str) -> str:
    """Alertmanager sends the receiver name regex-quoted (`auto\\.fix`)."""
    return re.sub(r"\\(.)", r"\1", receiver)


# Statements of the ingest hot path, built once: building a statement (not running it) was
# most of the time of a new alert. Values go in as parameters at execute time.
_INSERT_LINK = links_t.insert()
_KNOWN_ALERTS = select(alerts_t.c.id, alerts_t.c.fingerprint, alerts_t.c.starts_at, alerts_t.c.status).where(
    alerts_t.c.fingerprint.in_(bindparam("fingerprints", expanding=True))
)
_INSERT_ALERTS = {  # many at once: which went in is told by (fingerprint, starts_at)
    dialect.__name__.rsplit(".", 1)[-1]: dialect.insert(alerts_t)
    .on_conflict_do_nothing(index_elements=["fingerprint", "starts_at"])
    .returning(alerts_t.c.id, alerts_t.c.fingerprint, alerts_t.c.starts_at)
    for dialect in (postgresql, sqlite)
}


@dataclass
class PendingRows(PendingAudits):
    """Links and audit rows nothing reads before the transaction ends, written in bulk: one statement a table.

    A storm's new alert costs a link and one or two audit rows; each its own round trip was
    a third of the time. Flush before reading what they hold (resolving counts the links).
    """

    links: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, conn: Connection) -> None:
        if self.links:
            conn.execute(_INSERT_LINK, self.links)
            self.links = []
        super().flush(conn)


def ingest_notification(
    conn: Connection,
    notification: AlertmanagerNotification,
    *,
    group_by: Sequence[str],
    now: datetime | None = None,
    actor: str | None = None,
    open_incidents: OpenIncidents | None = None,
) -> IngestResult:
    """Apply one webhook notification inside the caller's transaction.

    An alert episode is keyed by (fingerprint, startsAt). A repeat only bumps its
    receive count; firing -> resolved closes it (never the reverse: a late firing
    copy from an HA peer must not reopen it); an incident resolves when none of its
    alerts fires any more.
    """
    now = now or datetime.now(UTC)
    cache = open_incidents if open_incidents is not None else OpenIncidents()
    receiver = unquote_receiver(notification.receiver)
    actor = actor or f"alertmanager:{receiver}"
    result = IngestResult()
    fingerprints = {alert.fingerprint for alert in notification.alerts}
    rows = conn.execute(_KNOWN_ALERTS, {"fingerprints": list(fingerprints)})
    known: dict[tuple[str, datetime], tuple[int, str]] = {(r.fingerprint, r.starts_at): (r.id, r.status) for r in rows}
    repeats: list[dict[str, Any]] = []
    pending = PendingRows()
    inserted = _insert_alerts(conn, notification.alerts, known, receiver=receiver, now=now)
    for alert in notification.alerts:
        episode = _episode(alert)
        existing = known.get(episode)
        if existing is None:
            alert_id = inserted.get(episode)
            if alert_id is not None:
                known[episode] = (alert_id, alert.status)
                _attach_new_alert(
                    conn,
                    alert,
                    alert_id,
                    group_by=group_by,
                    actor=actor,
                    now=now,
                    result=result,
                    cache=cache,
                    pending=pending,
                )
                continue
            existing = _find_alert(conn, episode)  # another replica inserted it first
            known[episode] = existing
        alert_id, status = existing
        if status == "firing" and alert.status == "resolved" and _resolve_alert(conn, alert, alert_id, now=now):
            pending.flush(conn)  # resolving counts the incident's links: all must be written
            known[episode] = (alert_id, "resolved")
            result.resolved_alert_ids.append(alert_id)
            for incident_id in _incidents_of(conn, alert_id):
                audit(
                    conn,
                    actor=actor,
                    action="alert.resolved",
                    incident_id=incident_id,
                    detail=_alert_detail(alert),
                    now=now,
                )
                _add_unique(result.incident_ids, incident_id)
                if resolve_if_clear(conn, incident_id, actor=actor, now=now, cache=cache):
                    result.resolved_incident_ids.append(incident_id)
        else:
            repeats.append({"alert_id": alert_id})
            result.duplicates += 1
    if repeats:
        conn.execute(
            update(alerts_t)
            .where(alerts_t.c.id == bindparam("alert_id"))
            .values(receive_count=alerts_t.c.receive_count + 1, last_received_at=now),
            repeats,
        )
    pending.flush(conn)
    return result


def _episode(alert: AlertmanagerAlert) -> tuple[str, datetime]:
    """What makes an alert episode one: its fingerprint and when it started (as stored, in UTC)."""
    return alert.fingerprint, alert.startsAt.astimezone(UTC)


def _add_unique(items: list[int], item: int) -> None:
    if item not in items:
        items.append(item)


def _alert_detail(alert: AlertmanagerAlert) -> dict[str, Any]:
    return {
        "fingerprint": alert.fingerprint,
        "alertname": alert.alertname,
        "status": alert.status,
        "labels": alert.labels,
        "starts_at": alert.startsAt.astimezone(UTC).isoformat(),
    }


def _insert_alerts(
    conn: Connection,
    alerts: Sequence[AlertmanagerAlert],
    known: Mapping[tuple[str, datetime], object],
    *,
    receiver: str,
    now: datetime,
) -> dict[tuple[str, datetime], int]:
    """Insert the episodes not `known`, in one statement; the ids of those that went in, by episode.

    An episode missing from the answer was inserted by another replica first (the conflict).
    """
    rows: dict[tuple[str, datetime], dict[str, Any]] = {}
    for alert in alerts:
        episode = _episode(alert)
        if episode not in known and episode not in rows:
            rows[episode] = {
                "fingerprint": alert.fingerprint,
                "alertname": alert.alertname,
                "status": alert.status,
                "labels": alert.labels,
                "annotations": alert.annotations,
                "starts_at": alert.startsAt,
                "ends_at": alert.ends_at,
                "generator_url": alert.generatorURL,
                "receiver": receiver,
                "first_received_at": now,
                "last_received_at": now,
                "receive_count": 1,
            }
    if not rows:
        return {}
    result = conn.execute(_INSERT_ALERTS[conn.dialect.name], list(rows.values()))
    return {(r.fingerprint, r.starts_at): r.id for r in result}


def _find_alert(conn: Connection, episode: tuple[str, datetime]) -> tuple[int, str]:
    row = conn.execute(
        select(alerts_t.c.id, alerts_t.c.status).where(
            alerts_t.c.fingerprint == episode[0], alerts_t.c.starts_at == episode[1]
        )
    ).one()
    return row.id, row.status


def _resolve_alert(conn: Connection, alert: AlertmanagerAlert, alert_id: int, *, now: datetime) -> bool:
    """firing -> resolved, once: the WHERE makes concurrent deliveries race safely."""
    res = conn.execute(
        update(alerts_t)
        .where(alerts_t.c.id == alert_id, alerts_t.c.status == "firing")
        .values(
            status="resolved",
            ends_at=alert.ends_at or now,
            annotations=alert.annotations,
            last_received_at=now,
            receive_count=alerts_t.c.receive_count + 1,
        )
    )
    return res.rowcount == 1


def _incidents_of(conn: Connection, alert_id: int) -> list[int]:
    return list(conn.execute(select(links_t.c.incident_id).where(links_t.c.alert_id == alert_id)).scalars())


def _attach_new_alert(
    conn: Connection,
    alert: AlertmanagerAlert,
    alert_id: int,
    *,
    group_by: Sequence[str],
    actor: str,
    now: datetime,
    result: IngestResult,
    cache: OpenIncidents,
    pending: PendingRows,
) -> None:
    result.new_alert_ids.append(alert_id)
    incident_id, opened = incident_for_alert(
        conn,
        labels=alert.labels,
        title=alert.annotations.get("summary") or alert.alertname,
        group_by=group_by,
        actor=actor,
        now=now,
        cache=cache,
        pending=pending,
    )
    if opened:
        result.opened_incident_ids.append(incident_id)
    _add_unique(result.incident_ids, incident_id)
    pending.links.append({"incident_id": incident_id, "alert_id": alert_id, "attached_at": now})
    action = "alert.firing" if alert.status == "firing" else "alert.resolved"
    detail = _alert_detail(alert)
    audit(conn, actor=actor, action=action, incident_id=incident_id, detail=detail, now=now, pending=pending)
    if alert.status == "resolved":
        pending.flush(conn)  # resolving counts the incident's links: all must be written
        if resolve_if_clear(conn, incident_id, actor=actor, now=now, cache=cache):
            result.resolved_incident_ids.append(incident_id)
