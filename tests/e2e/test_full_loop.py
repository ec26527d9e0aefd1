"""End to end, with the real binaries: a failing service is found, remediated and closed without anyone.

The `controlplane demo` stack (controlplane/demo/): the sample service, `prometheus` loading the
shipped alerting rules, `prometheus-alertmanager` posting to the webhook with a bearer token from
a file, and `controlplane serve` on SQLite with the shipped rules. Alert `for:` durations and
range windows are divided by 30 (2m -> 4s, 5m -> 10s) and verify.resolved polls every second:
otherwise a disabled graph keeps its 5-minute error rate, and its alert, for minutes.

Every wait has a deadline and fails with the processes' logs. Missing binaries skip locally and
fail under CI=true.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jsonschema_rs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.actions.builtin import build_registry
from controlplane.db.engine import make_engine
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR
from controlplane.demo import BINARIES, Stack
from controlplane.replay.run import replay
from controlplane.rules.loader import load_rules
from tests import helpers
from tests.conftest import require_binary
from tests.integration.test_postmortem import SCHEMA_FILE as POSTMORTEM_SCHEMA

pytestmark = pytest.mark.slow

ERROR_ALERT = "LangGraphHighErrorRate"
CHECKPOINT_ALERT = "LangGraphCheckpointFailures"
PROVIDER_ALERT = "LLMProviderErrors"
QUOTA_ALERT = "LLMQuotaExhausted"
GRAPH = "chat"
# The playbook's steps in order; each must appear as step.succeeded on the incident's timeline.
DISABLE_STEPS = ["prometheus.top", "graph.disable", "incident.annotate", "notify.oncall", "verify.resolved"]
T = TypeVar("T")


def start_stack(workdir: Path, **options: Any) -> Stack:
    for binary in BINARIES:
        require_binary(binary)
    return Stack(workdir, rules_dir=DEFAULTS_DIR / "rules", alerting_dir=DEFAULTS_DIR / "alerting", **options)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


def wait_for(stack: Stack, predicate: Callable[[], T | None], what: str, timeout: float) -> T:
    """The predicate's first truthy value; on the deadline, fail with what was awaited and every log."""
    # An HTTP error is a server between restarts of nothing: look again until the deadline.
    return helpers.wait_for(what, predicate, timeout, interval=0.25, retry_on=(httpx.HTTPError,), details=stack.logs)


def error_count(stack: Stack, graph: str) -> float:
    """The sample's own error counter of `graph`, from its /metrics (not through Prometheus)."""
    text = stack.http.get(f"{stack.sample_url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "langgraph_executions_total" and sample.labels == {"graph_name": graph, "status": "error"}
    )


def resolved_incident(stack: Stack, alertname: str) -> dict[str, Any] | None:
    incident = stack.incident_for(alertname)
    return incident if incident is not None and incident["status"] == "resolved" else None


def finished_executions(stack: Stack, incident_id: int) -> list[dict[str, Any]] | None:
    executions: list[dict[str, Any]] = stack.api("/api/v1/executions", incident_id=incident_id)["items"]
    done = executions and all(e["status"] not in ("pending", "running", "waiting") for e in executions)
    return executions if done else None


def assert_in_order(actual: list[str], expected: list[str]) -> None:
    """`expected` is a subsequence of `actual` (other events may come in between)."""
    rest = iter(actual)
    missing = [item for item in expected if item not in rest]
    assert not missing, f"timeline lacks {missing} in order; it has {actual}"


def run_error_loop(stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fail GRAPH, wait for the whole loop; returns the resolved incident (with timeline) and its one execution."""
    stack.admin("POST", "/faults", {"graph": GRAPH, "error_rate": 1.0})
    wait_for(
        stack,
        lambda: [a for a in stack.prometheus_alerts(ERROR_ALERT) if a["state"] == "firing"],
        f"Prometheus fires {ERROR_ALERT}",
        timeout=30,
    )
    wait_for(stack, lambda: stack.incident_for(ERROR_ALERT), "Alertmanager posts the alert: an incident opens", 20)
    wait_for(stack, lambda: GRAPH in stack.admin("GET", "/graphs")["disabled"], f"graph {GRAPH} disabled", 20)

    # The service no longer runs the graph: its error counter stands still while other graphs run on.
    before, others = error_count(stack, GRAPH), stack.admin("GET", "/graphs")["graphs"]
    assert before > 0
    time.sleep(10 * stack.tick)
    assert error_count(stack, GRAPH) == before
    after = {g["name"]: g["executions"] for g in stack.admin("GET", "/graphs")["graphs"]}
    assert all(after[g["name"]] > g["executions"] for g in others if g["name"] != GRAPH)

    incident = wait_for(stack, lambda: resolved_incident(stack, ERROR_ALERT), "the alert resolves", 60)
    executions = wait_for(stack, lambda: finished_executions(stack, incident["id"]), "the playbook finishes", 20)
    assert len(executions) == 1, f"one execution per rule and alert episode, got {executions}"
    execution = stack.api(f"/api/v1/executions/{executions[0]['id']}")
    return stack.api(f"/api/v1/incidents/{incident['id']}"), execution


def test_failing_graph_is_disabled_and_its_incident_resolves(stack: Stack) -> None:
    try:
        incident, execution = run_error_loop(stack)
    finally:
        stack.admin("DELETE", "/faults")
        stack.admin("POST", f"/graphs/{GRAPH}/enable")

    assert (execution["rule_name"], execution["playbook_name"], execution["status"], execution["outcome"]) == (
        "high-error-rate",
        "disable-problem-graph",
        "succeeded",
        "resolved",  # the ledger: its verify step saw the incident resolve
    )
    assert incident["automation"] == "succeeded"
    [day, _week] = stack.api("/api/v1/rules/outcomes", rule="high-error-rate")
    assert (day["counts"]["resolved"], day["success_rate"]) == (1, 1.0)
    steps = {s["action"]: s for s in execution["steps"]}
    assert [s["action"] for s in execution["steps"]] == DISABLE_STEPS
    assert all(s["status"] == "succeeded" for s in execution["steps"]), execution["steps"]
    assert steps["prometheus.top"]["output"]["value"] == GRAPH
    assert steps["graph.disable"]["inputs"]["graph"] == GRAPH

    [alert] = incident["alerts"]
    assert (alert["alertname"], alert["labels"]["graph_name"], alert["status"]) == (ERROR_ALERT, GRAPH, "resolved")
    # Its runbook link, as Prometheus and Alertmanager delivered it, opens its section on the control plane.
    runbook = alert["annotations"]["runbook_url"]
    assert runbook == f"{stack.controlplane_url}/runbooks/RUNBOOKS.md#langgraphhigherrorrate"
    page = stack.http.get(runbook.partition("#")[0])
    assert page.status_code == 200 and '<h2 id="langgraphhigherrorrate">' in page.text
    timeline = [
        f"{e['action']} {e['detail'].get('action', '')}".strip()
        for e in incident["timeline"]
        if e["action"] != "execution.waiting"  # one per verify poll
    ]
    assert "incident.opened" in timeline
    assert_in_order(
        timeline,
        [
            "alert.firing",
            "execution.created",
            *(f"step.succeeded {action}" for action in DISABLE_STEPS[:-1]),
            "alert.resolved",
            "incident.resolved",
            "step.succeeded verify.resolved",
            "execution.succeeded",
        ],
    )

    # The postmortem tells the story: the rule, the disabled graph, the verification, the alert's times.
    document = stack.api(f"/api/v1/incidents/{incident['id']}/postmortem", format="json")
    jsonschema_rs.validate(json.loads(POSTMORTEM_SCHEMA.read_text()), document)
    markdown = stack.http.get(
        f"{stack.controlplane_url}/api/v1/incidents/{incident['id']}/postmortem",
        params={"format": "md"},
        headers={"Authorization": f"Bearer {stack.read_token}"},
    )
    assert markdown.status_code == 200, markdown.text
    text = markdown.text
    for expected in ("high-error-rate", "disable-problem-graph", "graph.disable", "verify.resolved", ERROR_ALERT):
        assert expected in text, f"{expected} missing from the postmortem:\n{text}"
    assert GRAPH in text
    started = datetime.fromisoformat(alert["starts_at"]).astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert started[:19] in text  # the alert's first seen (to the second)
    assert "## Root cause" in text and "## Follow-ups" in text


def test_checkpoint_failures_switch_to_backup_storage(stack: Stack) -> None:
    """Broken primary storage: failing saves switch checkpoint storage to the backup, once. (The checkpointer's
    own health alert, LangGraphCheckpointerDown, fires too and opens an incident of its own for on-call.)"""
    before = {e["id"] for e in stack.api("/api/v1/executions", rule="checkpoint-failures")["items"]}
    stack.admin("POST", "/faults", {"storage": "primary", "broken": True})
    try:
        wait_for(
            stack, lambda: resolved_incident(stack, CHECKPOINT_ALERT), f"{CHECKPOINT_ALERT} fires and resolves", 60
        )

        def runs_ended() -> list[dict[str, Any]] | None:
            items = stack.api("/api/v1/executions", rule="checkpoint-failures")["items"]
            runs = [e for e in items if e["id"] not in before]
            ended = runs and all(e["status"] not in ("pending", "running", "waiting") for e in runs)
            return runs if ended and any(e["status"] != "suppressed" for e in runs) else None

        # Either alert may come first: the run may belong to the other alert's incident.
        runs = wait_for(stack, runs_ended, "the playbook finishes", 40)
        storage = stack.admin("GET", "/storage")
    finally:
        stack.admin("DELETE", "/faults")
        stack.admin("POST", "/storage/switch", {"backend": "primary"})

    assert storage["active"] == "backup"
    ran = [e for e in runs if e["status"] != "suppressed"]
    assert [e["status"] for e in ran] == ["succeeded"], runs
    assert all(e["guard"] in ("active", "cooldown") for e in runs if e["status"] == "suppressed"), runs
    execution = stack.api(f"/api/v1/executions/{ran[0]['id']}")
    assert execution["playbook_name"] == "switch-to-backup-storage"
    switch = next(s for s in execution["steps"] if s["action"] == "storage.switch")
    assert (switch["status"], switch["output"]["previous"]) == ("succeeded", "primary")


def llm_requests(stack: Stack, model: str, outcome: str | None = None) -> float:
    """The sample's own count of LLM requests to `model` (`provider/name`), from its /metrics."""
    provider, _, name = model.partition("/")
    text = stack.http.get(f"{stack.sample_url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "langgraph_llm_requests_total"
        and (sample.labels["gen_ai_provider_name"], sample.labels["gen_ai_request_model"]) == (provider, name)
        and outcome in (None, sample.labels["outcome"])
    )


def graphs_on(stack: Stack, model: str) -> list[str]:
    return sorted(g for g, state in stack.admin("GET", "/llm")["graphs"].items() if state["model"] == model)


def run_llm_loop(stack: Stack, fault: dict[str, Any], alertname: str) -> tuple[list[dict[str, Any]], float, list[str]]:
    """Inject `fault` on the graphs' model, wait until the alert's incident resolved and its runs ended; their
    details, the seconds from the fault to the resolved incident, and the graphs that were on the model."""
    model = fault["model"]
    graphs = graphs_on(stack, model)
    assert graphs, f"no graph runs on {model}"
    injected = time.monotonic()
    stack.admin("POST", "/faults", fault)
    try:
        incident = wait_for(stack, lambda: resolved_incident(stack, alertname), f"{alertname} fires and resolves", 90)
        took = time.monotonic() - injected
        runs = wait_for(stack, lambda: finished_executions(stack, incident["id"]), "the playbooks finish", 30)
        details = [stack.api(f"/api/v1/executions/{run['id']}") for run in runs]
        moved = {graph: stack.admin("GET", "/llm")["graphs"][graph]["model"] for graph in graphs}
    finally:
        stack.admin("DELETE", "/faults")
        for graph in graphs:
            stack.admin("POST", f"/graphs/{graph}/llm", {"model": model})
    assert all(to != model for to in moved.values()), f"graphs still on {model}: {moved}"
    return details, took, graphs


def steps_of(execution: dict[str, Any]) -> list[tuple[str, str]]:
    return [(step["action"], step["status"]) for step in execution["steps"] if step["phase"] == "forward"]


def test_a_provider_outage_fails_graphs_over_and_a_canary_proves_it(stack: Stack) -> None:
    """The primary model answers 529 overloaded: each graph on it moves to the next healthy model, the canary
    passes there, and the alert, no longer fed, resolves the incident."""
    model = stack.admin("GET", "/llm")["models"][0]["model"]
    fault = {"model": model, "llm_error": "overloaded", "error_rate": 1.0}
    executions, took, graphs = run_llm_loop(stack, fault, PROVIDER_ALERT)
    print(f"provider outage: fault -> resolved incident in {took:.1f}s (alert windows / {stack.time_scale:g})")
    assert sorted(e["steps"][0]["inputs"]["graph"] for e in executions) == graphs  # one run per graph
    for execution in executions:
        assert (execution["rule_name"], execution["status"]) == ("llm-provider-outage", "succeeded"), execution
        assert steps_of(execution) == [
            ("llm.failover", "succeeded"),
            ("graph.canary", "succeeded"),
            ("incident.annotate", "succeeded"),
            ("notify.oncall", "succeeded"),
            ("verify.resolved", "succeeded"),
        ]
        failover, canary = execution["steps"][0], execution["steps"][1]
        assert failover["output"]["previous"] == model and failover["output"]["value"] != model
        assert canary["output"]["value"] == 5  # every synthetic run succeeded on the new model


def test_an_exhausted_quota_pages_and_fails_over_without_a_retry_storm(stack: Stack) -> None:
    """Quota refusals cannot be retried away: on-call is paged first, the graphs leave the model, and the
    requests to the exhausted model stop there (bounded: nothing keeps calling it)."""
    model = stack.admin("GET", "/llm")["graphs"]["search"]["model"]
    refused_before = llm_requests(stack, model, "quota_exhausted")
    fault = {"model": model, "llm_error": "quota_exhausted", "error_rate": 1.0}
    executions, took, graphs = run_llm_loop(stack, fault, QUOTA_ALERT)
    refused = llm_requests(stack, model, "quota_exhausted") - refused_before
    print(f"quota exhausted: fault -> resolved incident in {took:.1f}s; {refused:g} requests refused for quota")
    for execution in executions:
        assert (execution["rule_name"], execution["status"]) == ("llm-quota-exhausted", "succeeded"), execution
        assert [action for action, _ in steps_of(execution)] == [
            "notify.oncall",  # paged before anything else
            "llm.failover",
            "graph.canary",
            "verify.resolved",
        ]
        retried = [s["action"] for s in execution["steps"] if s["attempts"] > 1 and s["action"] != "verify.resolved"]
        assert not retried, f"retried against a refusing provider: {retried}"  # verify.resolved polls, by design
    # Bounded: at most one request per graph per tick reached the model while the alert took to fire and act
    # (no retries on top), and none after: the graphs left it.
    assert 0 < refused <= len(graphs) * (took / stack.tick + 5)
    time.sleep(10 * stack.tick)
    assert llm_requests(stack, model, "quota_exhausted") - refused_before == refused


def test_replay_reproduces_the_loops_history(stack: Stack) -> None:
    """`controlplane replay` of what the loops above stored, with the rules in force (the stack's sped-up
    copy), makes every decision the service made; and it reads the database while the service runs."""
    engine = make_engine(f"sqlite:///{stack.workdir / 'controlplane.db'}")
    try:
        now = datetime.now(UTC)
        report = replay(
            engine,
            rules=load_rules(stack.workdir / "rules", build_registry()),
            rules_label="in force",
            default_group_by=["alertname", "namespace"],
            start=now - timedelta(hours=1),
            end=now + timedelta(minutes=1),
        )
    finally:
        engine.dispose()
    assert report.reproduces, report.lines()
    ran = {r.rule: r.ran for r in report.per_rule}
    assert all(ran.get(rule, 0) >= 1 for rule in ("high-error-rate", "checkpoint-failures", "llm-provider-outage")), (
        report.lines()
    )


def test_clustered_alertmanagers_run_the_playbook_once(tmp_path: Path) -> None:
    """Both members get every alert from Prometheus and both may deliver it: the playbook still runs once.

    --cluster.peer-timeout=0s makes the second member send without waiting for the first one's
    gossip, as during a partition or slow gossip, so duplicate deliveries really reach the webhook.
    """
    with start_stack(tmp_path, alertmanagers=2, peer_timeout="0s") as stack:
        incident, execution = run_error_loop(stack)
        assert execution["status"] == "succeeded"
        all_runs = stack.api("/api/v1/executions", rule="high-error-rate")["items"]
        assert [e["id"] for e in all_runs] == [execution["id"]]
        [alert] = incident["alerts"]  # stored once, however often it arrived
        sent = [webhook_notifications(stack, url) for url in stack.alertmanager_urls]
        for url in stack.alertmanager_urls:
            status = stack.get(url, "/api/v2/status")["cluster"]
            assert len(status["peers"]) == 2, f"{url} is not clustered: {status}"
        assert all(received_alerts(stack, url) > 0 for url in stack.alertmanager_urls), "Prometheus alerts both"
        print(f"webhook notifications sent per Alertmanager: {sent}; firing alert received {alert['receive_count']}x")
        # Both delivered: the webhook really got duplicates, and the one execution above is dedup at work.
        assert all(n >= 1 for n in sent), f"each member should have delivered, sent: {sent}"
        assert alert["receive_count"] >= 2


def webhook_notifications(stack: Stack, url: str) -> float:
    return _am_metric(stack, url, "alertmanager_notifications_total", integration="webhook")


def received_alerts(stack: Stack, url: str) -> float:
    return _am_metric(stack, url, "alertmanager_alerts_received_total")


def _am_metric(stack: Stack, url: str, name: str, **labels: str) -> float:
    text = stack.http.get(f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
