"""The sample target service over real HTTP: seed 004's metrics, faults, the admin API and its idempotency."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.prometheus_server import free_port
from tests.sample_fixture import SampleApp, SampleClient, run_sample_app

SEED_METRICS = {
    "langgraph_executions_total",
    "langgraph_execution_duration_seconds",
    "langgraph_active_graphs",
    "langgraph_checkpoint_saves_total",
    "langgraph_node_execution_seconds",
    "langgraph_retries_total",
    "langgraph_interrupts_total",
}


def durations(c: SampleClient, graph: str) -> tuple[float, float]:
    """(count, sum) of a graph's execution durations, from one scrape."""
    samples = {(name, labels.get("graph_name")): value for name, labels, value in c.samples()}
    base = "langgraph_execution_duration_seconds"
    return samples[(f"{base}_count", graph)], samples[(f"{base}_sum", graph)]


def test_graphs_run_on_a_timer_and_show_seed_metrics(sample_app: SampleApp) -> None:
    c = sample_app.client
    c.wait_until(lambda: c.metric("langgraph_executions_total", graph_name="c", status="success") >= 3)
    body = c.http.get("/metrics").text
    assert {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE")} >= SEED_METRICS
    assert c.metric("langgraph_active_graphs") == 3
    assert c.metric("langgraph_executions_total", status="error") == 0
    assert c.metric("langgraph_execution_duration_seconds_count", graph_name="a") >= 3
    assert c.metric("langgraph_node_execution_seconds_count", graph_name="b", node_name="act") >= 3
    saves = c.metric("langgraph_checkpoint_saves_total", backend_type="primary", status="success")
    assert saves >= 9 and c.metric("langgraph_checkpoint_saves_total", backend_type="backup") == 0
    assert c.http.get("/health").json() == {"status": "ok"}
    assert c.http.get("/ready").json() == {"status": "ready"}


def test_fault_injection_errors_latency_interrupts_and_clearing(sample_app: SampleApp) -> None:
    c = sample_app.client
    c.fault(graph="a", error_rate=1.0)
    c.fault(graph="b", latency_seconds=5, interrupt_rate=1.0)
    c.wait_until(lambda: c.metric("langgraph_executions_total", graph_name="a", status="error") >= 3)
    assert c.metric("langgraph_retries_total", graph_name="a", node_name="act", exception_type="InjectedError") >= 3
    assert c.metric("langgraph_executions_total", graph_name="b", status="error") == 0
    assert c.metric("langgraph_executions_total", graph_name="c", status="error") == 0
    count, total = durations(c, "b")  # read after the fault: every later execution of b takes >= 5 s
    c.wait_until(lambda: durations(c, "b")[0] >= count + 2)
    later_count, later_total = durations(c, "b")
    assert later_total - total >= 5 * (later_count - count)
    assert c.metric("langgraph_interrupts_total", graph_name="b", node_name="respond", reason="human_review") >= 1
    assert c.admin("GET", "/faults")["graphs"]["a"]["error_rate"] == 1.0
    c.clear_faults()
    assert c.admin("GET", "/faults") == {
        "graphs": {},
        "broken_storage": [],
        "healthy": True,
        "checkpointer_check_fails": False,
        "broken_dependencies": [],
        "llm": {"models": {}, "graphs": {}, "tools": {}, "backlog": 0},
    }
    errors = c.metric("langgraph_executions_total", graph_name="a", status="error")
    c.wait_until(lambda: c.metric("langgraph_executions_total", graph_name="a", status="success") >= 3)
    assert c.metric("langgraph_executions_total", graph_name="a", status="error") == errors
    bad = c.request("POST", "/admin/faults", json={"graph": "a"})
    assert bad.status_code == 422 and "error_rate" in bad.text
    assert c.request("POST", "/admin/faults", json={"graph": "zz", "error_rate": 1}).status_code == 404


def test_disable_and_enable_graphs(sample_app: SampleApp) -> None:
    c = sample_app.client
    first = c.admin("POST", "/graphs/a/disable")
    assert first == {"graph": "a", "enabled": False, "changed": True, "disabled": ["a"]}
    again = c.admin("POST", "/graphs/a/disable")  # idempotent by state: a no-op 200
    assert again["changed"] is False and again["disabled"] == ["a"]
    assert c.graphs() == {"a": False, "b": True, "c": True}
    assert c.metric("langgraph_active_graphs") == 2
    ran = c.metric("langgraph_executions_total", graph_name="a")
    b_ran = c.metric("langgraph_executions_total", graph_name="b")
    c.wait_until(lambda: c.metric("langgraph_executions_total", graph_name="b") >= b_ran + 3)
    assert c.metric("langgraph_executions_total", graph_name="a") == ran
    missing = c.request("POST", "/admin/graphs/nope/disable")
    assert missing.status_code == 404 and missing.json()["error"] == "no graph named 'nope' (graphs: a, b, c)"
    assert c.admin("POST", "/graphs/a/enable")["changed"] is True
    assert c.admin("POST", "/graphs/a/enable")["changed"] is False
    assert c.metric("langgraph_active_graphs") == 3


def test_disable_bounds_are_enforced_by_the_service(sample_app: SampleApp) -> None:
    c = sample_app.client
    c.admin("POST", "/graphs/a/disable", json={"max_disabled": 2})
    over = c.request("POST", "/admin/graphs/b/disable", json={"max_disabled": 1})
    assert over.status_code == 409 and over.json()["refused"] == "max_disabled"
    assert "already disabled: a" in over.json()["error"]
    c.admin("POST", "/graphs/b/disable", json={"max_disabled": 2, "keep_one_enabled": True})
    last = c.request("POST", "/admin/graphs/c/disable", json={"keep_one_enabled": True})
    assert last.status_code == 409
    assert last.json() == {"error": "'c' is the last enabled graph", "refused": "last_enabled"}
    assert c.admin("POST", "/graphs/a/disable", json={"max_disabled": 0})["changed"] is False  # already: no bound
    assert c.graphs() == {"a": False, "b": False, "c": True}


def test_broken_storage_corrupts_checkpoints_until_switched_and_cleaned(sample_app: SampleApp) -> None:
    c = sample_app.client
    c.fault(storage="primary", broken=True)
    c.wait_until(lambda: c.metric("langgraph_checkpoint_saves_total", backend_type="primary", status="error") >= 6)
    assert c.http.get("/ready").status_code == 503
    storage = c.storage()
    assert storage["active"] == "primary" and storage["backends"]["primary"]["healthy"] is False
    assert storage["backends"]["primary"]["corrupted"] >= 6 and storage["backends"]["backup"]["healthy"] is True

    c.fault(storage="backup", broken=True)
    refused = c.request("POST", "/admin/storage/switch", json={"backend": "backup"})
    assert refused.status_code == 409 and "'backup' is unhealthy" in refused.json()["error"]
    c.fault(storage="backup", broken=False)
    switched = c.admin("POST", "/storage/switch", json={"backend": "backup"})
    assert (switched["active"], switched["previous"], switched["changed"]) == ("backup", "primary", True)
    assert c.admin("POST", "/storage/switch", json={"backend": "backup"})["changed"] is False
    c.wait_until(lambda: c.metric("langgraph_checkpoint_saves_total", backend_type="backup", status="success") >= 3)
    assert c.http.get("/ready").status_code == 200
    errors = c.metric("langgraph_checkpoint_saves_total", status="error")
    corrupted = c.storage()["backends"]["primary"]["corrupted"]
    assert corrupted == errors  # every failed save left one corrupted checkpoint behind

    cleaned = c.admin("POST", "/storage/cleanup")
    assert cleaned == {"removed": corrupted, "by_backend": {"primary": corrupted, "backup": 0}}
    assert c.admin("POST", "/storage/cleanup", json={"backend": "primary"})["removed"] == 0
    assert c.request("POST", "/admin/storage/switch", json={"backend": "tertiary"}).status_code == 422


def test_an_idempotency_key_replays_the_first_answer_without_acting_again(sample_app: SampleApp) -> None:
    c = sample_app.client
    c.fault(storage="primary", broken=True)
    c.wait_until(lambda: c.storage()["backends"]["primary"]["corrupted"] >= 2)
    first = c.admin("POST", "/storage/cleanup", key="run-1:step-2")
    c.wait_until(lambda: c.storage()["backends"]["primary"]["corrupted"] >= 2)
    replay = c.admin("POST", "/storage/cleanup", key="run-1:step-2")
    assert replay == first  # the same answer, and the corrupted checkpoints since then are still there
    assert c.storage()["backends"]["primary"]["corrupted"] >= 2

    c.admin("POST", "/graphs/a/disable", key="k-disable")
    c.admin("POST", "/graphs/a/enable")  # someone re-enables it by hand
    assert c.admin("POST", "/graphs/a/disable", key="k-disable")["changed"] is True  # replayed, not acted
    assert c.graphs()["a"] is True
    missing = c.request("POST", "/admin/graphs/nope/disable", key="k-404")
    assert c.request("POST", "/admin/graphs/nope/disable", key="k-404").json() == missing.json()  # errors replay too
    reused = c.request("POST", "/admin/graphs/b/disable", key="k-disable")
    assert reused.status_code == 422 and "was first used for POST /admin/graphs/a/disable" in reused.json()["error"]
    assert c.graphs()["b"] is True

    seen = c.idempotency()
    assert {k: v["received"] for k, v in seen.items()} == {"run-1:step-2": 2, "k-disable": 3, "k-404": 2}
    assert seen["k-404"]["status_code"] == 404


def test_the_admin_api_needs_the_token_when_one_is_set() -> None:
    with run_sample_app(["x"], admin_token="sample-admin-token") as app:
        anonymous = httpx.get(f"{app.url}/admin/graphs")
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
        wrong = httpx.post(f"{app.url}/admin/graphs/x/disable", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert app.client.graphs() == {"x": True}
        assert httpx.get(f"{app.url}/metrics").status_code == 200  # Prometheus scrapes without a token
        assert httpx.get(f"{app.url}/health").status_code == 200


def test_health_fault_for_failover_drills(sample_app: SampleApp) -> None:
    c = sample_app.client
    c.fault(healthy=False)
    assert c.http.get("/health").status_code == 503
    c.clear_faults()
    assert c.http.get("/health").status_code == 200


@pytest.mark.slow
def test_the_sample_app_command(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("cli-admin-token\n")
    port = free_port()
    command = [sys.executable, "-m", "controlplane", "sample-app", "--port", str(port), "--graphs", "x,y"]
    command += [
        "--interval",
        "0.05",
        "--admin-token-file",
        str(token_file),
        "--llm-models",
        "openai/gpt-4o,local/llama",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "sample-app did not start"
            time.sleep(0.05)
        graphs = httpx.get(f"{url}/admin/graphs", headers={"Authorization": "Bearer cli-admin-token"}).json()
        assert graphs["enabled"] == ["x", "y"]
        llm = httpx.get(f"{url}/admin/llm", headers={"Authorization": "Bearer cli-admin-token"}).json()
        assert [m["model"] for m in llm["models"]] == ["openai/gpt-4o", "local/llama"]
        assert llm["graphs"]["x"]["model"] == "openai/gpt-4o"
        assert "langgraph_executions_total" in httpx.get(f"{url}/metrics").text
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    bad = subprocess.run(
        [sys.executable, "-m", "controlplane", "sample-app", "--port", str(port), "--graphs", "a b"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "graph name 'a b' does not match" in bad.stderr
