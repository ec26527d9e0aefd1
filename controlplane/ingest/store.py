"""Owns what one notification does to the database: dedup alert episodes, group incidents, audit."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from controlplane.audit import PendingAudits, audit
from controlplane.db.tables import alerts_t, dialect_insert, incidents_t, links_t
from controlplane.incidents.keys import incident_key
from controlplane.ingest.payload import AlertmanagerAlert, AlertmanagerNotification

SEVERITY_RANK = {"none": 0, "info": 1, "warning": 2, "error": 3, "high": 3, "critical": 4, "page": 4}


def severity_rank(severity: str) -> int:
    return SEVERITY_RANK.get(severity.lower(), 1)


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


class OpenIncidents(dict[str, tuple[int, str]]):
    """Open incidents this transaction already locked, by key: (id, severity).

    One group-commit transaction often holds many alerts of one incident; after the first,
    the row is ours until commit, so reading and touching it again would only cost time.
    Valid for one transaction only.
    """

    def forget(self, incident_id: int) -> None:
        for key in [k for k, (i, _) in self.items() if i == incident_id]:
            del self[key]


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
                if _resolve_incident_if_clear(conn, incident_id, actor=actor, now=now, cache=cache):
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
    incident_id, opened = _open_incident(
        conn, alert, group_by=group_by, actor=actor, now=now, cache=cache, pending=pending
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
        if _resolve_incident_if_clear(conn, incident_id, actor=actor, now=now, cache=cache):
            result.resolved_incident_ids.append(incident_id)


def _open_incident(
    conn: Connection,
    alert: AlertmanagerAlert,
    *,
    group_by: Sequence[str],
    actor: str,
    now: datetime,
    cache: OpenIncidents,
    pending: PendingRows,
) -> tuple[int, bool]:
    """The unresolved incident for the alert's key, created if there is none. Returns (id, created)."""
    key = incident_key(alert.labels, group_by)
    severity = alert.labels.get("severity", "none")
    cached = cache.get(key)
    if cached is not None:
        cached_id, known_severity = cached
        if severity_rank(severity) > severity_rank(known_severity):
            conn.execute(update(incidents_t).where(incidents_t.c.id == cached_id).values(severity=severity))
            cache[key] = (cached_id, severity)
        return cached_id, False
    for _ in range(3):
        # FOR UPDATE (PostgreSQL) serialises with a concurrent resolve of the same incident.
        row = conn.execute(
            select(incidents_t.c.id, incidents_t.c.severity).where(incidents_t.c.open_key == key).with_for_update()
        ).first()
        if row is not None:
            values: dict[str, Any] = {"updated_at": now}
            if severity_rank(severity) > severity_rank(row.severity):
                values["severity"] = severity
            conn.execute(update(incidents_t).where(incidents_t.c.id == row.id).values(**values))
            cache[key] = (row.id, values.get("severity", row.severity))
            return row.id, False
        group_labels = {name: alert.labels[name] for name in group_by if name in alert.labels}
        title = alert.annotations.get("summary") or alert.alertname or key
        incident_id = conn.execute(
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
            cache[key] = (incident_id, severity)
            return incident_id, True
    raise RuntimeError(f"could not open or find the incident for key {key}")


def _resolve_incident_if_clear(
    conn: Connection, incident_id: int, *, actor: str, now: datetime, cache: OpenIncidents
) -> bool:
    conn.execute(select(incidents_t.c.id).where(incidents_t.c.id == incident_id).with_for_update()).first()
    firing = conn.execute(
        select(func.count())
        .select_from(links_t.join(alerts_t, links_t.c.alert_id == alerts_t.c.id))
        .where(links_t.c.incident_id == incident_id, alerts_t.c.status == "firing")
    ).scalar_one()
    if firing:
        return False
    res = conn.execute(
        update(incidents_t)
        .where(incidents_t.c.id == incident_id, incidents_t.c.status != "resolved")
        .values(status="resolved", open_key=None, resolved_at=now, updated_at=now)
    )
    if res.rowcount != 1:
        return False
    cache.forget(incident_id)  # a new firing alert with its key opens a new incident
    audit(
        conn,
        actor=actor,
        action="incident.resolved",
        incident_id=incident_id,
        detail={"reason": "all alerts resolved"},
        now=now,
    )
    return True
