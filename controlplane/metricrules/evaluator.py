"""Owns evaluating one metric rule: its PromQL threshold with Prometheus `for:` semantics, state in the database.

A rule goes inactive -> pending when its condition first holds, pending -> firing once it has held
for `for`, and back to inactive as soon as it does not (or the query returns no data). Going firing
ingests a synthetic Alertmanager notification, so the incident opens, groups and triggers exactly
as an alert's would; going inactive ingests the same alert resolved.

State lives in `metric_rule_states`, so `for:` keeps counting across restarts and replicas. A
failed evaluation (Prometheus down, bad query) changes nothing but the error count: missing data
never resolves an incident. After ERRORS_BEFORE_INCIDENT failures in a row it opens a
`MetricRuleEvaluationFailed` incident, resolved by the next successful evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from controlplane.db.engine import write_transaction
from controlplane.db.tables import alerts_t, metric_states_t
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import IngestResult, ingest_notification
from controlplane.integrations.prometheus import Reduce
from controlplane.leader import Fence
from controlplane.rules.schema import Rule

log = structlog.get_logger("controlplane.metricrules")

INACTIVE, PENDING, FIRING = "inactive", "pending", "firing"
RECEIVER = "metric-rule"
SOURCE = "metric-rule"
FAILED_ALERTNAME = "MetricRuleEvaluationFailed"
ERRORS_BEFORE_INCIDENT = 3
DEFAULT_GROUP_BY = ("alertname", "namespace")

Outcome = Literal["inactive", "pending", "firing", "error"]
# Called inside the transaction that ingested a synthetic notification, e.g. to create the
# playbook executions of its new alerts in that same transaction (as the webhook path does).
IngestHook = Callable[[Connection, AlertmanagerNotification, IngestResult], None]


class QueryClient(Protocol):
    """What evaluation needs of Prometheus (PrometheusClient satisfies it)."""

    def query_scalar(self, promql: str, *, reduce: Reduce = "single") -> float | None: ...


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation found and did. `state` is the state after it (unchanged on error)."""

    rule: str
    outcome: Outcome
    state: str
    previous_state: str
    value: float | None
    evaluated_at: datetime
    error: str | None = None
    consecutive_errors: int = 0
    opened_incident_ids: list[int] = field(default_factory=list)
    resolved_incident_ids: list[int] = field(default_factory=list)


class EvaluationObserver(Protocol):
    """Told about every evaluation, failed ones included (MetricRuleMetrics is one)."""

    def observe(self, evaluation: Evaluation) -> None: ...


class MetricRuleMetrics:
    """The metric-rule metrics, on the app's registry (one per app, so tests stay independent)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.evaluations = Counter(
            "controlplane_metric_rule_evaluations",
            "Metric rule evaluations, by rule and outcome (inactive, pending, firing, error).",
            ["rule", "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            "controlplane_metric_rule_evaluation_errors",
            "Metric rule evaluations that failed (Prometheus unreachable, bad query, database error).",
            ["rule"],
            registry=registry,
        )
        self.last_evaluation = Gauge(
            "controlplane_metric_rule_last_evaluation_timestamp_seconds",
            "When the rule was last evaluated, successfully or not (a stale value means the scheduler stopped).",
            ["rule"],
            registry=registry,
        )

    def observe(self, evaluation: Evaluation) -> None:
        self.evaluations.labels(evaluation.rule, evaluation.outcome).inc()
        if evaluation.outcome == "error":
            self.errors.labels(evaluation.rule).inc()
        self.last_evaluation.labels(evaluation.rule).set(evaluation.evaluated_at.timestamp())


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex-digit fingerprint of a label set, like Alertmanager's (which hashes labels only)."""
    return hashlib.sha256(json.dumps(dict(labels), sort_keys=True).encode()).hexdigest()[:16]


def rule_alert_labels(rule: Rule) -> dict[str, str]:
    """The labels of a rule's alert. alertname and source come last so a rule's labels cannot hide them."""
    assert rule.when is not None
    return {**rule.when.labels, "alertname": rule.name, "source": SOURCE}


def failure_alert_labels(rule: Rule) -> dict[str, str]:
    return {"alertname": FAILED_ALERTNAME, "rule": rule.name, "severity": "warning", "source": SOURCE}


def evaluate_rule(
    rule: Rule,
    *,
    client: QueryClient,
    engine: Engine,
    now: datetime,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    observer: EvaluationObserver | None = None,
    on_ingest: IngestHook | None = None,
    errors_before_incident: int = ERRORS_BEFORE_INCIDENT,
    fence: Fence | None = None,
) -> Evaluation:
    """Evaluate `rule` once at `now` (timezone-aware) and record the result; query errors never raise.

    The value compared is the query's one series. When the query returns several series, the
    rule looks at the worst of them: the maximum for `above`, the minimum for `below` (so "any
    series past the threshold" holds, as a Prometheus alert on the same expression would fire).
    NaN samples count as no data. A database error does raise: nothing could be recorded.
    """
    condition = rule.when
    if condition is None:
        raise ValueError(f"rule {rule.name!r} is not a metric rule (it has no `when`)")
    value: float | None = None
    error: str | None = None
    try:
        value = client.query_scalar(condition.query, reduce="max" if condition.above is not None else "min")
    except Exception as exc:  # whatever the client raises, the schedule must go on
        error = str(exc) or type(exc).__name__
        log.warning("metric_rule.query_failed", rule=rule.name, error=error)

    # The query ran outside the transaction: no database lock is held across a network call.
    with write_transaction(engine) as conn:
        if fence is not None:
            fence(conn)  # leader-only write: a leader whose term ended (paused, replaced) records nothing
        state = _lock_state(conn, rule.name)
        if error is not None:
            evaluation = _record_error(conn, rule, state, error, now, group_by, on_ingest, errors_before_incident)
        else:
            evaluation = _record_value(conn, rule, state, value, now, group_by, on_ingest)
    if observer is not None:
        observer.observe(evaluation)
    if evaluation.previous_state != evaluation.state:
        log.info(
            "metric_rule.transition",
            rule=rule.name,
            previous=evaluation.previous_state,
            state=evaluation.state,
            value=evaluation.value,
        )
    return evaluation


def _lock_state(conn: Connection, rule_name: str) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(metric_states_t)
        .values(rule_name=rule_name, state=INACTIVE, consecutive_errors=0)
        .on_conflict_do_nothing(index_elements=["rule_name"])
    )
    # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers): two
    # evaluations of one rule, e.g. during a leader handover, apply one after the other.
    return conn.execute(select(metric_states_t).where(metric_states_t.c.rule_name == rule_name).with_for_update()).one()


def _holds(rule: Rule, value: float | None) -> bool:
    assert rule.when is not None
    if value is None or math.isnan(value):
        return False
    if rule.when.above is not None:
        return value > rule.when.above
    assert rule.when.below is not None
    return value < rule.when.below


def _record_value(
    conn: Connection,
    rule: Rule,
    state: Any,
    value: float | None,
    now: datetime,
    group_by: Sequence[str],
    on_ingest: IngestHook | None,
) -> Evaluation:
    assert rule.when is not None
    new_state: str = state.state
    active_since: datetime | None = state.active_since
    opened: list[int] = []
    resolved: list[int] = []
    if _holds(rule, value):
        assert value is not None
        if new_state == INACTIVE or active_since is None:
            new_state, active_since = PENDING, now
        # No elif: with `for: 0` the rule fires on the evaluation that first sees it hold.
        if new_state == PENDING and now - active_since >= rule.when.for_:
            new_state = FIRING
            alert = _alert("firing", rule_alert_labels(rule), _summary(rule, value), starts_at=active_since)
            result = _ingest(conn, alert, group_by, now, on_ingest)
            opened += result.opened_incident_ids
    else:
        if new_state == FIRING:
            resolved += _resolve_firing(conn, rule.name, lambda labels: True, group_by, now, on_ingest)
        new_state, active_since = INACTIVE, None
    if state.consecutive_errors >= 1:
        resolved += _resolve_firing(
            conn, FAILED_ALERTNAME, lambda labels: labels.get("rule") == rule.name, group_by, now, on_ingest
        )
    conn.execute(
        update(metric_states_t)
        .where(metric_states_t.c.rule_name == rule.name)
        .values(
            state=new_state,
            active_since=active_since,
            last_value=None if value is None or not math.isfinite(value) else value,
            last_evaluated_at=now,
            last_error=None,
            consecutive_errors=0,
        )
    )
    return Evaluation(
        rule=rule.name,
        outcome=new_state,  # type: ignore[arg-type]
        state=new_state,
        previous_state=state.state,
        value=value,
        evaluated_at=now,
        opened_incident_ids=opened,
        resolved_incident_ids=resolved,
    )


def _record_error(
    conn: Connection,
    rule: Rule,
    state: Any,
    error: str,
    now: datetime,
    group_by: Sequence[str],
    on_ingest: IngestHook | None,
    errors_before_incident: int,
) -> Evaluation:
    errors = state.consecutive_errors + 1
    opened: list[int] = []
    # Exactly at the threshold: one episode per run of failures, not a new alert per evaluation.
    if errors == errors_before_incident:
        summary = f"metric rule {rule.name} could not be evaluated {errors} times in a row: {error}"
        alert = _alert("firing", failure_alert_labels(rule), summary[:1000], starts_at=now)
        opened += _ingest(conn, alert, group_by, now, on_ingest).opened_incident_ids
    conn.execute(
        update(metric_states_t)
        .where(metric_states_t.c.rule_name == rule.name)
        .values(last_evaluated_at=now, last_error=error, consecutive_errors=errors)
    )
    return Evaluation(
        rule=rule.name,
        outcome="error",
        state=state.state,
        previous_state=state.state,
        value=None,
        evaluated_at=now,
        error=error,
        consecutive_errors=errors,
        opened_incident_ids=opened,
    )


def _summary(rule: Rule, value: float) -> str:
    assert rule.when is not None
    side, threshold = ("above", rule.when.above) if rule.when.above is not None else ("below", rule.when.below)
    return f"{rule.when.query} is {value:g} ({side} {threshold:g})"


def _alert(
    status: str, labels: dict[str, str], summary: str, *, starts_at: datetime, ends_at: datetime | None = None
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": summary},
        "startsAt": starts_at.isoformat(),
        "endsAt": (ends_at.isoformat() if ends_at else "0001-01-01T00:00:00Z"),
        "fingerprint": fingerprint(labels),
    }


def _ingest(
    conn: Connection, alert: dict[str, Any], group_by: Sequence[str], now: datetime, on_ingest: IngestHook | None
) -> IngestResult:
    """Ingest one synthetic alert as Alertmanager would deliver it (webhook payload version 4)."""
    labels = alert["labels"]
    notification = AlertmanagerNotification.model_validate(
        {
            "version": "4",
            "groupKey": f"{RECEIVER}:{json.dumps(labels, sort_keys=True)}",
            "status": alert["status"],
            "receiver": RECEIVER,
            "groupLabels": {"alertname": labels["alertname"]},
            "commonLabels": labels,
            "commonAnnotations": alert["annotations"],
            "alerts": [alert],
        }
    )
    actor = f"metric-rule:{labels.get('rule', labels['alertname'])}"
    result = ingest_notification(conn, notification, group_by=group_by, now=now, actor=actor)
    if on_ingest is not None:
        on_ingest(conn, notification, result)
    return result


def _resolve_firing(
    conn: Connection,
    alertname: str,
    belongs: Callable[[dict[str, str]], bool],
    group_by: Sequence[str],
    now: datetime,
    on_ingest: IngestHook | None,
) -> list[int]:
    """Resolve every firing episode this evaluator opened under `alertname`.

    Found in the alerts table rather than rebuilt from the rule, so an episode opened before the
    rule's labels were edited is still the one that gets resolved.
    """
    rows = conn.execute(
        select(alerts_t.c.fingerprint, alerts_t.c.labels, alerts_t.c.annotations, alerts_t.c.starts_at).where(
            alerts_t.c.alertname == alertname,
            alerts_t.c.receiver == RECEIVER,
            alerts_t.c.status == "firing",
        )
    ).all()
    resolved: list[int] = []
    for row in rows:
        if not belongs(row.labels):
            continue
        alert = _alert("resolved", row.labels, row.annotations.get("summary", ""), starts_at=row.starts_at, ends_at=now)
        alert["fingerprint"] = row.fingerprint  # the episode's key is (fingerprint, startsAt) as stored
        resolved += _ingest(conn, alert, group_by, now, on_ingest).resolved_incident_ids
    return resolved
