"""Owns what each console screen shows: read models built from the database, the rules and the breakers.

No HTTP here: each function takes a connection (and what else it reads) and returns typed
data the templates render. Queries are keyset-paginated and bounded, so a screen stays fast
with 100,000 incidents in the database.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection, func, select

from controlplane.actions.base import ActionRegistry
from controlplane.db.tables import alerts_t, audit_t, executions_t, incidents_t, steps_t
from controlplane.errors import missing
from controlplane.incidents import service as incidents
from controlplane.incidents.schemas import AlertOut, AuditEventOut, IncidentOut, IncidentPage
from controlplane.playbooks import quarantine
from controlplane.playbooks import service as executions
from controlplane.playbooks.schemas import ExecutionOut, StepOut
from controlplane.playbooks.state import ACTIVE
from controlplane.playbooks.summary import described, summarize
from controlplane.silences import service as silence_service
from controlplane.silences.schemas import SilenceOut

INCIDENT_STATUSES = ("open", "acknowledged", "resolved")
SEVERITIES = ("critical", "error", "warning", "info", "none")
PAGE_SIZE = 50
# What one incident page shows at most, so a storm's incident still renders in milliseconds.
ALERTS_SHOWN = 200
EVENTS_SHOWN = 500
EXECUTIONS_SHOWN = 100
# Alert counts stop here ("1,000+"): counting a storm's 50,000 alerts would be most of a page's time.
ALERTS_COUNTED = 1_000
# A text search reads this many incidents per page at most (no index finds text inside a title).
SEARCH_WINDOW = 20_000

# Audit events written again and again while nothing changes (one per poll of a wait): one line each run of them.
REPEATING = frozenset({"execution.waiting"})
_UNTIL = re.compile(r" until .*$")  # the part of a wait's reason that moves at every poll


# -- incidents list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentFilters:
    statuses: tuple[str, ...] = ()
    severity: str = ""
    text: str = ""
    automation_failed: bool = False
    before: int | None = None
    limit: int = PAGE_SIZE

    def query_string(self, *, before: int | None = None) -> str:
        """The filters as a query string, for the next page's link and the live refresh."""
        params: list[tuple[str, str | int]] = [("status", s) for s in self.statuses]
        if self.severity:
            params.append(("severity", self.severity))
        if self.text:
            params.append(("q", self.text))
        if self.automation_failed:
            params.append(("automation", "failed"))
        if before is not None:
            params.append(("before", before))
        return urlencode(params)

    @property
    def active(self) -> bool:
        return bool(self.statuses or self.severity or self.text or self.automation_failed)


def list_incidents(*, conn: Connection, filters: IncidentFilters) -> IncidentPage:
    """The API's listing with the console's filters; the same keyset cursor (`before`)."""
    return incidents.list_incidents(
        conn=conn,
        statuses=filters.statuses,
        severity=filters.severity or None,
        text=filters.text,
        automation_failed=filters.automation_failed,
        limit=filters.limit,
        before=filters.before,
        count_cap=ALERTS_COUNTED,
        search_window=SEARCH_WINDOW,
    )


# -- incident detail -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventLine:
    """One line of a timeline: an audit event, or a run of one repeated event (a wait's polls) folded into one.

    `event` is the last of the run, `count` how many there were, `first_at` when the first was.
    """

    event: AuditEventOut
    count: int = 1
    first_at: datetime | None = None

    @property
    def folded(self) -> bool:
        return self.count > 1

    @property
    def span(self) -> timedelta:
        return self.event.at - (self.first_at or self.event.at)

    @property
    def text(self) -> str:
        """What happened, after the action's name: the reason, or which step (1-based) and its error."""
        detail = self.event.detail
        if self.event.action.startswith("step.") and isinstance(detail.get("index"), int):
            rollback = "rollback of " if detail.get("phase") == "rollback" else ""
            text = f"{rollback}step {detail['index'] + 1} ({detail.get('action')})"
            if detail.get("error"):
                text += f": {detail['error']}"
            return text
        if self.event.action == "step.refused" and isinstance(detail.get("step"), int):
            return f"step {detail['step'] + 1} ({detail.get('action')}): {detail.get('reason', '')}"
        return str(detail.get("reason") or "")


def fold(events: list[AuditEventOut]) -> list[EventLine]:
    """The events in order, each run of one repeated event (REPEATING, the same reason but its time) as one line."""
    lines: list[EventLine] = []
    for event in events:
        last = lines[-1] if lines else None
        if last is not None and event.action in REPEATING and _same_repeat(last.event, event):
            lines[-1] = EventLine(event, last.count + 1, last.first_at)
        else:
            lines.append(EventLine(event, 1, event.at))
    return lines


def _same_repeat(a: AuditEventOut, b: AuditEventOut) -> bool:
    def key(e: AuditEventOut) -> str:
        return _UNTIL.sub("", str(e.detail.get("reason", "")))

    return a.action == b.action and key(a) == key(b)


@dataclass(frozen=True)
class ExecutionView:
    execution: ExecutionOut
    steps: list[StepOut]  # each with its effect
    events: list[AuditEventOut]  # its own audit trail: created, approved, running, succeeded...
    summary: str = ""  # one line: what it did and how it ended (playbooks/summary.py)

    @cached_property  # the template reads it twice
    def lines(self) -> list[EventLine]:
        return fold(self.events)

    @property
    def awaiting_approval(self) -> bool:
        return self.execution.status == "awaiting_approval"

    @property
    def approval_progress(self) -> str:  # "1 of 2 approvals (alice)", from its audit trail
        given = [event.actor for event in self.events if event.action == executions.APPROVAL_GIVEN]
        return executions.approval_progress(self.execution.approvals_required, given)

    @property
    def cancellable(self) -> bool:
        return self.execution.status in ACTIVE


@dataclass(frozen=True)
class TimelineEntry:
    """One line of the incident's timeline: an audit event (or a run of one, folded), or an execution."""

    at: datetime
    line: EventLine | None = None
    execution: ExecutionView | None = None


@dataclass(frozen=True)
class IncidentView:
    incident: IncidentOut
    alerts: list[AlertOut]
    timeline: list[TimelineEntry]
    alerts_hidden: int  # beyond ALERTS_SHOWN (of the first ALERTS_COUNTED)
    events_hidden: int  # older than the newest EVENTS_SHOWN
    executions_hidden: bool  # there may be more than EXECUTIONS_SHOWN
    silences: list[SilenceOut] = field(default_factory=list)
    quarantines: list[dict[str, Any]] = field(default_factory=list)  # loop breakers holding its rules

    @property
    def alerts_uncounted(self) -> bool:
        """It holds more than ALERTS_COUNTED alerts: alerts_hidden is a lower bound."""
        return self.incident.alerts_total > ALERTS_COUNTED

    @property
    def can_acknowledge(self) -> bool:
        return self.incident.status == "open"

    @property
    def can_resolve(self) -> bool:
        return self.incident.status != "resolved"


def incident_version(*, conn: Connection, incident_id: int) -> str:
    """A digest of what the detail's live block shows: while it is unchanged, a refresh has nothing to redraw
    (and does not fold up the steps the reader opened). The minute is in it so relative times stay right."""
    # Bounded like the page: its shown alerts (their receive counts), its newest runs and their steps.
    shown = incidents.firing_first(conn, incident_id, ALERTS_SHOWN, [alerts_t.c.last_received_at])
    runs = (
        select(executions_t.c.id, executions_t.c.updated_at)
        .where(executions_t.c.incident_id == incident_id)
        .order_by(executions_t.c.id.desc())
        .limit(EXECUTIONS_SHOWN)
        .subquery()
    )
    row = conn.execute(
        select(
            incidents_t.c.updated_at,
            incidents_t.c.status,
            select(func.max(audit_t.c.id)).where(audit_t.c.incident_id == incident_id).scalar_subquery(),
            select(func.max(runs.c.id)).scalar_subquery(),
            select(func.max(runs.c.updated_at)).scalar_subquery(),
            select(func.count(steps_t.c.finished_at))
            .where(steps_t.c.execution_id.in_(select(runs.c.id)))
            .scalar_subquery(),
            select(func.max(steps_t.c.id)).where(steps_t.c.execution_id.in_(select(runs.c.id))).scalar_subquery(),
        ).where(incidents_t.c.id == incident_id)
    ).first()
    if row is None:
        raise missing("incident", incident_id)
    seen = (tuple(row), max((r["last_received_at"] for r in shown), default=None), int(time.time() // 60))
    return hashlib.sha256(repr(seen).encode()).hexdigest()[:16]


def incident_view(*, conn: Connection, incident_id: int, registry: ActionRegistry | None = None) -> IncidentView:
    """The incidents domain's detail (firing alerts first, the newest events), with the incident's executions,
    their steps and its silences around it. `registry` describes what the steps did (default: built-in actions)."""
    record = incidents.incident_detail(
        conn=conn,
        incident_id=incident_id,
        alerts_limit=ALERTS_SHOWN,
        events_limit=EVENTS_SHOWN,
        alerts_order="firing_first",  # bounded: in a storm thousands of alerts share one incident
        events_window="newest",
        count_cap=ALERTS_COUNTED,
    )
    runs = executions.list_executions(conn=conn, incident_id=incident_id, limit=EXECUTIONS_SHOWN).items
    ids = [run.id for run in runs]
    steps = executions.steps_of(conn, ids)
    # Each event an execution shown here wrote is filed under it; the rest are the incident's own lines.
    events: defaultdict[int | None, list[AuditEventOut]] = defaultdict(list)
    shown = set(ids)
    for event in record.timeline.items:
        owner = record.execution_of.get(event.id)
        events[owner if owner in shown else None].append(event)
    timeline = [TimelineEntry(at=line.event.at, line=line) for line in fold(events[None])]
    for run in runs:
        own = described(steps[run.id], registry)
        view = ExecutionView(run, own, events[run.id], summarize(run, own, registry, events[run.id]))
        timeline.append(TimelineEntry(at=run.created_at, execution=view))
    timeline.sort(key=lambda entry: entry.at)
    silences = silence_service.of_incident(conn=conn, incident_id=incident_id)
    alerts = record.alerts.items
    held = quarantine.of_incident(conn, incident_id=incident_id)
    return IncidentView(
        incident=record.incident,
        alerts=alerts,
        timeline=timeline,
        alerts_hidden=min(record.incident.alerts_total, ALERTS_COUNTED) - len(alerts),
        events_hidden=record.events_before,
        executions_hidden=len(runs) >= EXECUTIONS_SHOWN,
        silences=silences,
        quarantines=held,
    )
