"""The dashboards in dashboards/ against a real Prometheus: every panel query parses and returns data.

One Prometheus scrapes, every second, the sample LangGraph service (faults injected, so error,
retry, interrupt and checkpoint-failure series exist and each LLM alert's failure happens), a
running control plane (driven through webhooks, a failing playbook, a failing metric rule and a
failover switch, so its event-driven series exist), and a stand-in for the database pool gauges
the sample does not model. It also loads alerting/*.rules.yaml, so the alerts are seen evaluating
on the same live series.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from controlplane.app import create_app
from controlplane.checks import check_dashboards, dashboard_queries, substitute_variables
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR
from tests.conftest import ADMIN_TOKEN, TOKEN, WEBHOOK, load_payload, make_settings, require_binary
from tests.helpers import wait_for
from tests.logged_process import LoggedProcess
from tests.prometheus_server import LOOPBACK, MetricsTarget, free_port
from tests.sample_fixture import SampleApp, run_sample_app

QUERIES = [q for path in sorted((DEFAULTS_DIR / "dashboards").glob("*.json")) for q in dashboard_queries(path)]
# The sample service models no database; this stand-in serves its pool at 90% (45 of 50).
DB_POOL = {"langgraph_db_connections_active": 45.0, "langgraph_db_connections_max": 50.0}
WAIT = 20.0
LLM_ALERTS = {
    "LLMProviderErrors",
    "LLMQuotaExhausted",
    "LLMFirstTokenSlow",
    "LLMTokenSpike",
    "LangGraphAgentLoop",
    "LangGraphRunBacklog",
    "LangGraphCheckpointerDown",
}

# A playbook that fails (Prometheus is a closed port) after one retry and escalates, a metric rule
# that cannot evaluate, a failover group on the sample app: each feeds one of the panels.
CONTROLPLANE_RULES = """
rules:
  - name: dashboard-probe
    match: {{alertname: DashboardProbe}}
    playbook: query-and-escalate
    guards: {{cooldown: 1h}}
  - name: dashboard-metric
    when: {{query: up, above: 0}}
    playbook: query-and-escalate
playbooks:
  - name: query-and-escalate
    steps:
      - action: prometheus.query
        with: {{query: up}}
        retry: {{attempts: 2, initial: 10ms, max: 10ms, jitter: 0s}}
        on_failure: escalate
failover:
  - service: chat
    interval: 1h
    endpoints:
      - {{name: primary, url: "{sample}", region: eu-west, priority: 0}}
      - {{name: backup, url: "{sample}", region: us-east, priority: 1}}
"""

pytestmark = pytest.mark.slow


class Prometheus(LoggedProcess):
    """The prometheus binary scraping several jobs every second, with the alerting rules loaded."""

    def __init__(self, binary: str, workdir: Path, jobs: Mapping[str, tuple[str, str]]) -> None:
        """`jobs`: job name -> (address, namespace label its series get)."""
        self.jobs = jobs
        self.url = f"http://{LOOPBACK}:{free_port()}"
        scrape = [
            {"job_name": job, "static_configs": [{"targets": [address], "labels": {"namespace": namespace}}]}
            for job, (address, namespace) in jobs.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in sorted((DEFAULTS_DIR / "alerting").glob("*.rules.yaml"))],
            "scrape_configs": scrape,
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=self.url, timeout=5.0)

    def api(self, path: str, **params: str) -> Any:
        """The JSON of an API call; query errors (400/422) come back as `{"status": "error", ...}`."""
        return self.http.get(path, params=params).json()

    def wait_for_scrapes(self) -> None:
        """Until every job has been scraped (the first scrape comes about 5 s after start)."""
        self.wait_until(lambda: self._up() == set(self.jobs), "every job scraped")

    def _up(self) -> set[str]:
        try:
            body = self.api("/api/v1/query", query="up == 1")
        except httpx.HTTPError:
            return set()
        return {r["metric"]["job"] for r in body.get("data", {}).get("result", [])}

    def wait_until(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        def check() -> Any:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}")
            return predicate()

        return wait_for(what, check, timeout, interval=0.25, details=self.log_tail)

    def stop(self) -> None:
        self.http.close()
        self.stop_process()


@dataclass
class Stack:
    prometheus: Prometheus
    sample: SampleApp
    controlplane: str  # base URL
    db_pool: str  # address of the pool stand-in


@contextlib.contextmanager
def serve_controlplane(workdir: Path, sample_url: str) -> Iterator[str]:
    """The control plane (create_app under uvicorn in a thread) on a free loopback port."""
    rules = workdir / "rules"
    rules.mkdir()
    (rules / "dashboards.yaml").write_text(CONTROLPLANE_RULES.format(sample=sample_url))
    settings = make_settings(
        f"sqlite:///{workdir}/controlplane.db",
        rules_dir=rules,
        prometheus_url=f"http://{LOOPBACK}:{free_port()}",  # nothing listens: queries fail fast
        metric_rule_interval_seconds=0.5,
        worker_poll_seconds=0.1,
    )
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="controlplane", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the control plane did not start"
            time.sleep(0.02)
        yield f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT)
        sock.close()


def drive_controlplane(url: str) -> None:
    """Two alerts of one group (the second is suppressed by a guard), and a manual failover switch."""
    with httpx.Client(base_url=url, timeout=10.0) as http:
        for index in range(2):
            payload = load_payload("alertmanager_firing.json")
            labels = {"alertname": "DashboardProbe", "namespace": "agents", "severity": "warning", "n": str(index)}
            alert = {**payload["alerts"][0], "labels": labels, "fingerprint": f"{index:016x}"}
            payload.update(alerts=[alert], groupLabels={"alertname": "DashboardProbe"}, commonLabels=labels)
            answer = http.post(WEBHOOK, json=payload, headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200, answer.text
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        deadline = time.monotonic() + WAIT
        while (answer := http.post("/api/v1/failover/chat/switch", json={"to": "backup"}, headers=admin)).is_error:
            assert time.monotonic() < deadline, f"failover switch: {answer.status_code} {answer.text}"
            time.sleep(0.1)


def inject_llm_faults(sample: SampleApp) -> None:
    """Each failure of llm.rules.yaml on its own graph, model or tool, so each alert has one cause.

    chat stays on the first model (slow first tokens) and loops on search; search moves to gpt-4o,
    which answers overloaded; summarize moves to gemini, whose quota is spent; plan gets a token
    budget far below its use, so the service refuses most of its requests as rate_limited. Runs
    pile up, and the checkpointer's check cannot run.
    """
    client = sample.client
    client.admin("POST", "/graphs/plan/limits", json={"token_budget": 1000})
    client.admin("POST", "/graphs/search/llm", json={"model": "openai/gpt-4o"})
    client.admin("POST", "/graphs/summarize/llm", json={"model": "google/gemini-2.5-pro"})
    client.fault(model="anthropic/claude-sonnet-4", ttft_seconds=8)
    client.fault(model="openai/gpt-4o", llm_error="overloaded", error_rate=1.0)
    client.fault(model="google/gemini-2.5-pro", llm_error="quota_exhausted", error_rate=1.0)
    client.fault(graph="chat", loop_tool="search")
    client.fault(backlog=20)
    client.fault(checkpointer_check_fails=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("dashboards")
    pool = MetricsTarget()
    for name, value in DB_POOL.items():
        pool.set(name, {}, value)
    graphs = ("chat", "search", "summarize", "plan")
    with run_sample_app(graphs) as sample, serve_controlplane(workdir, sample.url) as cp:
        sample.client.fault(graph="chat", error_rate=0.5)
        sample.client.fault(graph="search", interrupt_rate=0.5)
        sample.client.fault(storage="primary", broken=True)
        sample.client.fault(dependency="vector_store", broken=True)  # graceful degradation's panels and alert
        inject_llm_faults(sample)
        jobs = {
            "langgraph": (sample.url.removeprefix("http://"), "agents"),
            "langgraph-db": (pool.address, "agents"),
            "controlplane": (cp.removeprefix("http://"), "controlplane"),
        }
        # Started before driving the control plane: its first scrape takes about 5 s anyway.
        prometheus = Prometheus(binary, workdir, jobs)
        try:
            drive_controlplane(cp)
            prometheus.wait_for_scrapes()
            yield Stack(prometheus, sample, cp, pool.address)
        finally:
            prometheus.stop()
            pool.close()


def test_every_dashboard_is_found_and_passes_the_check() -> None:
    assert {q.file.name for q in QUERIES} == {"langgraph.json", "llm.json", "controlplane.json"}
    result = check_dashboards(argparse.Namespace(directory=DEFAULTS_DIR / "rules"))
    assert result.errors == []


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.file.stem}:{q.panel}:{q.ref_id}")
def test_every_panel_query_returns_data(stack: Stack, query: Any) -> None:
    def result() -> list[Any]:
        body = stack.prometheus.api("/api/v1/query", query=query.promql)
        assert body["status"] == "success", f"{query.file.name}:{query.line}: {query.promql}: {body.get('error')}"
        return list(body["data"]["result"])

    stack.prometheus.wait_until(result, f"{query.file.name}:{query.line} {query.panel!r} has data: {query.promql}")


def test_the_injected_faults_raise_their_alerts(stack: Stack) -> None:
    """The alerting rules run on the same live series: the faults put their alerts in pending (or firing)."""
    expected = {
        ("LangGraphHighErrorRate", "graph_name", "chat"),
        ("LangGraphCheckpointFailures", "backend_type", "primary"),
        ("LangGraphDatabaseConnectionsHigh", "instance", stack.db_pool),
        ("ControlPlaneMetricRuleErrors", "rule", "dashboard-metric"),
        ("LangGraphDependencyDown", "dependency", "vector_store"),
    }

    def raised() -> set[tuple[str, str, str]] | None:
        alerts = [a["labels"] for a in stack.prometheus.api("/api/v1/alerts")["data"]["alerts"]]
        keys = ("graph_name", "backend_type", "instance", "rule", "dependency")
        found = {(a["alertname"], key, a[key]) for a in alerts for key in keys if key in a}
        return found if expected <= found else None

    found = stack.prometheus.wait_until(raised, "the faults' alerts")
    assert ("LangGraphHighErrorRate", "graph_name", "summarize") not in found  # a graph without errors
    assert ("LangGraphDependencyDown", "dependency", "external_api") not in found  # a healthy dependency
    alerts = stack.prometheus.api("/api/v1/alerts")["data"]["alerts"]
    error_rate = next(a for a in alerts if a["labels"]["alertname"] == "LangGraphHighErrorRate")
    assert error_rate["labels"]["namespace"] == "agents"  # incidents group by namespace: it must survive
    groups = stack.prometheus.api("/api/v1/rules")["data"]["groups"]
    assert {r["name"]: r["health"] for g in groups for r in g["rules"] if r["health"] != "ok"} == {}


def test_the_llm_faults_raise_their_alerts_with_the_labels_remediation_keys_on(stack: Stack) -> None:
    """llm.rules.yaml on the sample's real series: each fault's alert, carrying graph and model where it has them."""
    model = {
        "anthropic": {"gen_ai_provider_name": "anthropic", "gen_ai_request_model": "claude-sonnet-4"},
        "openai": {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"},
        "google": {"gen_ai_provider_name": "google", "gen_ai_request_model": "gemini-2.5-pro"},
    }
    expected = [
        {"alertname": "LLMProviderErrors", "graph_name": "search", **model["openai"], "outcome": "overloaded"},
        {"alertname": "LLMQuotaExhausted", "graph_name": "summarize", **model["google"]},
        {"alertname": "LLMFirstTokenSlow", **model["anthropic"]},
        {"alertname": "LangGraphAgentLoop", "graph_name": "chat", "tool_name": "search"},
        {"alertname": "LangGraphRunBacklog", "job": "langgraph"},
        {"alertname": "LangGraphCheckpointerDown", "job": "langgraph"},
    ]

    def alerts() -> list[dict[str, str]] | None:
        found = [a["labels"] for a in stack.prometheus.api("/api/v1/alerts")["data"]["alerts"]]
        raised = all(any(want.items() <= labels.items() for labels in found) for want in expected)
        return found if raised else None

    found = stack.prometheus.wait_until(alerts, "the LLM faults' alerts")
    assert all(labels["namespace"] == "agents" for labels in found if labels["alertname"] in LLM_ALERTS)
    refused = 'sum(rate(langgraph_llm_requests_total{graph_name="plan", outcome="rate_limited"}[1m])) > 0'
    assert stack.prometheus.api("/api/v1/query", query=refused)["data"]["result"], "plan's budget refuses nothing"
    # Quota refusals and a graph's own token budget are not a provider outage; only the looping graph loops.
    errors = [a for a in found if a["alertname"] == "LLMProviderErrors"]
    assert {(a["graph_name"], a["gen_ai_request_model"], a["outcome"]) for a in errors} == {
        ("search", "gpt-4o", "overloaded")
    }
    loops = {(a["graph_name"], a["tool_name"]) for a in found if a["alertname"] == "LangGraphAgentLoop"}
    assert loops == {("chat", "search")}
    assert not [a for a in found if a["alertname"] == "LLMTokenSpike"]  # no baseline an hour ago: never


def test_pausing_automation_shows_on_the_gauge(stack: Stack) -> None:
    query = 'controlplane_automation_paused{job="controlplane"}'

    def paused() -> float | None:
        result = stack.prometheus.api("/api/v1/query", query=query)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    assert stack.prometheus.wait_until(lambda: paused() is not None, "the gauge scraped") is True
    assert paused() == 0.0
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=stack.controlplane, headers=admin, timeout=10.0) as http:
        http.post("/api/v1/automation/pause", json={"reason": "dashboard test"}).raise_for_status()
        try:
            stack.prometheus.wait_until(lambda: paused() == 1.0, "controlplane_automation_paused 1")
        finally:
            http.post("/api/v1/automation/resume").raise_for_status()


def test_check_reports_each_dashboard_problem_at_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_binary("promtool")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dashboards").mkdir()
    board = json.loads((DEFAULTS_DIR / "dashboards" / "langgraph.json").read_text())
    panels = board["panels"]
    panels[0]["targets"][0]["expr"] = "sum(rate(langgraph_executions_total[$__rate_interval])"
    panels[1]["datasource"] = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels[2]["targets"][0]["expr"] = 'up{job=~"$job"}'
    del panels[3]["targets"][0]["expr"]
    board["__inputs"] = [{"name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}]
    del board["uid"]
    text = json.dumps(board, indent=2)
    (tmp_path / "dashboards" / "a.json").write_text(text)
    (tmp_path / "dashboards" / "b.json").write_text('{\n  "uid": "b",\n  "title": \n}\n')
    lines = text.splitlines()

    def line(needle: str) -> int:
        return next(i for i, text in enumerate(lines, 1) if needle in text)

    errors = check_dashboards(argparse.Namespace(directory=tmp_path / "rules")).errors
    a = "dashboards/a.json"
    assert errors == [
        f"{a}: no uid: provisioning and links need a stable one",
        f"{a}:{line('sum(rate(langgraph_executions_total[')}: panel 'Execution rate' query A: "
        "could not parse expression: 1:41: parse error: unclosed left parenthesis",
        f"{a}:{line(json.dumps('Error rate'))}: panel 'Error rate': data source is not ${{datasource}}",
        f"{a}:{line('${DS_PROMETHEUS}')}: ${{DS_PROMETHEUS}}: an __inputs data source; use ${{datasource}}",
        f"{a}:{line('$job')}: panel 'P95 duration' query A: unknown variable $job",
        f"{a}:{line(json.dumps('Active graphs'))}: panel 'Active graphs' query A: no PromQL expr",
        f"{a}:{line('__inputs')}: __inputs: file provisioning does not resolve them; use the `datasource` variable",
        "dashboards/b.json:4: invalid JSON: Expecting value",
    ]


def test_variables_become_plain_promql() -> None:
    expr = 'rate(x{namespace=~"${namespace}", graph_name=~"$graph_name"}[$__rate_interval]) offset $__interval'
    assert substitute_variables(expr, {"namespace", "graph_name"}) == (
        'rate(x{namespace=~".*", graph_name=~".*"}[1m]) offset 15s'
    )
    assert substitute_variables("up{job=~'${job:regex}'}", {"job": "node"}) == "up{job=~'node'}"
