"""Plans: what a playbook would do, read from the real targets (stand-ins, the sample app, Prometheus,
Alertmanager), with each target asserting that no mutating request arrived and the database stayed empty."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from controlplane.actions.base import (
    ActionContext,
    ActionRegistry,
    ActionResult,
    AlertView,
    IncidentView,
    NoParams,
    Plan,
    action,
)
from controlplane.actions.builtin import build_registry
from controlplane.config import Settings
from controlplane.playbooks.contexts import ActionContexts, build_ports
from controlplane.playbooks.planning import ExecutionPlan, plan_playbook
from controlplane.rules.loader import RuleSet
from controlplane.rules.schema import FailoverGroup, Playbook, Rule, Target
from tests.alertmanager_server import AlertmanagerServer
from tests.conftest import count_rows
from tests.helpers import T0
from tests.prometheus_server import PrometheusServer
from tests.sample_fixture import SampleApp
from tests.standins.kubernetes import KubernetesStandIn
from tests.standins.pagerduty import ROUTING_KEY, PagerDutyStandIn
from tests.standins.slack import TOKEN as SLACK_TOKEN
from tests.standins.slack import SlackStandIn

registry = build_registry()
NS, APP, CONFIG = "agents", "langgraph", "langgraph-config"
KUBE = Target(
    name="prod",
    kind="kubernetes",
    namespace=NS,
    deployment=APP,
    configmap=CONFIG,
    hpa=APP,
    min_replicas=2,
    max_replicas=20,
)
INCIDENT = IncidentView(
    id=42,
    key="k",
    status="firing",
    severity="critical",
    title="Graph chat failing",
    group_labels={"alertname": "GraphFailing", "namespace": NS},
)


def plan(
    settings: Settings,
    engine: Engine,
    steps: list[dict[str, Any]],
    *targets: Target,
    failover: tuple[FailoverGroup, ...] = (),
    incident: IncidentView | None = None,
    alert: AlertView | None = None,
) -> ExecutionPlan:
    rules = RuleSet(targets={t.name: t for t in targets}, failover={g.service: g for g in failover})
    contexts = ActionContexts(ports=build_ports(settings, engine), clock=lambda: T0, rules=lambda: rules)
    return plan_playbook(
        registry=registry,
        contexts=contexts,
        rule=Rule.model_validate({"name": "fix", "match": {"alertname": "X"}, "playbook": "pb"}),
        playbook=Playbook.model_validate({"name": "pb", "steps": steps}),
        alert=alert,
        incident=incident,
    )


def sentences(result: ExecutionPlan) -> list[str]:
    return [s.sentence for s in result.steps]


# -- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture
def k8s(tmp_path: Path) -> Iterator[tuple[KubernetesStandIn, Settings]]:
    server = KubernetesStandIn().start()
    server.add_workload(NS, APP, replicas=3)
    server.add_hpa(NS, APP, min_replicas=2, max_replicas=10, workload=APP)
    server.add_configmap(NS, CONFIG, {"disabled_graphs": "", "checkpoint_storage": "postgres"})
    token = tmp_path / "token"
    token.write_text(server.token)
    yield server, Settings(kube_api_url=server.url, kube_token_file=token)
    server.stop()


def test_kubernetes_plans_read_the_cluster_and_write_nothing(
    k8s: tuple[KubernetesStandIn, Settings], unused_engine: Engine
) -> None:
    server, settings = k8s
    result = plan(
        settings,
        unused_engine,
        [
            {"action": "k8s.scale", "with": {"target": "prod", "factor": 2}},
            {"action": "k8s.scale", "with": {"target": "prod", "replicas": 30}},
            {"action": "k8s.scale", "with": {"target": "prod", "replicas": 3}},
            {"action": "k8s.patch_hpa", "with": {"target": "prod", "max_replicas": 15}},
            {"action": "k8s.rollout_restart", "with": {"target": "prod"}},
            {"action": "graph.disable", "with": {"target": "prod", "graph": "chat"}},
            {"action": "storage.switch", "with": {"target": "prod", "backend": "backup"}},
        ],
        KUBE,
    )
    assert sentences(result) == [
        "step 1: scale agents/langgraph 3 → 6 replicas (bounds 2..20)",
        "step 2: scale agents/langgraph 3 → 20 replicas (asked for 30; clamped to max_replicas 20)",
        "step 3: leave agents/langgraph at 3 replicas: already as wanted (bounds 2..20)",
        "step 4: set autoscaler agents/langgraph min 2 → 2, max 10 → 15 (bounds 2..20)",
        "step 5: restart the pods of agents/langgraph (3 replicas, replaced one by one)",
        "step 6: disable graph chat on prod (0 disabled now; at most 1 disabled)",
        "step 7: switch checkpoint storage on prod postgres → backup",
    ]
    scale = result.steps[1].as_dict()
    assert scale["plan"]["change"] == {
        "workload": f"Deployment/{APP}",
        "namespace": NS,
        "from": 3,
        "to": 20,
        "requested": 30,
        "clamped": True,
        "bounds": [2, 20],
    }
    assert [s.status for s in result.steps] == ["planned"] * 7 and result.steps[2].plan is not None
    assert result.steps[2].plan.noop and not result.steps[0].plan.noop  # type: ignore[union-attr]
    # The stand-in saw reads only: no PUT or PATCH, and the objects are as they were.
    assert server.writes() == [] and {r.method for r in server.requests} == {"GET"}
    assert server.get("deployments", NS, APP)["spec"]["replicas"] == 3
    assert server.get("configmaps", NS, CONFIG)["data"] == {"disabled_graphs": "", "checkpoint_storage": "postgres"}


def test_a_plan_shows_the_bound_that_would_refuse_a_step_and_stops_where_the_run_would(
    k8s: tuple[KubernetesStandIn, Settings], unused_engine: Engine
) -> None:
    server, settings = k8s
    server.add_configmap(NS, CONFIG, {"disabled_graphs": "search"})
    steps = [
        {"action": "graph.disable", "with": {"target": "prod", "graph": "chat"}},
        {"action": "k8s.rollout_restart", "with": {"target": "prod"}},
    ]
    result = plan(settings, unused_engine, steps, KUBE)
    refused = result.steps[0]
    assert refused.status == "refused" and result.refused
    assert refused.as_dict()["refused"] == (
        "disabling 'chat' would make 2 disabled graphs on target 'prod', over its max_disabled_graphs of 1 "
        "(already disabled: search)"
    )
    assert refused.sentence.startswith(
        "step 1: disable graph chat on prod (1 disabled now; at most 1 disabled): refused"
    )
    assert len(result.steps) == 1 and result.stopped is not None and "on_failure: abort" in result.stopped
    # With on_failure: continue the run goes on, and so does the plan.
    steps[0]["on_failure"] = "continue"
    assert [s.status for s in plan(settings, unused_engine, steps, KUBE).steps] == ["refused", "planned"]
    # Invalid inputs are a plan error, as the run's step would fail, not a crash.
    bad = plan(settings, unused_engine, [{"action": "k8s.scale", "with": {"target": "prod"}}], KUBE)
    assert bad.steps[0].status == "error" and "give exactly one of" in (bad.steps[0].error or "")
    assert server.writes() == []


# -- the sample service's admin API ---------------------------------------------------------------


def test_graph_and_storage_plans_against_the_sample_service_send_no_post(
    sample_app: SampleApp, unused_engine: Engine
) -> None:
    target = Target(name="default", kind="http", url=f"{sample_app.url}/admin")
    client = sample_app.client
    graphs = client.graphs()
    steps = [
        {"id": "storage", "action": "storage.check", "with": {}},
        {"action": "graph.disable", "with": {"graph": "a"}},
        {"action": "graph.enable", "with": {"graph": "b"}},
        {"action": "storage.switch", "with": {"backend": "{{ steps.storage.output.healthy[-1] }}"}},
        {"action": "storage.cleanup_corrupted", "with": {}},
    ]
    result = plan(Settings(), unused_engine, steps, target)
    assert sentences(result) == [
        "step 1: check checkpoint storage on default: primary active, unhealthy: none",
        "step 2: disable graph a on default (3 of 3 enabled; at most 1 disabled)",
        "step 3: leave graph b on default: already enabled (3 of 3 enabled; at most 1 disabled)",
        "step 4: switch checkpoint storage on default primary → backup",
        "step 5: remove corrupted checkpoints from every backend on default (active: primary)",
    ]
    assert [s.status for s in result.steps] == ["ran", "planned", "planned", "planned", "planned"]
    assert result.steps[0].as_dict()["plan"]["result"]["value"] == "primary"
    # Nothing changed, and no POST reached the admin API (each carries an idempotency key it records).
    assert client.graphs() == graphs and client.storage()["active"] == "primary"
    assert client.idempotency() == {}
    # An unhealthy backup: the same refusal as the step's own check.
    client.fault(storage="backup", broken=True)
    switch = [{"action": "storage.switch", "with": {"backend": "backup"}}]
    refused = plan(Settings(), unused_engine, switch, target).steps[0]
    assert refused.status == "refused"
    assert (
        refused.as_dict()["refused"]
        == "checkpoint storage 'backup' of target 'default' is unhealthy; not switching to it"
    )


# -- Prometheus: a read-only step's value feeds a later step --------------------------------------


@pytest.mark.slow
def test_a_prometheus_step_runs_during_the_plan_and_its_value_renders_the_next_step(
    prometheus: PrometheusServer, sample_app: SampleApp, unused_engine: Engine
) -> None:
    name = prometheus.unique_name("graph_errors")
    for graph, value in {"a": 1, "b": 3, "c": 2}.items():
        prometheus.target.set(name, {"graph_name": graph}, value)
    prometheus.wait_for(f"count({name})", 3)
    target = Target(name="default", kind="http", url=f"{sample_app.url}/admin")
    steps = [
        {"id": "worst", "action": "prometheus.top", "with": {"query": name, "label": "graph_name"}},
        {"action": "graph.disable", "with": {"graph": "{{ steps.worst.value }}"}},
    ]
    result = plan(Settings(prometheus_url=prometheus.url), unused_engine, steps, target)
    assert [s.status for s in result.steps] == ["ran", "planned"]
    assert (
        result.steps[0].sentence
        == "step 1: query Prometheus (runs during the plan): found graph_name b highest of 3 series (3)"
    )
    assert result.steps[1].inputs == {"graph": "b"}
    assert result.steps[1].sentence == "step 2: disable graph b on default (3 of 3 enabled; at most 1 disabled)"
    assert sample_app.client.graphs() == {"a": True, "b": True, "c": True}


# -- Alertmanager ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_silence_plan_counts_the_firing_alerts_it_would_mute_and_creates_none(
    alertmanager: AlertmanagerServer, unused_engine: Engine
) -> None:
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    alerts = [
        {
            "labels": {"alertname": f"Plan{run}", "namespace": NS, "pod": pod},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat(),
        }
        for pod in ("p1", "p2", "p3", "p4")
    ]
    httpx.post(f"{alertmanager.url}/api/v2/alerts", json=alerts, timeout=5).raise_for_status()
    silences_before = httpx.get(f"{alertmanager.url}/api/v2/silences", timeout=5).json()
    settings = Settings(alertmanager_url=alertmanager.url)
    steps = [{"action": "alertmanager.silence", "with": {"matchers": {"alertname": f"Plan{run}", "namespace": NS}}}]
    result = plan(settings, unused_engine, steps)
    assert (
        result.steps[0].sentence
        == f"step 1: silence alertname=Plan{run},namespace={NS} for 1h (matches 4 firing alerts)"
    )
    assert result.steps[0].as_dict()["plan"]["change"]["firing"] == 4
    assert httpx.get(f"{alertmanager.url}/api/v2/silences", timeout=5).json() == silences_before
    # Matchers that would mute everything: the step's own bound refuses it in the plan.
    empty = plan(settings, unused_engine, [{"action": "alertmanager.silence", "with": {"matchers": {"a": ""}}}])
    assert empty.steps[0].status == "refused" and "at least one matcher" in (empty.steps[0].plan.refused or "")  # type: ignore[union-attr]


# -- PagerDuty, Slack, the log, failover: the database and the pagers see nothing --------------------


def test_paging_and_failover_plans_send_nothing_and_write_nothing(engine: Engine) -> None:
    slack, pagerduty = SlackStandIn(), PagerDutyStandIn()
    try:
        settings = Settings(
            slack_token=SLACK_TOKEN,
            slack_api_url=slack.url,
            slack_channel="#ops",
            pagerduty_routing_key=ROUTING_KEY,
            pagerduty_url=pagerduty.url,
            http_allowed_hosts=["127.0.0.1"],
        )
        group = FailoverGroup.model_validate(
            {
                "service": "api",
                "endpoints": [
                    {"name": "eu", "url": "http://eu.invalid", "region": "eu-west", "priority": 0},
                    {"name": "us", "url": "http://us.invalid", "region": "us-east", "priority": 1},
                ],
            }
        )
        steps = [
            {"action": "notify.pagerduty", "with": {"severity": "critical"}},
            {"action": "notify.slack", "with": {"text": "Disabling graph chat"}},
            {"action": "notify.oncall", "with": {"text": "Disabling graph chat"}},
            {"action": "notify.escalate", "with": {"reason": "it did not help"}},
            {"action": "notify.log", "with": {"text": "hello"}},
            {"action": "incident.annotate", "with": {"text": "found graph chat failing"}},
            {"action": "failover.switch", "with": {"service": "api"}},
            {"action": "verify.resolved", "with": {"within": "5m"}},
            {"action": "wait", "with": {"duration": "30s"}},
            # Pointed at the PagerDuty stand-in: it proves nothing is sent.
            {"action": "http.request", "with": {"url": pagerduty.url, "method": "POST"}},
            {"action": "notify.webhook", "with": {"url": pagerduty.url}},
            {"action": "notify.webhook", "with": {"url": "http://elsewhere.invalid/hook"}},
            {"action": "alertmanager.expire_silence", "with": {"silence_id": "abc"}},
            {"action": "http.request", "with": {"url": "http://elsewhere.invalid/"}, "on_failure": "continue"},
        ]
        result = plan(settings, engine, steps, failover=(group,), incident=INCIDENT)
        host = pagerduty.url.removeprefix("http://").rstrip("/")
        assert sentences(result) == [
            "step 1: page PagerDuty (critical) with dedup key controlplane-incident-42",
            "step 2: post incident #42's message to #ops on Slack: Disabling graph chat",
            "step 3: page PagerDuty (critical) with dedup key controlplane-incident-42",
            "step 4: page PagerDuty (critical) with dedup key controlplane-incident-42",
            "step 5: write to the service log (info): hello",
            "step 6: note on incident #42's timeline: found graph chat failing",
            "step 7: fail over api eu → us (us-east)",
            "step 8: verify incident #42 resolves within 5 min (now unknown)",
            "step 9: wait 30 s",
            f"step 10: send POST to {host} (expects HTTP 200, 201, 202, 204)",
            f"step 11: POST the webhook to {host}",
            "step 12: send no webhook: host 'elsewhere.invalid' is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS"
            " (not delivered)",
            "step 13: expire silence abc in Alertmanager",
            "step 14: send GET to elsewhere.invalid (expects HTTP 200, 201, 202, 204): refused "
            "(host 'elsewhere.invalid' is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS)",
        ]
        assert pagerduty.requests == [] and slack.requests == []
        for table in (
            "audit_events",
            "executions",
            "execution_steps",
            "endpoint_states",
            "active_endpoints",
            "failover_events",
            "notification_threads",
        ):
            assert count_rows(engine, table) == 0, table
    finally:
        slack.close()
        pagerduty.close()


def test_a_plan_function_that_tries_to_write_fails_its_step_instead_of_writing(engine: Engine) -> None:
    """The ports a plan gets refuse the control plane's own writes: an action's plan that audits is an error."""
    mine = ActionRegistry()

    def careless(ctx: ActionContext, _params: NoParams) -> Plan:
        ctx.audit("test.note", {"text": "written during a plan"})
        return Plan(action="test.careless", sentence="nothing")

    @action("test.careless", params=NoParams, plan=careless, into=mine)
    def _careless(_ctx: ActionContext, _params: NoParams) -> ActionResult:
        """Writes in its plan."""
        return ActionResult()

    rules = RuleSet()
    contexts = ActionContexts(ports=build_ports(Settings(), engine), clock=lambda: T0, rules=lambda: rules)
    result = plan_playbook(
        registry=mine,
        contexts=contexts,
        rule=Rule.model_validate({"name": "fix", "match": {"alertname": "X"}, "playbook": "pb"}),
        playbook=Playbook.model_validate({"name": "pb", "steps": [{"action": "test.careless"}]}),
        incident=INCIDENT,
    )
    assert result.steps[0].status == "error"
    assert result.steps[0].error == "PlanWriteRefused: a plan must not write: audit.record was called"
    assert count_rows(engine, "audit_events") == 0
