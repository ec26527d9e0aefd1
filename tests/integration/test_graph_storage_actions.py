"""graph.* and storage.* against the real sample app (and the Kubernetes stand-in), alone and in playbooks.

The actions are called directly first (no database: happy paths, idempotency, bounds, failure
modes), then through the running service on SQLite and PostgreSQL: an alert's playbook disables
the failing graph and its error counter stops growing; a later failure rolls steps back.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from controlplane.actions.base import (
    ActionContext,
    ActionError,
    ActionResult,
    BlastRadiusExceeded,
)
from controlplane.actions.builtin import build_registry
from controlplane.app import create_app
from controlplane.config import Settings
from controlplane.rules.loader import load_rules
from controlplane.rules.schema import Target
from tests.conftest import TOKEN, make_settings
from tests.helpers import LoopbackHTTP, action_context, post_alert
from tests.prometheus_server import PrometheusServer
from tests.sample_fixture import SampleApp, SampleClient, run_sample_app
from tests.standins.kubernetes import KubernetesStandIn

registry = build_registry()
NS = "agents"
CONFIG = "langgraph-config"


def http_target(sample: SampleApp, **fields: Any) -> Target:
    return Target(**{"name": "default", "kind": "http", "url": f"{sample.url}/admin", **fields})


class Runner:
    """Calls one action as the executor does: the blast-radius check first, then the action."""

    def __init__(self, engine: Engine, *targets: Target, settings: Settings | None = None) -> None:
        self.engine, self.targets, self.settings = engine, targets, settings

    def refusal(self, name: str, **params: Any) -> str | None:
        spec = registry.get(name)
        assert spec.blast_radius is not None
        return spec.blast_radius(self._ctx("check"), spec.params.model_validate(params))

    def __call__(self, name: str, key: str = "1:0", **params: Any) -> ActionResult:
        spec = registry.get(name)
        return spec.func(self._ctx(key), spec.params.model_validate(params))

    def _ctx(self, key: str) -> ActionContext:
        return action_context(self.settings or Settings(), self.engine, *self.targets, key=key)


# -- graph.disable / graph.enable on an http target ----------------------------------------------


def test_disable_and_enable_a_graph(sample_app: SampleApp, unused_engine: Engine) -> None:
    run = Runner(unused_engine, http_target(sample_app))
    c = sample_app.client
    assert run.refusal("graph.disable", graph="a") is None
    result = run("graph.disable", key="7:1", graph="a")
    assert result.value == "a"
    assert result.output == {
        "target": "default",
        "graph": "a",
        "before": "enabled",
        "after": "disabled",
        "changed": True,
        "disabled_graphs": ["a"],
    }
    assert c.graphs() == {"a": False, "b": True, "c": True}
    # A retry of the same step replays the first answer; another step finds it already disabled.
    assert run("graph.disable", key="7:1", graph="a").output == result.output
    again = run("graph.disable", key="8:1", graph="a")
    assert (again.output["before"], again.output["changed"]) == ("disabled", False)
    assert run.refusal("graph.disable", graph="a") is None  # already disabled: no bound applies

    enabled = run("graph.enable", key="7:1001", graph="a")
    assert (enabled.value, enabled.output["before"], enabled.output["after"]) == ("a", "disabled", "enabled")
    assert c.graphs() == {"a": True, "b": True, "c": True}
    assert {k: v["received"] for k, v in c.idempotency().items()} == {"7:1": 2, "8:1": 1, "7:1001": 1}
    assert registry.get("graph.disable").inverse == "graph.enable"
    assert registry.get("graph.enable").inverse == "graph.disable"


def test_disable_bounds_max_disabled_graphs_and_the_last_graph(sample_app: SampleApp, unused_engine: Engine) -> None:
    run = Runner(unused_engine, http_target(sample_app))  # max_disabled_graphs defaults to 1
    run("graph.disable", graph="a")
    refusal = run.refusal("graph.disable", graph="b")
    assert refusal is not None and "over its max_disabled_graphs of 1 (already disabled: a)" in refusal
    # Past the pre-step check (another replica raced it), the service still refuses, atomically.
    with pytest.raises(BlastRadiusExceeded, match="would make 2 disabled graphs") as refused:
        run("graph.disable", key="2:0", graph="b")
    assert not refused.value.retriable
    assert sample_app.client.graphs()["b"] is True

    wide = Runner(unused_engine, http_target(sample_app, max_disabled_graphs=5))
    wide("graph.disable", key="3:0", graph="b")
    last = wide.refusal("graph.disable", graph="c")
    assert last == "'c' is the last enabled graph of target 'default'"
    with pytest.raises(BlastRadiusExceeded, match="'c' is the last enabled graph"):
        wide("graph.disable", key="4:0", graph="c")
    assert sample_app.client.graphs() == {"a": False, "b": False, "c": True}


def test_graph_failure_modes(sample_app: SampleApp, unused_engine: Engine) -> None:
    run = Runner(unused_engine, http_target(sample_app))
    with pytest.raises(ActionError, match="answered 404: no graph named 'nope' \\(graphs: a, b, c\\)") as missing:
        run("graph.disable", graph="nope")
    assert not missing.value.retriable
    with pytest.raises(ValueError, match="graph"):
        registry.get("graph.disable").params.model_validate({"graph": "a,b"})  # a label must not widen the list
    with pytest.raises(ActionError, match="unknown target 'prod' \\(defined in rule files: default\\)"):
        run("graph.disable", target="prod", graph="a")
    sample_app.stop()
    assert run.refusal("graph.disable", graph="a") is None  # cannot tell: the step runs and says why
    with pytest.raises(ActionError, match="ConnectError") as down:
        run("graph.disable", graph="a")
    assert down.value.retriable


def test_5xx_is_retriable_and_the_token_comes_from_token_file(unused_engine: Engine, tmp_path: Path) -> None:
    with FailingServer(503, {"error": "overloaded"}) as url:
        run = Runner(unused_engine, Target(name="default", kind="http", url=url))
        with pytest.raises(ActionError, match="answered 503: overloaded") as busy:
            run("graph.enable", graph="a")
        assert busy.value.retriable and busy.value.output["status_code"] == 503
    token_file = tmp_path / "token"
    token_file.write_text("sample-admin-token\n")
    with run_sample_app(["x", "y"], admin_token="sample-admin-token") as sample:
        good = Runner(unused_engine, http_target(sample, token_file=str(token_file)))
        assert good("graph.disable", graph="x").output["changed"] is True
        wrong = tmp_path / "wrong"
        wrong.write_text("nope")
        bad = Runner(unused_engine, http_target(sample, token_file=str(wrong)))
        with pytest.raises(ActionError, match=r"answered 401.*check the target's token_file") as refused:
            bad("graph.enable", graph="x")
        assert not refused.value.retriable
        gone = Runner(unused_engine, http_target(sample, token_file=str(tmp_path / "absent")))
        with pytest.raises(ActionError, match=r"token_file .*absent: No such file"):
            gone("graph.enable", graph="x")


# -- storage.* on an http target --------------------------------------------------------------


def test_storage_check_switch_and_cleanup(sample_app: SampleApp, unused_engine: Engine) -> None:
    run = Runner(unused_engine, http_target(sample_app))
    c = sample_app.client
    checked = run("storage.check")
    assert checked.value == "primary" and checked.output["healthy"] == ["primary", "backup"]
    c.fault(storage="primary", broken=True)
    c.wait_until(lambda: c.storage()["backends"]["primary"]["corrupted"] >= 3)
    checked = run("storage.check")
    assert (checked.output["healthy"], checked.output["unhealthy"]) == (["backup"], ["primary"])

    assert run.refusal("storage.switch") is None
    switched = run("storage.switch", key="5:1")
    assert switched.value == "backup"
    assert (switched.output["previous"], switched.output["changed"]) == ("primary", True)
    assert run("storage.switch", key="5:1").output["previous"] == "primary"  # a retry replays, not "backup"
    assert run("storage.switch", key="6:1").output["changed"] is False
    assert c.storage()["active"] == "backup"

    corrupted = c.storage()["backends"]["primary"]["corrupted"]  # no more grow: saves go to backup now
    cleaned = run("storage.cleanup_corrupted", key="5:2")
    assert cleaned.value == corrupted >= 3 and cleaned.output["by_backend"] == {"primary": corrupted, "backup": 0}
    assert run("storage.cleanup_corrupted", key="5:2").value == corrupted  # replayed, counted once
    assert run("storage.cleanup_corrupted", key="6:2", backend="primary").value == 0
    assert c.idempotency()["5:2"]["received"] == 2


def test_switching_to_an_unhealthy_backend_is_refused(sample_app: SampleApp, unused_engine: Engine) -> None:
    run = Runner(unused_engine, http_target(sample_app))
    sample_app.client.fault(storage="backup", broken=True)
    refusal = run.refusal("storage.switch", backend="backup")
    assert refusal == "checkpoint storage 'backup' of target 'default' is unhealthy; not switching to it"
    with pytest.raises(BlastRadiusExceeded, match="'backup' is unhealthy; staying on 'primary'"):
        run("storage.switch", backend="backup")
    assert run.refusal("storage.switch", backend="primary") is None  # already active
    assert sample_app.client.storage()["active"] == "primary"


# -- kubernetes targets: the ConfigMap keys ------------------------------------------------------


@pytest.fixture
def k8s(tmp_path: Path) -> Iterator[tuple[KubernetesStandIn, Settings]]:
    standin = KubernetesStandIn().start()
    standin.add_configmap(NS, CONFIG, {"disabled_graphs": ""})
    token_file = tmp_path / "kube-token"
    token_file.write_text(standin.token)
    yield standin, Settings(kube_api_url=standin.url, kube_token_file=token_file)
    standin.stop()


def configmap(standin: KubernetesStandIn) -> dict[str, str]:
    return dict(standin.get("configmaps", NS, CONFIG)["data"])


def test_kubernetes_targets_write_the_configmap(k8s: tuple[KubernetesStandIn, Settings], unused_engine: Engine) -> None:
    standin, settings = k8s
    prod = Target(name="prod", kind="kubernetes", namespace=NS, configmap=CONFIG, max_disabled_graphs=2)
    run = Runner(unused_engine, prod, settings=settings)
    assert run("graph.disable", target="prod", graph="a").output["changed"] is True
    assert run.refusal("graph.disable", target="prod", graph="b") is None
    run("graph.disable", target="prod", graph="b")
    assert run("graph.disable", target="prod", graph="b").output["changed"] is False
    assert configmap(standin)["disabled_graphs"] == "a,b"
    assert "over its max_disabled_graphs of 2" in (run.refusal("graph.disable", target="prod", graph="c") or "")
    with pytest.raises(BlastRadiusExceeded, match="would make 3 disabled graphs"):
        run("graph.disable", target="prod", graph="c")
    enabled = run("graph.enable", target="prod", graph="a")
    assert (enabled.output["before"], enabled.output["disabled_graphs"]) == ("disabled", ["b"])
    assert configmap(standin)["disabled_graphs"] == "b"

    switched = run("storage.switch", target="prod")
    assert (switched.value, switched.output["previous"], switched.output["changed"]) == ("backup", "primary", True)
    assert configmap(standin)["checkpoint_storage"] == "backup"
    back = run("storage.switch", target="prod", backend=switched.output["previous"])
    assert (back.value, back.output["previous"]) == ("primary", "backup")
    for name in ("storage.check", "storage.cleanup_corrupted"):
        with pytest.raises(ActionError, match=f"{name} works on http targets only: target 'prod' is kubernetes"):
            run(name, target="prod")
    no_configmap = Runner(unused_engine, Target(name="prod", kind="kubernetes", namespace=NS), settings=settings)
    with pytest.raises(ActionError, match="has no `configmap`"):
        no_configmap("graph.disable", target="prod", graph="a")


# -- playbooks through the running service, on SQLite and PostgreSQL ------------------------------

RULES = """
targets:
  - name: default
    kind: http
    url: {url}
    max_disabled_graphs: 1
rules:
  - name: disable-failing-graph
    match: {{alertname: LangGraphHighErrorRate}}
    playbook: disable-problem-graph
  - name: storage-drill
    match: {{alertname: StorageDrill}}
    playbook: storage-drill
  - name: checkpoint-failures
    match: {{alertname: LangGraphCheckpointFailures}}
    playbook: checkpoint-failures
playbooks:
  - name: disable-problem-graph
    steps:
      - id: disabled
        action: graph.disable
        with: {{graph: "{{{{ alert.labels.graph_name }}}}"}}
        rollback: graph.enable
      - action: notify.log
        with: {{text: "disabled graph {{{{ steps.disabled.value }}}}"}}
      - action: graph.enable
        when: "alert.labels.get('fail_after') == 'yes'"
        with: {{graph: no-such-graph}}
  - name: checkpoint-failures
    steps:
      - id: storage
        action: storage.check
      - id: switched
        action: storage.switch
        when: "'backup' in steps.storage.output.healthy"
        with: {{backend: backup}}
        rollback: {{action: storage.switch, with: {{backend: "{{{{ steps.switched.output.previous }}}}"}}}}
      - action: storage.cleanup_corrupted
  - name: storage-drill
    steps:
      - id: switched
        action: storage.switch
        rollback: {{action: storage.switch, with: {{backend: "{{{{ steps.switched.output.previous }}}}"}}}}
      - action: storage.cleanup_corrupted
        with: {{target: default, backend: primary}}
      - action: graph.disable
        with: {{graph: no-such-graph}}
"""


@pytest.fixture
def service(database_url: str, sample_app: SampleApp, tmp_path: Path) -> Iterator[TestClient]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "sample.yaml").write_text(RULES.format(url=f"{sample_app.url}/admin"))
    load_rules(rules_dir, registry)  # what `controlplane check` runs: the file must pass it
    settings = make_settings(database_url, rules_dir=rules_dir, worker_poll_seconds=0.05)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def finished(client: TestClient, timeout: float = 10.0) -> dict[str, Any]:
    """The one execution, once it has stopped running; with its steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.get("/api/v1/executions").json()["items"]
        if items and items[0]["status"] not in ("pending", "running", "waiting"):
            return dict(client.get(f"/api/v1/executions/{items[0]['id']}").json())
        time.sleep(0.05)
    raise AssertionError(f"no finished execution within {timeout:g}s")


def errors_of(c: SampleClient, graph: str) -> float:
    return c.metric("langgraph_executions_total", graph_name=graph, status="error")


def test_the_playbook_disables_the_failing_graph_and_its_errors_stop(
    service: TestClient, sample_app: SampleApp
) -> None:
    c = sample_app.client
    c.fault(graph="b", error_rate=1.0)
    c.wait_until(lambda: errors_of(c, "b") >= 3)
    post_alert(service, alertname="LangGraphHighErrorRate", graph_name="b")
    done = finished(service)
    assert done["status"] == "succeeded", done.get("reason")
    assert done["steps"][0]["output"]["value"] == "b" and done["steps"][1]["output"]["value"] == "disabled graph b"
    assert c.graphs() == {"a": True, "b": False, "c": True}
    # Read /metrics twice, ticks apart: b's errors stand still while the others keep running.
    errors, others = errors_of(c, "b"), c.metric("langgraph_executions_total", graph_name="a")
    c.wait_until(lambda: c.metric("langgraph_executions_total", graph_name="a") >= others + 5)
    assert errors_of(c, "b") == errors
    assert c.metric("langgraph_executions_total", graph_name="a", status="error") == 0


def test_a_failing_later_step_re_enables_the_graph(service: TestClient, sample_app: SampleApp) -> None:
    post_alert(service, alertname="LangGraphHighErrorRate", graph_name="a", fail_after="yes")
    done = finished(service)
    assert done["status"] == "rolled_back", done.get("reason")
    assert "no graph named 'no-such-graph'" in done["reason"]
    assert sample_app.client.graphs() == {"a": True, "b": True, "c": True}
    keys = sample_app.client.idempotency()
    execution = done["id"]
    assert {k: v["request"].split()[1] for k, v in keys.items()} == {
        f"{execution}:0": "/admin/graphs/a/disable",
        f"{execution}:2": "/admin/graphs/no-such-graph/enable",
        f"{execution}:1000": "/admin/graphs/a/enable",  # the rollback, under a key of its own
    }
    assert all(v["received"] == 1 for v in keys.values())


def test_checkpoint_failures_switch_to_backup_and_clean_up(service: TestClient, sample_app: SampleApp) -> None:
    c = sample_app.client
    c.fault(storage="primary", broken=True)
    c.wait_until(lambda: c.storage()["backends"]["primary"]["corrupted"] >= 3)
    post_alert(service, alertname="LangGraphCheckpointFailures")
    done = finished(service)
    assert done["status"] == "succeeded", done.get("reason")
    assert [s["output"]["value"] for s in done["steps"]] == ["primary", "backup", done["steps"][2]["output"]["value"]]
    assert done["steps"][2]["output"]["value"] >= 3
    saves = c.metric("langgraph_checkpoint_saves_total", status="error")
    c.wait_until(lambda: c.metric("langgraph_checkpoint_saves_total", backend_type="backup", status="success") >= 3)
    assert c.metric("langgraph_checkpoint_saves_total", status="error") == saves
    assert c.storage()["active"] == "backup"


def test_a_failed_drill_switches_storage_back(service: TestClient, sample_app: SampleApp) -> None:
    post_alert(service, alertname="StorageDrill")
    done = finished(service)
    assert done["status"] == "rolled_back", done.get("reason")
    assert "no graph named 'no-such-graph'" in done["reason"]
    rollback = [s for s in done["steps"] if s["phase"] == "rollback"]
    assert [(s["action"], s["inputs"]["backend"], s["status"]) for s in rollback] == [
        ("storage.switch", "primary", "succeeded")
    ]
    assert sample_app.client.storage()["active"] == "primary"


# -- finding the failing graph in Prometheus ---------------------------------------------------------


@pytest.mark.slow
def test_prometheus_finds_the_failing_graph_and_the_playbook_disables_it(
    prometheus: PrometheusServer, sample_app: SampleApp, tmp_path: Path
) -> None:
    """Seed 004's high_error_rate strategy end to end: rank graphs by error rate, disable the worst."""
    c = sample_app.client
    name = prometheus.unique_name("langgraph_executions") + "_total"
    query = f'sum by (graph_name) (rate({name}{{status="error"}}[1m]))'
    c.fault(graph="c", error_rate=1.0)
    with Relay(c, prometheus, "langgraph_executions_total", name):
        prometheus.wait_for(query, lambda result: any(labels["graph_name"] == "c" and v > 0 for labels, v in result))
        rules_dir = tmp_path / "rules"
        rules_dir.mkdir()
        (rules_dir / "top.yaml").write_text(f"""
targets:
  - {{name: default, kind: http, url: "{sample_app.url}/admin"}}
rules:
  - name: disable-failing-graph
    match: {{alertname: LangGraphHighErrorRate}}
    playbook: disable-worst
playbooks:
  - name: disable-worst
    steps:
      - id: worst
        action: prometheus.top
        with: {{query: '{query}', label: graph_name}}
      - action: graph.disable
        with: {{graph: "{{{{ steps.worst.value }}}}"}}
        rollback: graph.enable
""")
        settings = make_settings(
            f"sqlite:///{tmp_path}/cp.db", rules_dir=rules_dir, worker_poll_seconds=0.05, prometheus_url=prometheus.url
        )
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            post_alert(client, alertname="LangGraphHighErrorRate")
            done = finished(client)
    assert done["status"] == "succeeded", done.get("reason")
    assert [s["output"]["value"] for s in done["steps"]] == ["c", "c"]
    assert c.graphs() == {"a": True, "b": True, "c": False}
    errors, ran = errors_of(c, "c"), c.metric("langgraph_executions_total", graph_name="a")
    c.wait_until(lambda: c.metric("langgraph_executions_total", graph_name="a") >= ran + 5)
    assert errors_of(c, "c") == errors


# -- helpers ----------------------------------------------------------------------------------------


class Relay:
    """Copy one metric's series from the sample app to the Prometheus scrape target, under another name."""

    def __init__(self, c: SampleClient, prometheus: PrometheusServer, source: str, name: str) -> None:
        self.c, self.prometheus, self.source, self.name = c, prometheus, source, name
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(0.2):
            for sample, labels, value in self.c.samples():
                if sample == self.source:
                    self.prometheus.target.set(self.name, labels, value)

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.prometheus.target.remove(self.name)


class FailingServer:
    """A loopback HTTP server answering every request with one status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.handler = Handler

    def __enter__(self) -> str:
        self.server = LoopbackHTTP(self.handler, "failing-server")
        return f"{self.server.url}/admin"

    def __exit__(self, *_exc: object) -> None:
        self.server.close()
