"""Owns the sequences that cross domains: what follows new alerts, a fired metric rule, an approval.

Each domain does its own part (ingest stores alerts, incidents groups them, playbooks makes and
runs executions, silences expires what muted a resolved incident); the functions here say in which
order, as plain functions of what they need. `AlertFlows` binds them to one running service: it is
the ingest writer's hook and the metric-rule scheduler's.

One alert, from the route to its first step:
    api/webhook.py -> ingest/writer.py (group commit) -> ingest/store.py -> incidents/grouping.py
    -> flows.trigger_executions -> playbooks/trigger.py (guards, execution row), all in one transaction;
    after the commit flows.on_alerts_committed wakes the workers -> playbooks/worker.py claims it
    -> playbooks/executor.py runs its first step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine

from controlplane.config import ConsoleUser
from controlplane.db.engine import write_transaction
from controlplane.errors import Conflict, NotFound
from controlplane.incidents import service as incidents
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import IngestResult
from controlplane.integrations.slack import ApprovalCard
from controlplane.integrations.slack_interactions import Click
from controlplane.metricrules.evaluator import Evaluation
from controlplane.playbooks import service as executions
from controlplane.playbooks import slack_approvals
from controlplane.playbooks.approval_plans import PlanDrifted
from controlplane.playbooks.schemas import ExecutionDetail
from controlplane.playbooks.slack_approvals import DECIDERS, IncidentUrl, Planner
from controlplane.playbooks.trigger import Triggered, trigger_for_alerts
from controlplane.rules.holder import RulesHolder
from controlplane.rules.loader import RuleSet
from controlplane.telemetry import Metrics

Wake = Callable[[], None]  # wakes the workers: Worker.notify
ExpireSilences = Callable[[int], None]  # queues the expiry of an incident's silences: ExpiryOnResolve.submit


def trigger_executions(
    conn: Connection, alert_ids: list[int], *, rules: RuleSet, default_group_by: Sequence[str]
) -> list[Triggered]:
    """Inside the ingest transaction: an execution for every alert rule that matches a new firing alert."""
    if not len(rules.index):  # no alert rules: spare the hot path a query
        return []
    return trigger_for_alerts(conn, alert_ids=alert_ids, rules=rules, default_group_by=default_group_by)


def count_suppressions(triggered: Sequence[Triggered], *, metrics: Metrics) -> None:
    for t in triggered:
        if t.guard:
            metrics.guard_suppressions.labels(t.rule, t.guard).inc()


def executions_created(triggered: Sequence[Triggered], *, metrics: Metrics, wake: Wake) -> None:
    """After their commit: count the guards' suppressions; wake the workers when one can run now."""
    count_suppressions(triggered, metrics=metrics)
    if any(t.status == "pending" for t in triggered):
        wake()


def on_alerts_committed(
    results: Sequence[IngestResult],
    triggered: Sequence[Triggered],
    *,
    metrics: Metrics,
    wake: Wake,
    expire_silences: ExpireSilences,
) -> None:
    """After a batch of notifications committed: run what they triggered, and lift the silences of the
    incidents they resolved (ours must not hide the next episode)."""
    executions_created(triggered, metrics=metrics, wake=wake)
    for result in results:
        for incident_id in result.resolved_incident_ids:
            expire_silences(incident_id)


def on_metric_rule_fired(
    conn: Connection,
    notification: AlertmanagerNotification,
    result: IngestResult,
    *,
    rules: RuleSet,
    default_group_by: Sequence[str],
    metrics: Metrics,
) -> None:
    """Inside the evaluation's transaction, after its synthetic alert was ingested: the rule's own execution,
    so the incident and its executions commit together. (MetricRuleEvaluationFailed has no rule.)
    The workers are woken after the commit (`on_metric_rule_evaluated`): woken now, one could look
    before the execution is visible and sleep a whole poll."""
    rule = rules.rule(notification.alerts[0].alertname)  # the synthetic alert is named after its rule
    if rule is None or rule.when is None or not result.new_alert_ids:
        return
    triggered = trigger_for_alerts(
        conn, alert_ids=result.new_alert_ids, rules=rules, default_group_by=default_group_by, only=rule
    )
    count_suppressions(triggered, metrics=metrics)


def on_metric_rule_evaluated(evaluation: Evaluation, *, wake: Wake, expire_silences: ExpireSilences) -> None:
    """After an evaluation committed: wake the workers for the execution a new episode may have made, and
    lift the silences of the incidents it resolved, as on_alerts_committed does for Alertmanager's alerts."""
    if evaluation.state == "firing" and evaluation.previous_state != "firing":
        wake()
    for incident_id in evaluation.resolved_incident_ids:
        expire_silences(incident_id)


def approve_execution(
    *, engine: Engine, execution_id: int, actor: str, reason: str, now: datetime, wake: Wake, via: str = "console"
) -> ExecutionDetail:
    """Approve an execution awaiting approval, commit, then wake the workers so it runs now, not at the next poll.

    The wake comes after the commit: a worker woken earlier might look before the approval is
    visible and go back to sleep for a whole poll.
    """
    with write_transaction(engine) as conn:
        detail = executions.approve(conn=conn, execution_id=execution_id, actor=actor, reason=reason, now=now, via=via)
    wake()
    return detail


@dataclass(frozen=True)
class SlackAnswer:
    refusal: str | None  # told to the person who clicked, them alone
    card: ApprovalCard | None  # the approval message as it should now read; None: no such execution


def decide_from_slack(
    *,
    engine: Engine,
    click: Click,
    users: Mapping[str, ConsoleUser],
    now: datetime,
    wake: Wake,
    incident_url: IncidentUrl,
    planner: Planner,
) -> SlackAnswer:
    """An Approve or Reject clicked in Slack, as the console user mapped to that Slack user: the same approval
    as the console's (two-person approval counts it), refused with a reason for anyone else.

    An Approve approves the change the message showed: the plan is made again, and if it moved (replicas
    are 8 now, another graph was disabled) the approval is refused with the new change, and the message
    shows it, its Approve now carrying the new plan's digest."""
    user = users.get(click.slack_user)
    refusal: str | None = None
    drifted = False
    if user is None:
        refusal = (
            f"Your Slack user {click.slack_user} is not linked to a console user, so your click was not counted: "
            f"ask an admin to add `slack_user: {click.slack_user}` to your entry in the console users file."
        )
    elif user.role not in DECIDERS:
        refusal = f"{user.name} is a {user.role} in the console: approving or rejecting needs the operator role."
    else:
        actor = f"user:{user.name}"
        try:
            if click.decision == "approve":
                planner.check(engine, click.execution_id, click.seen)
                approve_execution(
                    engine=engine,
                    execution_id=click.execution_id,
                    actor=actor,
                    reason="",
                    now=now,
                    wake=wake,
                    via="slack",
                )
            else:
                with write_transaction(engine) as conn:
                    executions.reject(
                        conn=conn,
                        execution_id=click.execution_id,
                        actor=actor,
                        reason=f"rejected by {actor} in Slack",
                        now=now,
                    )
        except PlanDrifted as exc:
            refusal, drifted = str(exc), True
        except (Conflict, NotFound) as exc:
            refusal = str(exc)
    with engine.connect() as conn:
        try:
            shown: ApprovalCard | None = slack_approvals.card(
                conn, click.execution_id, incident_url=incident_url, planner=planner
            )
        except NotFound:
            shown = None
    if drifted and shown is not None and shown.outcome is not None:  # decided meanwhile: no change to approve
        refusal = f"Execution #{click.execution_id} cannot be approved any more: {shown.outcome}."
    return SlackAnswer(refusal, shown)


def resolve_incident(
    *, engine: Engine, incident_id: int, actor: str, reason: str, now: datetime, expire_silences: ExpireSilences
) -> None:
    """Resolve an incident by hand, commit, then lift the silences we created for it, as when its alerts
    resolve: a silence left behind would hide the next episode for the rest of its duration."""
    with write_transaction(engine) as conn:
        incidents.resolve(conn=conn, incident_id=incident_id, actor=actor, now=now, reason=reason)
    expire_silences(incident_id)


@dataclass(frozen=True)
class AlertFlows:
    """The flows of one running service: the ingest writer's hook (ingest.writer.IngestHook) and the metric
    rules' (`metric_rule_fired`). The rules are read when each runs: a reload takes effect at once."""

    rules: RulesHolder
    default_group_by: Sequence[str]
    metrics: Metrics
    wake: Wake
    expire_silences: ExpireSilences

    def in_transaction(self, conn: Connection, new_alert_ids: list[int]) -> list[Triggered]:
        return trigger_executions(conn, new_alert_ids, rules=self.rules.current, default_group_by=self.default_group_by)

    def committed(self, results: Sequence[IngestResult], followups: list[Triggered] | None) -> None:
        on_alerts_committed(
            results, followups or [], metrics=self.metrics, wake=self.wake, expire_silences=self.expire_silences
        )

    def metric_rule_fired(self, conn: Connection, notification: AlertmanagerNotification, result: IngestResult) -> None:
        on_metric_rule_fired(
            conn,
            notification,
            result,
            rules=self.rules.current,
            default_group_by=self.default_group_by,
            metrics=self.metrics,
        )

    def metric_rule_evaluated(self, evaluation: Evaluation) -> None:
        on_metric_rule_evaluated(evaluation, wake=self.wake, expire_silences=self.expire_silences)
