"""Owns the incident service functions: reading incidents and alerts (keyset-paginated), and what people do
to an incident by hand (acknowledge, resolve, add a note). Audited; no HTTP here.

Status changes go through incidents/state.py's `transition()`: two people (or a person and a
resolving webhook) racing on one incident leave exactly one winner, and the loser gets a
Conflict that says what happened.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    RowMapping,
    ScalarSelect,
    case,
    func,
    literal_column,
    or_,
    select,
    update,
)

from controlplane.audit import audit
from controlplane.db.tables import alerts_t, audit_t, incidents_t, links_t
from controlplane.errors import Conflict, InvalidInput, missing
from controlplane.incidents import automation
from controlplane.incidents.schemas import (
    AlertOut,
    AlertPage,
    AuditEventOut,
    IncidentDetail,
    IncidentOut,
    IncidentPage,
    TimelinePage,
)
from controlplane.incidents.state import transition

_ALERT_COLUMNS = [alerts_t.c[name] for name in AlertOut.model_fields]
_INCIDENT_COLUMNS = [incidents_t.c[name] for name in IncidentOut.model_fields if name in incidents_t.c]


def alert_counts(
    conn: Connection, incident_ids: Sequence[int], *, cap: int | None = None
) -> defaultdict[int, tuple[int, int]]:
    """(firing, total) alerts per incident; (0, 0) for an incident without alerts.

    With `cap`, each count stops at `cap + 1` (a page shows it as "cap+"): a storm's incident holds
    tens of thousands of alerts, and counting them all is most of what its page would cost."""
    counts: defaultdict[int, tuple[int, int]] = defaultdict(lambda: (0, 0))
    if not incident_ids:
        return counts
    if cap is not None:
        return _capped_alert_counts(conn, incident_ids, cap, counts)
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


def _capped_alert_counts(
    conn: Connection, incident_ids: Sequence[int], cap: int, counts: defaultdict[int, tuple[int, int]]
) -> defaultdict[int, tuple[int, int]]:
    def counted(*where: ColumnElement[bool]) -> ScalarSelect[int]:
        links = (
            select(links_t.c.alert_id)
            .where(links_t.c.incident_id == incidents_t.c.id, *where)
            .correlate(incidents_t)
            .limit(cap + 1)
            .subquery()
        )
        return select(func.count()).select_from(links).scalar_subquery()

    firing = alerts_t.c.status == literal_column("'firing'")
    is_firing = select(alerts_t.c.id).where(alerts_t.c.id == links_t.c.alert_id, firing).exists()
    rows = conn.execute(
        select(incidents_t.c.id, counted(is_firing).label("firing"), counted().label("total")).where(
            incidents_t.c.id.in_(incident_ids)
        )
    )
    for r in rows:
        counts[r.id] = (int(r.firing), int(r.total))
    return counts


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_incidents(
    *,
    conn: Connection,
    statuses: Sequence[str] = (),
    severity: str | None = None,
    text: str = "",
    automation_failed: bool = False,
    limit: int = 50,
    before: int | None = None,
    count_cap: int | None = None,
    search_window: int | None = None,
) -> IncidentPage:
    """Incidents newest first, keyset-paged by `before`; `text` matches title or key (the console's search),
    `automation_failed` keeps those whose latest run failed or rolled back; alert counts stop at
    `count_cap + 1` when it is given (see alert_counts).

    No index serves a search for text inside titles, so it reads every incident it passes. With
    `search_window`, a text search looks at the `search_window` ids below the cursor at most: the page
    may then hold fewer matches (none, even) and `next_cursor` goes on below the ids it looked at."""
    query = select(*_INCIDENT_COLUMNS).order_by(incidents_t.c.id.desc()).limit(limit + 1)
    floor = None
    if text and search_window is not None:
        top = before if before is not None else conn.execute(select(func.max(incidents_t.c.id))).scalar()
        floor = (top or 0) - search_window
        query = query.where(incidents_t.c.id >= floor)
    if statuses:
        query = query.where(incidents_t.c.status.in_(statuses))
    if severity:
        query = query.where(incidents_t.c.severity == severity)
    if text:
        pattern = _like(text)
        query = query.where(
            or_(incidents_t.c.title.ilike(pattern, escape="\\"), incidents_t.c.key.ilike(pattern, escape="\\"))
        )
    if automation_failed:
        query = query.where(automation.automation_failed())
    if before is not None:
        query = query.where(incidents_t.c.id < before)
    rows = conn.execute(query).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    ids = [r["id"] for r in rows]
    counts, states = alert_counts(conn, ids, cap=count_cap), automation.states(conn, ids)
    items = [
        IncidentOut(**r, alerts_firing=counts[r["id"]][0], alerts_total=counts[r["id"]][1], automation=states[r["id"]])
        for r in rows
    ]
    cursor = items[-1].id if more else None
    if cursor is None and floor is not None:  # the window ran out: older incidents lie beyond it
        older = conn.execute(select(incidents_t.c.id).where(incidents_t.c.id < floor).limit(1)).first()
        cursor = floor if older is not None else None
    return IncidentPage(items=items, next_cursor=cursor)


# An incident's alerts and timeline are paged: a storm's incident holds tens of thousands of alerts.
DETAIL_ALERTS = 100
DETAIL_EVENTS = 200

# "oldest": oldest first, paged by `after`. "firing_first": firing ones first, newest first, what an
# on-call person looks at (the console); one page only, so no cursor.
AlertOrder = Literal["oldest", "firing_first"]
# Which page of the audit trail, shown oldest first either way: the oldest events (paged by `after`,
# the API's) or the newest ones (the console's live timeline).
EventWindow = Literal["oldest", "newest"]


@dataclass(frozen=True)
class IncidentRecord:
    """One incident with a page of its alerts and a page of its audit trail: what the API and the console show."""

    incident: IncidentOut
    alerts: AlertPage
    timeline: TimelinePage  # oldest first; next_cursor only in the "oldest" window
    events_before: int  # "newest" window: how many older events the page leaves out
    execution_of: dict[int, int]  # audit event id -> the execution that wrote it


def firing_first(
    conn: Connection, incident_id: int, limit: int, columns: Sequence[ColumnElement[Any]]
) -> list[RowMapping]:
    """`columns` of the incident's newest `limit` alerts, the firing ones first (what the console shows).

    Newest first in the incident's own link index, in two passes (firing, then the others), each
    stopping at `limit`: one ORDER BY on the status would sort all of a storm's alerts."""
    firing = alerts_t.c.status == literal_column("'firing'")
    newest = (
        select(*columns)
        .join(links_t, links_t.c.alert_id == alerts_t.c.id)
        .where(links_t.c.incident_id == incident_id)
        .order_by(links_t.c.alert_id.desc())
        .limit(limit)
    )
    rows = list(conn.execute(newest.where(firing)).mappings())
    if len(rows) < limit:
        rows += conn.execute(newest.where(~firing).limit(limit - len(rows))).mappings().all()
    return rows


def incident_alerts(
    *,
    conn: Connection,
    incident_id: int,
    limit: int = DETAIL_ALERTS,
    after: int | None = None,
    order: AlertOrder = "oldest",
) -> AlertPage:
    """The incident's alerts in `order`; `next_cursor` is the `after` of the next page ("oldest" only)."""
    query = (
        select(*_ALERT_COLUMNS)
        .join(links_t, links_t.c.alert_id == alerts_t.c.id)
        .where(links_t.c.incident_id == incident_id)
        .limit(limit + 1)
    )
    if order == "firing_first":
        shown = firing_first(conn, incident_id, limit, _ALERT_COLUMNS)
        return AlertPage(items=[AlertOut(**r) for r in shown], next_cursor=None)
    query = query.order_by(alerts_t.c.id)
    if after is not None:
        query = query.where(alerts_t.c.id > after)
    rows = conn.execute(query).mappings().all()
    items = [AlertOut(**r) for r in rows[:limit]]
    more = len(rows) > limit
    return AlertPage(items=items, next_cursor=items[-1].id if more else None)


def _events(
    conn: Connection, incident_id: int, *, limit: int, after: int | None = None, newest: bool = False
) -> tuple[list[RowMapping], bool]:
    """A page of the incident's audit rows, oldest first (the newest `limit` of them with `newest`); and
    whether there are more beyond it."""
    query = select(audit_t).where(audit_t.c.incident_id == incident_id).limit(limit + 1)
    query = query.order_by(audit_t.c.id.desc() if newest else audit_t.c.id)
    if after is not None:
        query = query.where(audit_t.c.id > after)
    rows = list(conn.execute(query).mappings())
    more = len(rows) > limit
    rows = rows[:limit]
    if newest:
        rows.reverse()
    return rows, more


def incident_timeline(
    *, conn: Connection, incident_id: int, limit: int = DETAIL_EVENTS, after: int | None = None
) -> TimelinePage:
    """The incident's audit events, oldest first; `next_cursor` is the `after` of the next page."""
    rows, more = _events(conn, incident_id, limit=limit, after=after)
    items = [AuditEventOut(**r) for r in rows]
    return TimelinePage(items=items, next_cursor=items[-1].id if more else None)


def incident_row(*, conn: Connection, incident_id: int) -> RowMapping:
    """The incident's own columns, or NotFound."""
    row = conn.execute(select(*_INCIDENT_COLUMNS).where(incidents_t.c.id == incident_id)).mappings().first()
    if row is None:
        raise missing("incident", incident_id)
    return row


def incident_detail(
    *,
    conn: Connection,
    incident_id: int,
    alerts_limit: int = DETAIL_ALERTS,
    events_limit: int = DETAIL_EVENTS,
    alerts_order: AlertOrder = "oldest",
    events_window: EventWindow = "oldest",
    count_cap: int | None = None,
) -> IncidentRecord:
    """The incident with its alert counts (stopping at `count_cap + 1` if given), a page of its alerts and a
    page of its timeline, or NotFound."""
    row = incident_row(conn=conn, incident_id=incident_id)
    firing, total = alert_counts(conn, [incident_id], cap=count_cap)[incident_id]
    alerts = incident_alerts(conn=conn, incident_id=incident_id, limit=alerts_limit, order=alerts_order)
    newest = events_window == "newest"
    rows, more = _events(conn, incident_id, limit=events_limit, newest=newest)
    items = [AuditEventOut(**r) for r in rows]
    before = 0
    if newest and more:
        count = select(func.count()).select_from(audit_t).where(audit_t.c.incident_id == incident_id)
        before = conn.execute(count).scalar_one() - events_limit
    return IncidentRecord(
        incident=IncidentOut(
            **row,
            alerts_firing=firing,
            alerts_total=total,
            automation=automation.states(conn, [incident_id])[incident_id],
        ),
        alerts=alerts,
        timeline=TimelinePage(items=items, next_cursor=items[-1].id if more and not newest else None),
        events_before=before,
        execution_of={r["id"]: r["execution_id"] for r in rows if r["execution_id"] is not None},
    )


def get_incident(
    *, conn: Connection, incident_id: int, alerts_limit: int = DETAIL_ALERTS, events_limit: int = DETAIL_EVENTS
) -> IncidentDetail:
    """The incident with the first page of its alerts and of its timeline (the API's shape)."""
    record = incident_detail(conn=conn, incident_id=incident_id, alerts_limit=alerts_limit, events_limit=events_limit)
    return IncidentDetail(
        **record.incident.model_dump(),
        alerts=record.alerts.items,
        alerts_next_cursor=record.alerts.next_cursor,
        timeline=record.timeline.items,
        timeline_next_cursor=record.timeline.next_cursor,
    )


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


# -- by hand -------------------------------------------------------------------------------------

NOTE_MAX_CHARS = 4000


def _status(conn: Connection, incident_id: int) -> str:
    status = conn.execute(select(incidents_t.c.status).where(incidents_t.c.id == incident_id)).scalar()
    if status is None:
        raise missing("incident", incident_id)
    return str(status)


def acknowledge(*, conn: Connection, incident_id: int, actor: str, now: datetime) -> None:
    """open -> acknowledged: someone is on it. Alerts keep flowing in; the incident stays unresolved."""
    if not transition(conn, incident_id, "acknowledged", actor=actor, now=now):
        raise Conflict(f"incident {incident_id} is {_status(conn, incident_id)}: only an open one can be acknowledged")


def resolve(*, conn: Connection, incident_id: int, actor: str, now: datetime, reason: str = "") -> None:
    """Resolve by hand. The key is freed, so an alert that fires again for it opens a new incident."""
    if not transition(conn, incident_id, "resolved", actor=actor, now=now, detail={"manual": True, "reason": reason}):
        _status(conn, incident_id)  # NotFound when it does not exist
        raise Conflict(f"incident {incident_id} is already resolved")


def add_note(*, conn: Connection, incident_id: int, actor: str, text: str, now: datetime) -> None:
    text = text.strip()
    if not text:
        raise InvalidInput("a note needs some text")
    if len(text) > NOTE_MAX_CHARS:
        raise InvalidInput(f"a note has at most {NOTE_MAX_CHARS} characters")
    _status(conn, incident_id)
    conn.execute(update(incidents_t).where(incidents_t.c.id == incident_id).values(updated_at=now))
    audit(conn, actor=actor, action="incident.note", incident_id=incident_id, detail={"text": text}, now=now)
