"""Metric rules against the real Prometheus, on SQLite and the real PostgreSQL: `for:`, incidents, outages, schedule."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, select

from controlplane.db.engine import make_engine
from controlplane.db.models import MetricRuleState
from controlplane.db.tables import alerts_t, incidents_t
from controlplane.incidents.keys import incident_key
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import IngestResult
from controlplane.integrations.prometheus import PrometheusClient
from controlplane.metricrules.evaluator import (
    FAILED_ALERTNAME,
    Evaluation,
    MetricRuleMetrics,
    evaluate_rule,
    fingerprint,
    rule_alert_labels,
)
from controlplane.metricrules.scheduler import MetricRuleScheduler
from controlplane.rules.schema import Rule
from tests.helpers import wait_for
from tests.prometheus_server import PrometheusServer, free_port

pytestmark = pytest.mark.slow

GROUP_BY = ["alertname", "namespace"]
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def metric_rule(name: str, query: str, *, enabled: bool = True, **when: Any) -> Rule:
    return Rule.model_validate({"name": name, "when": {"query": query, **when}, "playbook": "noop", "enabled": enabled})


class Gauge:
    """One series on the test target, with a rule-friendly name of its own."""

    def __init__(self, server: PrometheusServer, **labels: str) -> None:
        self.server = server
        self.name = server.unique_name("queue_depth")
        self.labels = labels
        self.rule_name = self.name.replace("_", "-")

    def set(self, value: float) -> None:
        self.server.target.set(self.name, self.labels, value)
        self.server.wait_for(f"max({self.name})", value)


@pytest.fixture
def client(prometheus: PrometheusServer) -> PrometheusClient:
    return PrometheusClient(prometheus.url, timeout=5)


@pytest.fixture
def dead_client() -> PrometheusClient:
    return PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=2)  # nothing listens there


@pytest.fixture
def metrics() -> MetricRuleMetrics:
    return MetricRuleMetrics(CollectorRegistry())


def sample(metrics: MetricRuleMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def incident(engine: Engine, alertname: str) -> Any:
    """The latest incident of an alertname (grouped by alertname + namespace; the tests set no namespace)."""
    with engine.connect() as conn:
        return conn.execute(
            select(incidents_t)
            .where(incidents_t.c.key == incident_key({"alertname": alertname}, GROUP_BY))
            .order_by(incidents_t.c.id.desc())
        ).first()


def alerts(engine: Engine, alertname: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(alerts_t).where(alerts_t.c.alertname == alertname).order_by(alerts_t.c.id)))


def state_of(engine: Engine, rule: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(MetricRuleState).where(MetricRuleState.rule_name == rule)).one()


def test_pending_then_firing_opens_an_incident_then_resolves(
    engine: Engine, prometheus: PrometheusServer, client: PrometheusClient, metrics: MetricRuleMetrics
) -> None:
    gauge = Gauge(prometheus)
    rule = metric_rule(gauge.rule_name, f"max({gauge.name})", above=3, **{"for": "2s"}, labels={"team": "agents"})
    gauge.set(5)

    def evaluate(at: datetime) -> Evaluation:
        return evaluate_rule(rule, client=client, engine=engine, now=at, group_by=GROUP_BY, observer=metrics)

    first = evaluate(T0)
    assert (first.previous_state, first.state, first.value) == ("inactive", "pending", 5.0)
    assert evaluate(T0 + timedelta(seconds=1)).state == "pending"
    assert incident(engine, rule.name) is None

    firing = evaluate(T0 + timedelta(seconds=2))
    assert firing.state == "firing"
    opened = incident(engine, rule.name)
    assert opened is not None and opened.status == "open"
    assert firing.opened_incident_ids == [opened.id]
    assert opened.title == f"max({gauge.name}) is 5 (above 3)"
    [alert] = alerts(engine, rule.name)
    assert alert.labels == {"team": "agents", "alertname": rule.name, "source": "metric-rule"}
    assert alert.fingerprint == fingerprint(rule_alert_labels(rule)) and len(alert.fingerprint) == 16
    assert alert.starts_at == T0  # the episode began when the condition first held, as in Prometheus
    assert alert.receiver == "metric-rule"

    assert evaluate(T0 + timedelta(seconds=3)).state == "firing"
    assert len(alerts(engine, rule.name)) == 1  # still firing: no new episode

    gauge.set(1)
    resolved = evaluate(T0 + timedelta(seconds=4))
    assert (resolved.previous_state, resolved.state) == ("firing", "inactive")
    assert resolved.resolved_incident_ids == [opened.id]
    assert incident(engine, rule.name).status == "resolved"
    [alert] = alerts(engine, rule.name)
    assert alert.status == "resolved" and alert.ends_at == T0 + timedelta(seconds=4)
    assert sample(metrics, "controlplane_metric_rule_evaluations_total", rule=rule.name, outcome="pending") == 2
    assert sample(metrics, "controlplane_metric_rule_evaluations_total", rule=rule.name, outcome="firing") == 2
    assert sample(
        metrics, "controlplane_metric_rule_last_evaluation_timestamp_seconds", rule=rule.name
    ) == pytest.approx((T0 + timedelta(seconds=4)).timestamp())


def test_condition_dropping_while_pending_restarts_the_for_clock(
    engine: Engine, prometheus: PrometheusServer, client: PrometheusClient
) -> None:
    gauge = Gauge(prometheus)
    rule = metric_rule(gauge.rule_name, gauge.name, below=10, **{"for": "2s"})
    gauge.set(5)
    assert evaluate_rule(rule, client=client, engine=engine, now=T0).state == "pending"
    gauge.set(50)
    assert evaluate_rule(rule, client=client, engine=engine, now=T0 + timedelta(seconds=1)).state == "inactive"
    gauge.set(5)
    again = evaluate_rule(rule, client=client, engine=engine, now=T0 + timedelta(seconds=2))
    assert again.state == "pending"  # not firing: the 2s count again from here
    assert state_of(engine, rule.name).active_since == T0 + timedelta(seconds=2)
    # An empty result is "not holding" too.
    gone = metric_rule(gauge.rule_name, f"{gauge.name}_absent", below=10)
    assert evaluate_rule(gone, client=client, engine=engine, now=T0 + timedelta(seconds=3)).state == "inactive"


def test_several_series_are_judged_by_their_worst(
    engine: Engine, prometheus: PrometheusServer, client: PrometheusClient
) -> None:
    name = prometheus.unique_name("latency")
    for graph, value in {"a": 1.0, "b": 7.0}.items():
        prometheus.target.set(name, {"graph_name": graph}, value)
    prometheus.wait_for(f"count({name})", 2)
    above = evaluate_rule(metric_rule("worst-above", name, above=5), client=client, engine=engine, now=T0)
    assert (above.state, above.value) == ("firing", 7.0)  # `for: 0` fires on the first evaluation
    below = evaluate_rule(metric_rule("worst-below", name, below=2), client=client, engine=engine, now=T0)
    assert (below.state, below.value) == ("firing", 1.0)
    calm = evaluate_rule(metric_rule("calm", name, above=8), client=client, engine=engine, now=T0)
    assert (calm.state, calm.value) == ("inactive", 7.0)


def test_for_state_survives_a_restart(
    database_url: str, engine: Engine, prometheus: PrometheusServer, client: PrometheusClient
) -> None:
    gauge = Gauge(prometheus)
    rule = metric_rule(gauge.rule_name, gauge.name, above=3, **{"for": "2s"})
    gauge.set(5)
    assert evaluate_rule(rule, client=client, engine=engine, now=T0).state == "pending"
    engine.dispose()

    # A new process: new engine, new client, same database.
    restarted = make_engine(database_url)
    try:
        after = evaluate_rule(
            rule, client=PrometheusClient(prometheus.url), engine=restarted, now=T0 + timedelta(seconds=2)
        )
        assert (after.previous_state, after.state) == ("pending", "firing")
        assert incident(restarted, rule.name).status == "open"
    finally:
        restarted.dispose()


def test_prometheus_down_keeps_the_incident_and_reports_the_failure(
    engine: Engine,
    prometheus: PrometheusServer,
    client: PrometheusClient,
    dead_client: PrometheusClient,
    metrics: MetricRuleMetrics,
) -> None:
    gauge = Gauge(prometheus)
    rule = metric_rule(gauge.rule_name, gauge.name, above=3)
    gauge.set(5)
    assert evaluate_rule(rule, client=client, engine=engine, now=T0, observer=metrics).state == "firing"
    opened = incident(engine, rule.name)

    for n in (1, 2, 3, 4):
        failed = evaluate_rule(rule, client=dead_client, engine=engine, now=T0 + timedelta(seconds=n), observer=metrics)
        assert (failed.outcome, failed.state, failed.consecutive_errors) == ("error", "firing", n)
        assert "cannot reach Prometheus" in (failed.error or "")
        assert incident(engine, rule.name).status == "open"  # missing data never resolves
        failure = incident(engine, FAILED_ALERTNAME)
        assert (failure is not None) == (n >= 3)
    row = state_of(engine, rule.name)
    assert row.consecutive_errors == 4 and "cannot reach Prometheus" in row.last_error
    assert sample(metrics, "controlplane_metric_rule_evaluation_errors_total", rule=rule.name) == 4
    [failure_alert] = alerts(engine, FAILED_ALERTNAME)  # one episode for the run of failures, not one per error
    assert failure_alert.labels["rule"] == rule.name and failure_alert.labels["severity"] == "warning"
    assert failure.severity == "warning" and failure.status == "open"

    recovered = evaluate_rule(rule, client=client, engine=engine, now=T0 + timedelta(seconds=5), observer=metrics)
    assert (recovered.outcome, recovered.consecutive_errors) == ("firing", 0)
    assert incident(engine, FAILED_ALERTNAME).status == "resolved"
    assert recovered.resolved_incident_ids == [failure.id]
    assert incident(engine, rule.name).id == opened.id and opened.status == "open"
    assert state_of(engine, rule.name).last_error is None


class FlakyHook:
    """An ingest hook (where the app creates executions) that fails its first call."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()

    def __call__(self, conn: Connection, notification: AlertmanagerNotification, result: IngestResult) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("hook failed once")
        self.called.set()


class Schedulers:
    """Makes schedulers over a rule list the test can change; shuts them all down afterwards."""

    def __init__(self, engine: Engine, client: PrometheusClient, metrics: MetricRuleMetrics) -> None:
        self.rules: list[Rule] = []
        self._made: list[MetricRuleScheduler] = []
        self._args = {"client": client, "engine": engine, "metrics": metrics}

    def make(self, **kwargs: Any) -> MetricRuleScheduler:
        scheduler = MetricRuleScheduler(
            lambda: self.rules, interval_seconds=0.2, group_by=GROUP_BY, **self._args, **kwargs
        )
        self._made.append(scheduler)
        return scheduler

    def shutdown(self) -> None:
        for scheduler in self._made:
            scheduler.shutdown()


@pytest.fixture
def schedulers(engine: Engine, client: PrometheusClient, metrics: MetricRuleMetrics) -> Iterator[Schedulers]:
    made = Schedulers(engine, client, metrics)
    yield made
    made.shutdown()


def test_scheduler_evaluates_on_its_own_and_survives_a_failed_evaluation(
    engine: Engine, prometheus: PrometheusServer, metrics: MetricRuleMetrics, schedulers: Schedulers
) -> None:
    gauge = Gauge(prometheus)
    gauge.set(5)
    rule = metric_rule(gauge.rule_name, gauge.name, above=3)
    schedulers.rules = [rule, metric_rule("not-yet", gauge.name, above=3, enabled=False)]
    hook = FlakyHook()
    scheduler = schedulers.make(on_ingest=hook)
    scheduler.start()
    assert [r.name for r in scheduler.rules()] == [rule.name]  # disabled rules are not scheduled

    # The first firing evaluation fails in the hook, so its transaction rolls back whole;
    # the schedule goes on and the next run opens the incident.
    assert hook.called.wait(10)
    wait_for("the next run opens the incident", lambda: incident(engine, rule.name) is not None, 10)
    assert hook.calls == 2
    assert len(alerts(engine, rule.name)) == 1
    assert scheduler.running
    assert sample(metrics, "controlplane_metric_rule_evaluations_total", rule=rule.name, outcome="error") == 1
    wait_for(
        "a second firing evaluation",
        lambda: sample(metrics, "controlplane_metric_rule_evaluations_total", rule=rule.name, outcome="firing") >= 2,
        10,
    )


def test_scheduler_resync_follows_the_rules(
    engine: Engine, prometheus: PrometheusServer, schedulers: Schedulers
) -> None:
    gauge = Gauge(prometheus)
    gauge.set(1)
    alert_rule = Rule.model_validate({"name": "alert", "match": {"a": "b"}, "playbook": "p"})
    schedulers.rules = [metric_rule("first", gauge.name, above=3), alert_rule]
    scheduler = schedulers.make()
    scheduler.resync()
    assert [e.rule for e in scheduler.evaluate_now()] == ["first"]  # alert rules are not metric rules
    schedulers.rules = [metric_rule("second", gauge.name, below=3, interval="1h")]
    scheduler.resync()
    [evaluation] = scheduler.evaluate_now()
    assert (evaluation.rule, evaluation.state) == ("second", "firing")
