"""Owns running one scenario: the service's own ingest, grouping, guards and planning on a fake clock, in a
temporary SQLite database, against the scenario's world (world.py). Nothing leaves the process.

What is real: Alertmanager notifications go through `ingest.store.ingest_notification` (dedup,
incidents, resolution) and `playbooks.trigger.trigger_for_alerts` (matching, every guard, the loop
breaker, approvals) with the clock at each alert's `at`; metric rules are evaluated by
`metricrules.evaluator.evaluate_rule` at their interval; approvals go through
`playbooks.service.approve`; each execution is planned by `playbooks.approval_plans.plan_of`, the
plan an approver sees.

What is modelled (a run's steps are planned, not called):
- A live run starts when it is made (or approved). A step that would be refused or fail ends it
  `failed` at once, and it pages as a run would (`page_on_failure`, or the step's `on_failure:
  escalate`). Otherwise each planned change is made in the world and each notification step counts
  as a page sent; a playbook with `verify.resolved` runs until its incident resolves (`succeeded`,
  outcome `resolved`) or its `within` passes (`failed`, paged); one without ends `succeeded` at once.
  The steps after a `verify.resolved` (a restore once the incident resolved) are planned again and
  made when it resolves, on the world as it is then; a refused one fails the run there.
- A dry run (shadow rule, global dry run) is planned and ends `dry_run`: no change, no page.
- An execution awaiting approval waits for an `approvals:` entry, or is cancelled when its rule's
  approval timeout passes (and paged, as the service does).
"""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from controlplane.actions.base import ActionRegistry
from controlplane.actions.ports import ActionPorts
from controlplane.config import Settings
from controlplane.db.engine import make_engine, write_transaction
from controlplane.db.models import Base
from controlplane.db.tables import executions_t, incidents_t, links_t, pages_t
from controlplane.durations import format_duration, parse_duration
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import ingest_notification
from controlplane.metricrules.evaluator import DEFAULT_GROUP_BY, evaluate_rule
from controlplane.metricrules.evaluator import fingerprint as label_fingerprint
from controlplane.playbooks import approvals, ledger, pages
from controlplane.playbooks import service as executions
from controlplane.playbooks.approval_plans import plan_of
from controlplane.playbooks.contexts import ActionContexts, engine_ports
from controlplane.playbooks.planning import StepPlan
from controlplane.playbooks.trigger import Triggered, trigger_for_alerts
from controlplane.rules.loader import RuleSet
from controlplane.scenarios.outcome import Execution, Outcome
from controlplane.scenarios.schema import AlertIn, Approval, Scenario
from controlplane.scenarios.world import ScenarioPrometheus, ScenarioSilences, World, unsendable

NOTIFY_ACTIONS = ("notify.oncall", "notify.slack", "notify.pagerduty", "notify.escalate", "notify.webhook")
RECEIVER = "scenario"


class _Clock:
    def __init__(self, start: datetime) -> None:
        self.start = start
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def offset(self, when: datetime | None) -> timedelta | None:
        return when - self.start if when is not None else None


def run_scenario(
    scenario: Scenario, *, rules: RuleSet, registry: ActionRegistry, world: World, settings: Settings
) -> Outcome:
    """Run `scenario` against `rules` from its start to its end; what came of it."""
    with tempfile.TemporaryDirectory(prefix="controlplane-test-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'scenario.db'}")
        try:
            Base.metadata.create_all(engine)
            return _Run(scenario, rules, registry, world, settings, engine).run()
        finally:
            engine.dispose()


class _Run:
    def __init__(
        self,
        scenario: Scenario,
        rules: RuleSet,
        registry: ActionRegistry,
        world: World,
        settings: Settings,
        engine: Engine,
    ) -> None:
        self.scenario = scenario
        self.rules = rules
        self.registry = registry
        self.world = world
        self.engine = engine
        self.settings = settings
        self.clock = _Clock(scenario.start)
        self.group_by = scenario.group_by or list(DEFAULT_GROUP_BY)
        self.prometheus = ScenarioPrometheus(scenario.prometheus, start=scenario.start, clock=self.clock)
        admin_api, kubernetes = world.clients()
        notify = scenario.notify
        audit, incidents, threads, failover = engine_ports(engine)
        ports = ActionPorts(
            audit=audit,
            incidents=incidents,
            threads=threads,
            silences=ScenarioSilences(engine),
            failover=failover,
            kubernetes=kubernetes,  # type: ignore[arg-type]  # the in-memory cluster speaks its reads
            prometheus=self.prometheus,
            admin_api=admin_api,  # type: ignore[arg-type]
            http=unsendable("http"),
            slack=unsendable("slack") if notify.slack else None,
            pagerduty=unsendable("pagerduty") if notify.pagerduty else None,
            http_allowed_hosts=tuple(settings.http_allowed_hosts),
            notify_routes=dict(notify.routes) if notify.routes is not None else dict(settings.notify_routes),
            slack_channel=notify.slack_channel,
            public_url=None,
            prometheus_url=self.prometheus.url,
            alertmanager_url="http://alertmanager.scenario",
        )
        self.contexts = ActionContexts(ports=ports, clock=self.clock, rules=lambda: rules)
        self.outcome = Outcome()
        self.by_id: dict[int, Execution] = {}
        self._events: list[tuple[timedelta, int, str, Any]] = []
        self._seq = 0
        self._episodes: dict[str, datetime] = {}  # fingerprint -> startsAt of its firing episode

    # -- the clock ----------------------------------------------------------------------------

    def _at(self, when: timedelta, kind: str, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, payload))

    def run(self) -> Outcome:
        s = self.scenario
        for at in sorted({a.at for a in s.alerts}):
            self._at(at, "alerts", [a for a in s.alerts if a.at == at])
        for approval in s.approvals:
            self._at(approval.at, "approval", approval)
        last = max([a.at for a in s.alerts] + [a.at for a in s.approvals])
        end = s.until if s.until is not None else last + timedelta(hours=1)
        for rule in self.rules.metric_rules:
            assert rule.when is not None
            step = rule.when.interval or timedelta(seconds=self.settings.metric_rule_interval_seconds)
            tick = timedelta(0)
            while tick <= end:
                self._at(tick, "evaluate", rule)
                tick += step
        self._at(end, "end")
        while self._events:
            when, _, kind, payload = heapq.heappop(self._events)
            if when > end:
                break
            self.clock.now = s.start + when
            self._housekeeping()
            if kind == "alerts":
                self._alerts(payload)
            elif kind == "approval":
                self._approval(payload)
            elif kind == "evaluate":
                self._evaluate(payload)
            elif kind == "verify":
                self._verify_deadline(payload)
        return self._finish()

    def _housekeeping(self) -> None:
        """What the service's leader does on its schedule: settle outcomes, cancel approvals nobody gave."""
        with write_transaction(self.engine) as conn:
            ledger.settle_due(conn, now=self.clock.now)
            cancelled = approvals.expire_approvals(conn, now=self.clock.now, rules=self.rules.rules)
        for execution_id in cancelled:
            self._ended(execution_id, "cancelled")

    # -- what arrives -------------------------------------------------------------------------

    def _alerts(self, batch: Sequence[AlertIn]) -> None:
        now = self.clock.now
        alerts = []
        for a in batch:
            fingerprint = label_fingerprint(a.labels)  # as Alertmanager keys an alert: by its labels
            starts = self._episodes.setdefault(fingerprint, now)
            if a.status == "resolved":
                del self._episodes[fingerprint]
            alerts.append(
                {
                    "status": a.status,
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": starts.isoformat(),
                    "endsAt": now.isoformat() if a.status == "resolved" else "0001-01-01T00:00:00Z",
                    "generatorURL": "",
                    "fingerprint": fingerprint,
                }
            )
        notification = AlertmanagerNotification.model_validate(
            {
                "version": "4",
                "groupKey": "{}:{}",
                "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
                "receiver": RECEIVER,
                "groupLabels": {},
                "commonLabels": {},
                "commonAnnotations": {},
                "externalURL": "http://alertmanager.scenario",
                "alerts": alerts,
            }
        )
        with write_transaction(self.engine) as conn:
            result = ingest_notification(conn, notification, group_by=self.group_by, now=now)
            triggered = trigger_for_alerts(
                conn,
                alert_ids=result.new_alert_ids,
                rules=self.rules,
                default_group_by=self.group_by,
                now=now,
            )
        self._made(triggered)
        for incident_id in result.resolved_incident_ids:
            self._incident_resolved(incident_id)

    def _evaluate(self, rule: Any) -> None:
        made: list[Triggered] = []

        def on_ingest(conn: Connection, notification: AlertmanagerNotification, result: Any) -> None:
            if result.new_alert_ids:
                made.extend(
                    trigger_for_alerts(
                        conn,
                        alert_ids=result.new_alert_ids,
                        rules=self.rules,
                        default_group_by=self.group_by,
                        now=self.clock.now,
                        only=rule,
                    )
                )

        evaluation = evaluate_rule(
            rule,
            client=self.prometheus,
            engine=self.engine,
            now=self.clock.now,
            group_by=self.group_by,
            on_ingest=on_ingest,
        )
        self._made(made)
        for incident_id in evaluation.resolved_incident_ids:
            self._incident_resolved(incident_id)

    def _approval(self, approval: Approval) -> None:
        waiting = [e for e in self.outcome.executions if e.rule == approval.rule and e.status == "awaiting_approval"]
        if not waiting:
            self.outcome.pages.append(self._note(approval))
            return
        execution = waiting[0]
        with write_transaction(self.engine) as conn:
            if approval.reject:
                executions.reject(
                    conn=conn, execution_id=execution.id, actor=approval.by, reason="scenario", now=self.clock.now
                )
            else:
                executions.approve(
                    conn=conn, execution_id=execution.id, actor=approval.by, reason="scenario", now=self.clock.now
                )
            status = conn.execute(select(executions_t.c.status).where(executions_t.c.id == execution.id)).scalar_one()
        if status == "pending":
            self._start(execution)
        elif status != "awaiting_approval":
            self._ended(execution.id, status)

    def _note(self, approval: Approval) -> dict[str, Any]:
        """An approval with nothing to approve: kept as a page-shaped note, so the expectations show it."""
        return {
            "at": format_duration(approval.at),
            "rule": approval.rule,
            "kind": "approval_ignored",
            "to": approval.by,
            "text": f"no execution of {approval.rule} was waiting for approval",
        }

    # -- executions ---------------------------------------------------------------------------

    def _made(self, triggered: Sequence[Triggered]) -> None:
        if not triggered:
            return
        e = executions_t.c
        with self.engine.connect() as conn:
            rows = {
                row.id: row
                for row in conn.execute(
                    select(e.id, e.playbook_name, e.guard_key, e.dry_run, e.incident_id, e.context, e.created_at).where(
                        e.id.in_([t.execution_id for t in triggered])
                    )
                )
            }
        for t in triggered:
            row = rows[t.execution_id]
            alert = (row.context.get("alert") or {}).get("labels", {}).get("alertname")
            if t.status == "suppressed":
                decision = "suppressed"
            elif t.status == "awaiting_approval":
                decision = "awaiting_approval"
            else:
                decision = "dry_run" if row.dry_run else "run"
            execution = Execution(
                id=t.execution_id,
                at=self.clock.now - self.clock.start,
                rule=t.rule,
                playbook=row.playbook_name,
                alert=alert,
                key=row.guard_key,
                decision=decision,
                guard=t.guard,
                reason=t.reason,
                status=t.status,
                incident_id=row.incident_id,
            )
            if t.status == "suppressed":
                execution.ended_at = execution.at
            self.outcome.executions.append(execution)
            self.by_id[execution.id] = execution
            if t.status == "pending":
                self._start(execution)

    def _start(self, execution: Execution) -> None:
        now = self.clock.now
        with self.engine.connect() as conn:
            plan = plan_of(conn, execution_id=execution.id, registry=self.registry, contexts=self.contexts)
        execution.plan = plan
        dry = execution.decision == "dry_run"
        self._set(execution.id, status="running", started_at=now)
        execution.status = "running"
        verify = next((s for s in plan.steps if s.action == "verify.resolved" and s.plan is not None), None)
        if plan.stopped is not None:
            failing = next(s for s in plan.steps if s.status in ("refused", "error"))
            # A step after verify.resolved is planned again when the incident resolves: it decides then.
            if verify is None or failing.index < verify.index or dry:
                self._fail(execution, plan.stopped, escalate=self._step_escalates(execution, failing.index))
                return
        if dry:
            self._end(execution, "dry_run")
            return
        self._make(execution, plan.steps if verify is None else plan.steps[: verify.index])
        if verify is None or verify.plan is None:
            self._end(execution, "succeeded")
            return
        execution.verify_within = parse_duration(verify.plan.change["within"])
        execution.verify_index = verify.index
        self._at(now - self.clock.start + execution.verify_within, "verify", execution.id)

    def _make(self, execution: Execution, steps: Sequence[StepPlan]) -> None:
        """Make the planned changes of `steps` in the world; each notification step counts as a page sent."""
        for step in steps:
            if step.plan is None or step.status != "planned":
                continue
            self.world.apply(step.plan)
            if step.action in NOTIFY_ACTIONS:
                self.outcome.pages.append(
                    {
                        "at": format_duration(self.clock.now - self.clock.start),
                        "rule": execution.rule,
                        "kind": step.action,
                        "to": step.plan.target,
                        "text": step.plan.sentence,
                    }
                )

    def _after_verify(self, execution: Execution) -> tuple[StepPlan, str] | None:
        """Plan the steps after the run's verify.resolved again, now, and make them; the one that stops them, and
        why (as the plan says it)."""
        assert execution.plan is not None and execution.verify_index is not None
        with self.engine.connect() as conn:
            now = plan_of(conn, execution_id=execution.id, registry=self.registry, contexts=self.contexts)
        later = now.steps[execution.verify_index + 1 :]
        execution.plan.steps[execution.verify_index + 1 :] = later
        stop = next((s for s in later if s.status in ("refused", "error")), None)
        self._make(execution, later if stop is None else later[: later.index(stop)])
        return None if stop is None else (stop, now.stopped or stop.sentence)

    def _step_escalates(self, execution: Execution, index: int) -> bool:
        playbook = self.rules.playbooks.get(execution.playbook)
        return playbook is not None and index < len(playbook.steps) and playbook.steps[index].on_failure == "escalate"

    def _incident_resolved(self, incident_id: int) -> None:
        for execution in self.outcome.executions:
            if execution.incident_id == incident_id and execution.status == "running" and execution.verify_within:
                stopped = self._after_verify(execution)
                if stopped is not None:
                    step, reason = stopped
                    self._fail(execution, reason, escalate=self._step_escalates(execution, step.index))
                else:
                    self._end(execution, "succeeded", outcome="resolved")

    def _verify_deadline(self, execution_id: int) -> None:
        execution = self.by_id[execution_id]
        if execution.status == "running":
            within = format_duration(execution.verify_within or timedelta(0))
            self._fail(execution, f"the incident did not resolve within {within}", escalate=True)

    def _fail(self, execution: Execution, reason: str, *, escalate: bool) -> None:
        """End a live run failed; page as the executor does (page_on_failure, or the step's escalate)."""
        dry = execution.decision == "dry_run"
        rule = self.rules.rule(execution.rule)
        page = (escalate or (rule is not None and rule.page_on_failure)) and not dry
        self._end(execution, "dry_run" if dry else "failed", outcome=None if dry else "failed", reason=reason)
        if page:
            with write_transaction(self.engine) as conn:
                pages.record(
                    conn,
                    kind="execution_failed",
                    execution_id=execution.id,
                    incident_id=execution.incident_id,
                    rule=execution.rule,
                    reason=reason,
                    now=self.clock.now,
                )

    def _end(self, execution: Execution, status: str, *, outcome: str | None = None, reason: str | None = None) -> None:
        now = self.clock.now
        values: dict[str, Any] = {"status": status, "finished_at": now}
        if outcome is not None:
            values.update(outcome=outcome, outcome_at=now)
        if reason is not None:
            values["reason"] = reason
            execution.reason = reason
        self._set(execution.id, **values)
        self._ended(execution.id, status)

    def _ended(self, execution_id: int, status: str) -> None:
        execution = self.by_id.get(execution_id)
        if execution is not None:
            execution.status = status
            execution.ended_at = self.clock.now - self.clock.start

    def _set(self, execution_id: int, **values: Any) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(executions_t)
                .where(executions_t.c.id == execution_id)
                .values(updated_at=self.clock.now, **values)
            )

    # -- the end ------------------------------------------------------------------------------

    def _finish(self) -> Outcome:
        out = self.outcome
        i, p = incidents_t.c, pages_t.c

        def offset(when: datetime | None) -> str | None:
            return format_duration(when - self.clock.start) if when is not None else None

        with self.engine.connect() as conn:
            per_incident = select(links_t.c.incident_id, func.count()).group_by(links_t.c.incident_id)
            counts: dict[int, int] = {row[0]: row[1] for row in conn.execute(per_incident)}
            for row in conn.execute(select(incidents_t).order_by(i.id)):
                out.incidents.append(
                    {
                        "key": row.key,
                        "title": row.title,
                        "severity": row.severity,
                        "status": row.status,
                        "alerts": counts.get(row.id, 0),
                        "opened_at": offset(row.opened_at),
                        "resolved_at": offset(row.resolved_at),
                    }
                )
            control_pages = [
                {"at": offset(row.created_at), "rule": row.rule_name, "kind": row.kind, "to": None, "text": row.reason}
                for row in conn.execute(select(pages_t).order_by(p.created_at, p.id))
            ]
        out.pages = sorted(out.pages + control_pages, key=lambda page: parse_duration(page["at"]))
        out.world = self.world.state()
        return out
