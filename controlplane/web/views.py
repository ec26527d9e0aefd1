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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection, Engine, and_, func, select

from controlplane.actions.base import ActionRegistry
from controlplane.db.tables import alerts_t, audit_t, executions_t, incidents_t, links_t, metric_states_t, steps_t
from controlplane.errors import NotFound
from controlplane.incidents import service as incidents
from controlplane.incidents.schemas import AlertOut, AuditEventOut, IncidentOut, IncidentPage
from controlplane.playbooks import approval_plans, ledger, quarantine
from controlplane.playbooks import service as executions
from controlplane.playbooks.contexts import ActionContexts
from controlplane.playbooks.planning import ExecutionPlan
from controlplane.playbooks.schemas import ExecutionOut, StepOut
from controlplane.playbooks.state import ACTIVE
from controlplane.playbooks.summary import described, summarize
from controlplane.rules.loader import RuleSet
from controlplane.rules.schema import Playbook, Rule
from controlplane.silences import service as silence_service

INCIDENT_STATUSES = ("open", "acknowledged", "resolved")
SEVERITIES = ("critical", "error", "warning", "info", "none")
PAGE_SIZE = 50
# What one incident page shows at most, so a storm's incident still renders in milliseconds.
ALERTS_SHOWN = 200
EVENTS_SHOWN = 500
EXECUTIONS_SHOWN = 100

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
class SilenceView:
    silence_id: str
    matchers: dict[str, Any]
    created_by: str
    created_at: datetime
    ends_at: datetime
    expired_at: datetime | None


@dataclass(frozen=True)
class IncidentView:
    incident: IncidentOut
    alerts: list[AlertOut]
    timeline: list[TimelineEntry]
    alerts_hidden: int  # beyond ALERTS_SHOWN
    events_hidden: int  # older than the newest EVENTS_SHOWN
    executions_hidden: bool  # there may be more than EXECUTIONS_SHOWN
    silences: list[SilenceView] = field(default_factory=list)
    quarantines: list[dict[str, Any]] = field(default_factory=list)  # loop breakers holding its rules

    @property
    def can_acknowledge(self) -> bool:
        return self.incident.status == "open"

    @property
    def can_resolve(self) -> bool:
        return self.incident.status != "resolved"


def incident_version(*, conn: Connection, incident_id: int) -> str:
    """A digest of what the detail's live block shows: while it is unchanged, a refresh has nothing to redraw
    (and does not fold up the steps the reader opened). The minute is in it so relative times stay right."""
    of_incident = executions_t.c.incident_id == incident_id
    runs = select(executions_t.c.id).where(of_incident)
    row = conn.execute(
        select(
            incidents_t.c.updated_at,
            incidents_t.c.status,
            select(func.max(audit_t.c.id)).where(audit_t.c.incident_id == incident_id).scalar_subquery(),
            select(func.max(alerts_t.c.last_received_at))
            .select_from(links_t.join(alerts_t, links_t.c.alert_id == alerts_t.c.id))
            .where(links_t.c.incident_id == incident_id)
            .scalar_subquery(),
            select(func.max(executions_t.c.updated_at)).where(of_incident).scalar_subquery(),
            select(func.count(steps_t.c.finished_at)).where(steps_t.c.execution_id.in_(runs)).scalar_subquery(),
            select(func.max(steps_t.c.id)).where(steps_t.c.execution_id.in_(runs)).scalar_subquery(),
        ).where(incidents_t.c.id == incident_id)
    ).first()
    if row is None:
        raise NotFound(f"incident {incident_id} not found")
    return hashlib.sha256(repr((tuple(row), int(time.time() // 60))).encode()).hexdigest()[:16]


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
    )
    runs = executions.list_executions(conn=conn, incident_id=incident_id, limit=EXECUTIONS_SHOWN).items
    ids = [run.id for run in runs]
    steps: defaultdict[int, list[StepOut]] = defaultdict(list)
    if ids:
        for r in conn.execute(
            select(steps_t.c.execution_id, *executions.STEP_COLUMNS)
            .where(steps_t.c.execution_id.in_(ids))
            .order_by(steps_t.c.id)
        ).mappings():
            steps[r["execution_id"]].append(StepOut(**{k: v for k, v in r.items() if k != "execution_id"}))
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
    silences = [
        SilenceView(**{k: r[k] for k in SilenceView.__dataclass_fields__})
        for r in silence_service.of_incident(conn=conn, incident_id=incident_id)
    ]
    alerts = record.alerts.items
    held = quarantine.of_incident(conn, incident_id=incident_id)
    return IncidentView(
        incident=record.incident,
        alerts=alerts,
        timeline=timeline,
        alerts_hidden=record.incident.alerts_total - len(alerts),
        events_hidden=record.events_before,
        executions_hidden=len(runs) >= EXECUTIONS_SHOWN,
        silences=silences,
        quarantines=held,
    )


# -- approvals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalView:
    execution: ExecutionOut
    incident_title: str | None
    params: dict[str, Any]
    rule_match: dict[str, str] | None = None  # the `match:` of the rule in force by that name, if an alert rule
    approved_by: tuple[str, ...] = ()  # who approved so far, when it needs more than one
    plan: ExecutionPlan | None = None  # the change it would make now (approval_plans.py); None: not planned
    plan_digest: str = ""  # sent back with the approval: a plan that moved since is refused
    plan_error: str = ""  # why it could not be planned (the approver then approves the playbook, unseen)

    @property
    def approval_progress(self) -> str:  # "1 of 2 approvals (alice)"
        return executions.approval_progress(self.execution.approvals_required, self.approved_by)


def with_plans(
    items: list[ApprovalView], *, engine: Engine, registry: ActionRegistry, contexts: ActionContexts
) -> list[ApprovalView]:
    """Each approval with the plan of its change, made now (its targets are read, nothing is written)."""
    planned = []
    for item in items:
        try:
            with engine.connect() as conn:
                plan = approval_plans.plan_of(
                    conn, execution_id=item.execution.id, registry=registry, contexts=contexts
                )
        except Exception as exc:  # a target that cannot be read: say so on the card, approve without a plan
            planned.append(replace(item, plan_error=f"{type(exc).__name__}: {exc}"[:300]))
            continue
        planned.append(replace(item, plan=plan, plan_digest=approval_plans.digest(plan)))
    return planned


def approvals(*, conn: Connection, ruleset: RuleSet | None = None, limit: int = 200) -> list[ApprovalView]:
    """The executions awaiting approval, each with its incident's title, its params and its rule's matchers."""
    waiting = executions.list_executions(conn=conn, statuses=["awaiting_approval"], limit=limit).items
    incident_ids = {run.incident_id for run in waiting if run.incident_id is not None}
    titles = dict(
        conn.execute(select(incidents_t.c.id, incidents_t.c.title).where(incidents_t.c.id.in_(incident_ids))).all()
        if incident_ids
        else []
    )
    params = dict(
        conn.execute(
            select(executions_t.c.id, executions_t.c.params).where(executions_t.c.id.in_([r.id for r in waiting]))
        ).all()
        if waiting
        else []
    )
    rules = ruleset or RuleSet.empty()
    given = executions.approvers(conn=conn, execution_ids=[run.id for run in waiting])
    return [
        ApprovalView(
            run,
            titles.get(run.incident_id),
            params.get(run.id) or {},
            _match_of(rules.rule(run.rule_name)),
            tuple(given.get(run.id, ())),
        )
        for run in waiting
    ]


def _match_of(rule: Rule | None) -> dict[str, str] | None:
    return dict(rule.match) if rule is not None and rule.match is not None else None


# -- rules and playbooks -------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricStateView:
    state: str
    last_value: float | None
    last_evaluated_at: datetime | None
    last_error: str | None
    consecutive_errors: int
    active_since: datetime | None


@dataclass(frozen=True)
class RuleView:
    rule: Rule
    last_run_at: datetime | None  # latest execution that was not suppressed
    last_guard_key: str | None
    cooldown_left: timedelta | None  # for the last run's guard key; None when no cooldown is running
    runs_in_window: int | None  # None without a max_runs guard
    metric: MetricStateView | None
    outcomes: dict[str, ledger.Record] = field(default_factory=dict)  # period (24h, 7d) -> its record
    # Shadow rules: their runs since the rules were loaded, "would run" or the guard that would have blocked.
    shadow_runs: dict[str, int] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "metric" if self.rule.when is not None else "alert"


@dataclass(frozen=True)
class RulesView:
    rules: list[RuleView]
    playbooks: list[Playbook]
    loaded_at: datetime | None
    errors: list[str]
    directory: str
    quarantines: list[dict[str, Any]] = field(default_factory=list)  # not lifted yet, newest first


def rules_view(
    *, conn: Connection, ruleset: RuleSet, now: datetime, loaded_at: datetime | None, errors: list[str], directory: str
) -> RulesView:
    """Guard state the way guards.decide() counts it: suppressed executions never count as runs."""
    counted = executions_t.c.status != "suppressed"
    latest = (
        select(executions_t.c.rule_name, func.max(executions_t.c.created_at).label("at"))
        .where(counted)
        .group_by(executions_t.c.rule_name)
        .subquery()
    )
    last: dict[str, tuple[datetime, str]] = {
        row.rule_name: (row.created_at, row.guard_key)
        for row in conn.execute(
            select(executions_t.c.rule_name, executions_t.c.created_at, executions_t.c.guard_key).join(
                latest,
                and_(executions_t.c.rule_name == latest.c.rule_name, executions_t.c.created_at == latest.c.at),
            )
        )
    }
    windows = {r.name: r.guards.max_runs.per for r in ruleset.rules if r.guards.max_runs}
    recent: defaultdict[str, list[datetime]] = defaultdict(list)
    if windows:
        for row in conn.execute(
            select(executions_t.c.rule_name, executions_t.c.created_at).where(
                counted,
                executions_t.c.rule_name.in_(list(windows)),
                executions_t.c.created_at > now - max(windows.values()),
            )
        ):
            recent[row.rule_name].append(row.created_at)
    metric = {
        row.rule_name: MetricStateView(
            row.state,
            row.last_value,
            row.last_evaluated_at,
            row.last_error,
            row.consecutive_errors,
            row.active_since,
        )
        for row in conn.execute(select(metric_states_t))
    }
    shadow: defaultdict[str, dict[str, int]] = defaultdict(dict)
    shadow_rules = [rule.name for rule in ruleset.rules if rule.shadow]
    if shadow_rules and loaded_at is not None:
        e = executions_t.c
        for row in conn.execute(
            select(e.rule_name, e.guard, func.count().label("n"))
            .where(e.rule_name.in_(shadow_rules), e.dry_run.is_(True), e.created_at >= loaded_at)
            .group_by(e.rule_name, e.guard)
        ):
            shadow[row.rule_name][row.guard or "would run"] = int(row.n)
    outcomes: defaultdict[str, dict[str, ledger.Record]] = defaultdict(dict)
    for record in ledger.records(conn, now=now):
        outcomes[record.rule][record.period] = record
    views = []
    for rule in ruleset.rules:
        at, key = last.get(rule.name, (None, None))
        cooldown_left = None
        if at is not None and rule.guards.cooldown and at + rule.guards.cooldown > now:
            cooldown_left = at + rule.guards.cooldown - now
        runs = None
        if rule.name in windows:
            runs = sum(1 for t in recent[rule.name] if t > now - windows[rule.name])
        views.append(
            RuleView(
                rule,
                at,
                key,
                cooldown_left,
                runs,
                metric.get(rule.name),
                outcomes.get(rule.name, {}),
                shadow.get(rule.name, {}),
            )
        )
    return RulesView(
        rules=views,
        playbooks=list(ruleset.playbooks.values()),
        loaded_at=loaded_at,
        errors=errors,
        directory=directory,
        quarantines=quarantine.active(conn),
    )
