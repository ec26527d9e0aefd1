"""Owns what one notification does to the database: dedup alert episodes, audit them, and hand them to incidents.

Grouping into incidents and resolving them is the incidents domain's (incidents/grouping.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
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


@functools.lru_cache(maxsize=256)  # a service has a few receivers; a regex substitution a notification added up
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
    """Apply one webhook notification inside the caller's transaction (see `ingest_notifications`)."""
    [result] = ingest_notifications(
        conn, [notification], group_by=group_by, now=now, actor=actor, open_incidents=open_incidents
    )
    return result


def ingest_notifications(
    conn: Connection,
    notifications: Sequence[AlertmanagerNotification],
    *,
    group_by: Sequence[str],
    now: datetime | None = None,
    actor: str | None = None,
    open_incidents: OpenIncidents | None = None,
) -> list[IngestResult]:
    """Apply webhook notifications inside the caller's transaction, as if one after the other; a result each.

    An alert episode is keyed by (fingerprint, startsAt). A repeat only bumps its
    receive count; firing -> resolved closes it (never the reverse: a late firing
    copy from an HA peer must not reopen it); an incident resolves when none of its
    alerts fires any more.

    A group-commit batch costs a handful of statements, not a handful per notification: one
    lookup of the episodes it names, one insert of the new ones, one update of the repeats' counts,
    one insert each of links and audit rows. Only a resolve writes what came before it first.
    """
    batch = _Batch(
        conn,
        group_by=group_by,
        now=now or datetime.now(UTC),
        cache=open_incidents if open_incidents is not None else OpenIncidents(),
    )
    batch.load_known({alert.fingerprint for n in notifications for alert in n.alerts})
    results: list[IngestResult] = []
    for notification in notifications:
        result = IngestResult()
        receiver = unquote_receiver(notification.receiver)
        sender = _Sender(receiver, actor or f"alertmanager:{receiver}", result)
        for alert in notification.alerts:
            batch.apply(alert, sender)
        results.append(result)
    batch.finish()
    return results


@dataclass(frozen=True)
class _Sender:
    """Whose delivery an alert is: the notification's receiver, the actor its audit rows name, its result."""

    receiver: str
    actor: str
    result: IngestResult


_CHUNK = 500  # fingerprints a lookup names: far below any database's limit of bound parameters
_BUMP_REPEATS = (
    update(alerts_t)
    .where(alerts_t.c.id == bindparam("alert_id"))
    .values(receive_count=alerts_t.c.receive_count + bindparam("repeats"), last_received_at=bindparam("now"))
)


class _Batch:
    """The alert episodes of one transaction: what the database holds, what is new and not yet inserted.

    Alerts are applied in delivery order. A new episode waits in `new` (its repeats in the batch are
    counted meanwhile); all of them are inserted in one statement when the batch ends, or before a
    resolve, which must count every link that came before it.
    """

    def __init__(self, conn: Connection, *, group_by: Sequence[str], now: datetime, cache: OpenIncidents) -> None:
        self.conn = conn
        self.group_by = group_by
        self.now = now
        self.cache = cache
        self.pending = PendingRows()
        self.known: dict[tuple[str, datetime], tuple[int, str]] = {}  # episode: (id, status)
        self.new: dict[tuple[str, datetime], tuple[AlertmanagerAlert, _Sender]] = {}
        self.repeats: dict[tuple[str, datetime], int] = {}

    def load_known(self, fingerprints: set[str]) -> None:
        names = sorted(fingerprints)
        for i in range(0, len(names), _CHUNK):
            rows = self.conn.execute(_KNOWN_ALERTS, {"fingerprints": names[i : i + _CHUNK]})
            self.known.update({(r.fingerprint, r.starts_at): (r.id, r.status) for r in rows})

    def apply(self, alert: AlertmanagerAlert, sender: _Sender) -> None:
        episode = _episode(alert)
        if episode not in self.known:
            first = self.new.get(episode)
            if first is None:
                self.new[episode] = (alert, sender)
                return
            if not (first[0].status == "firing" and alert.status == "resolved"):
                self._repeat(episode, sender)
                return
            self.insert_new()
        self._apply_known(alert, sender)

    def _repeat(self, episode: tuple[str, datetime], sender: _Sender) -> None:
        self.repeats[episode] = self.repeats.get(episode, 0) + 1
        sender.result.duplicates += 1

    def _apply_known(self, alert: AlertmanagerAlert, sender: _Sender) -> None:
        episode = _episode(alert)
        alert_id, status = self.known[episode]
        if status == "firing" and alert.status == "resolved":
            self.insert_new()
            if _resolve_alert(self.conn, alert, alert_id, now=self.now):
                self._resolved(alert, alert_id, sender)
                return
        self._repeat(episode, sender)

    def _resolved(self, alert: AlertmanagerAlert, alert_id: int, sender: _Sender) -> None:
        conn, result = self.conn, sender.result
        self.pending.flush(conn)  # resolving counts the incident's links: all must be written
        self.known[_episode(alert)] = (alert_id, "resolved")
        result.resolved_alert_ids.append(alert_id)
        for incident_id in _incidents_of(conn, alert_id):
            audit(
                conn,
                actor=sender.actor,
                action="alert.resolved",
                incident_id=incident_id,
                detail=_alert_detail(alert),
                now=self.now,
            )
            _add_unique(result.incident_ids, incident_id)
            if resolve_if_clear(conn, incident_id, actor=sender.actor, now=self.now, cache=self.cache):
                result.resolved_incident_ids.append(incident_id)

    def insert_new(self) -> None:
        """Insert the new episodes waiting, in one statement, and attach each to its incident in order."""
        if not self.new:
            return
        waiting, self.new = self.new, {}
        rows = [_alert_row(alert, sender.receiver, self.now) for alert, sender in waiting.values()]
        result = self.conn.execute(_INSERT_ALERTS[self.conn.dialect.name], rows)
        inserted = {(r.fingerprint, r.starts_at): r.id for r in result}
        for episode, (alert, sender) in waiting.items():
            alert_id = inserted.get(episode)
            if alert_id is None:  # another replica inserted it first
                self.known[episode] = _find_alert(self.conn, episode)
                self._apply_known(alert, sender)
                continue
            self.known[episode] = (alert_id, alert.status)
            _attach_new_alert(
                self.conn,
                alert,
                alert_id,
                group_by=self.group_by,
                actor=sender.actor,
                now=self.now,
                result=sender.result,
                cache=self.cache,
                pending=self.pending,
            )

    def finish(self) -> None:
        self.insert_new()
        if self.repeats:
            bumps = [
                {"alert_id": self.known[episode][0], "repeats": count, "now": self.now}
                for episode, count in self.repeats.items()
            ]
            self.conn.execute(_BUMP_REPEATS, bumps)
            self.repeats = {}
        self.pending.flush(self.conn)


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


def _alert_row(alert: AlertmanagerAlert, receiver: str, now: datetime) -> dict[str, Any]:
    return {
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
