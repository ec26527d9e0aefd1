"""Degraded modes, as an operator sees them: what the service answers and does while a dependency is gone.

- the database down (PostgreSQL behind a fault proxy): 503 at once, /ready fails, workers idle
  quietly, and everything resumes by itself when it returns, parked work included;
- Prometheus down (behind a fault proxy): metric rules report errors, incidents stay open;
- an action target down: its circuit opens after `failure_threshold` failures, later steps are
  refused without a call, and the refusal is in the execution's timeline;
- SIGTERM: no new work, the step in flight finishes and is recorded, exit status 0.

(test_database_outage.py covers what is stored across an outage; this file what the service does.)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from controlplane.app import create_app
from controlplane.db.engine import make_engine
from controlplane.db.tables import audit_t, executions_t
from tests.conftest import WEBHOOK, make_settings
from tests.helpers import LoopbackHTTP, wait_for
from tests.integration.serverproc import (
    AUTH,
    LOOPBACK,
    FaultProxy,
    ServerProcess,
    alert_named,
    truncate_all,
    with_host_port,
)
from tests.integration.test_database_outage import upstream_of
from tests.prometheus_server import PrometheusServer

pytestmark = pytest.mark.slow

FAIL_FAST_SECONDS = 1.0  # Alertmanager must get its 503 at once, the first request after the cut too


def write_rules(directory: Path, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "rules.yaml").write_text(text)
    return directory


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def execution_with(client: httpx.Client | TestClient, status: str) -> dict[str, Any] | None:
    response = client.get("/api/v1/executions", params={"status": status})
    items = response.json()["items"] if response.status_code == 200 else []
    return items[0] if items else None


# ---------------------------------------------------------------------------------------------
# The database


PARKED = """
rules:
  - name: parked
    match: {alertname: Parked}
    playbook: parked
playbooks:
  - name: parked
    steps:
      - action: wait
        with: {duration: 2s}
      - action: incident.annotate
        with: {text: resumed after the wait}
"""


@pytest.mark.postgres
def test_database_down_fails_fast_idles_quietly_and_resumes_by_itself(postgres_url: str, tmp_path: Path) -> None:
    truncate_all(postgres_url)
    proxy = FaultProxy(upstream_of(postgres_url)).start()
    server = ServerProcess(
        with_host_port(postgres_url, LOOPBACK, proxy.port),
        tmp_path / "server.log",
        rules_dir=str(write_rules(tmp_path / "rules", PARKED)),
        worker_poll_seconds="0.5",
    )
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
            assert client.post(WEBHOOK, json=alert_named("Parked")).status_code == 200
            parked = wait_for("the execution parks in its wait step", lambda: execution_with(client, "waiting"), 10)

            proxy.stop()
            retried = alert_named("DuringOutage", 1)
            for attempt in range(3):  # the first request after the cut included: nothing knew yet
                response, elapsed = timed(lambda: client.post(WEBHOOK, json=retried))
                assert response.status_code == 503, response.text
                assert response.headers.get("retry-after") == "5"
                assert elapsed < FAIL_FAST_SECONDS, f"attempt {attempt}: 503 took {elapsed:.2f}s"
            ready, elapsed = timed(lambda: client.get("/ready"))
            assert ready.status_code == 503 and elapsed < FAIL_FAST_SECONDS, (ready.text, elapsed)
            assert ready.json()["checks"]["database"].startswith("unavailable")
            reads, elapsed = timed(lambda: client.get("/api/v1/incidents"))
            assert reads.status_code == 503 and elapsed < FAIL_FAST_SECONDS, (reads.text, elapsed)
            assert client.get("/health").status_code == 200  # alive: no reason to restart it

            # Workers and the writer wait for the database without spinning: little CPU, few log lines.
            lines_before, cpu_before = len(log_lines(server.log_path)), cpu_seconds(server.proc.pid)
            window = 3.0
            time.sleep(window)
            cpu = (cpu_seconds(server.proc.pid) - cpu_before) / window
            logged = log_lines(server.log_path)[lines_before:]
            assert cpu < 0.15, f"{cpu:.0%} of a CPU while the database is down"
            assert len(logged) <= 8 * window, f"{len(logged)} log lines in {window:g}s:\n" + "\n".join(logged[:20])
            assert not [line for line in logged if "Traceback" in line or '"level": "error"' in line], logged

            proxy.start()  # the database is back: nothing to do by hand
            back = time.monotonic()
            wait_for("/ready is 200 again", lambda: client.get("/ready").status_code == 200, 10)
            recovered_in = time.monotonic() - back
            assert client.post(WEBHOOK, json=retried).status_code == 200  # Alertmanager's next retry
            done = wait_for("the parked execution finishes", lambda: execution_with(client, "succeeded"), 15)
            assert done["id"] == parked["id"]
            detail = client.get(f"/api/v1/executions/{done['id']}").json()
            assert [s["status"] for s in detail["steps"]] == ["succeeded", "succeeded"]
            assert recovered_in < 5, f"ready {recovered_in:.1f}s after the database returned"
    finally:
        server.close()
        proxy.stop()


# ---------------------------------------------------------------------------------------------
# Prometheus


def test_prometheus_down_reports_errors_and_keeps_the_incident_open(
    tmp_path: Path, prometheus: PrometheusServer
) -> None:
    name = prometheus.unique_name("cp_degraded_queue")
    rules = write_rules(
        tmp_path / "rules",
        f"""
rules:
  - name: deep-queue
    when: {{query: 'max({name})', above: 100, labels: {{namespace: agents}}}}
    playbook: note
playbooks:
  - name: note
    steps:
      - action: notify.log
        with: {{text: deep queue}}
""",
    )
    prometheus.target.set(name, {"queue": "q"}, 250)
    prometheus.wait_for(f"max({name})", 250)
    proxy = FaultProxy(upstream_of(prometheus.url)).start()
    settings = make_settings(
        f"sqlite:///{tmp_path}/cp.db",
        rules_dir=rules,
        prometheus_url=f"http://{LOOPBACK}:{proxy.port}",
        metric_rule_interval_seconds=3600,  # evaluated on demand below
    )
    app = create_app(settings)
    try:
        with TestClient(app, headers=AUTH) as client:
            scheduler = app.state.services.scheduler

            [firing] = scheduler.evaluate_now()
            assert firing.state == "firing"
            opened = client.get("/api/v1/incidents").json()["items"][0]

            proxy.stop()
            for _ in range(3):
                [failed], elapsed = timed_evaluation(scheduler)
                assert (failed.outcome, failed.state) == ("error", "firing")
                assert elapsed < 5, f"an evaluation took {elapsed:.1f}s with Prometheus down"
            assert client.get(f"/api/v1/incidents/{opened['id']}").json()["status"] == "open"
            metrics = client.get("/metrics").text
            assert 'controlplane_metric_rule_evaluation_errors_total{rule="deep-queue"} 3.0' in metrics
            failure = [i for i in client.get("/api/v1/incidents").json()["items"] if i["id"] != opened["id"]]
            assert [(i["status"], i["severity"]) for i in failure] == [("open", "warning")], failure
            assert client.get("/ready").status_code == 200  # Prometheus is not the service's own dependency

            proxy.start()
            [recovered] = scheduler.evaluate_now()
            assert (recovered.outcome, recovered.consecutive_errors) == ("firing", 0)
            assert client.get(f"/api/v1/incidents/{failure[0]['id']}").json()["status"] == "resolved"
            assert client.get(f"/api/v1/incidents/{opened['id']}").json()["status"] == "open"
    finally:
        proxy.stop()


def timed_evaluation(scheduler: Any) -> tuple[list[Any], float]:
    started = time.monotonic()
    result = scheduler.evaluate_now()
    return result, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# An action target


class Target:
    """A loopback HTTP server standing in for a service a playbook calls; counts the calls it gets."""

    def __init__(self, status: int = 503, delay: float = 0.0) -> None:
        self.calls = 0
        self.answered = threading.Event()
        self.called = threading.Event()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                target.calls += 1
                target.called.set()
                time.sleep(delay)
                body = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                target.answered.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = LoopbackHTTP(Handler, "target")
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def failing_target() -> Iterator[Target]:
    target = Target(status=503)
    yield target
    target.close()


def test_a_target_down_opens_its_circuit_and_later_steps_are_refused_with_an_audit(
    tmp_path: Path, failing_target: Target
) -> None:
    url = f"{failing_target.url}/restart"
    rules = write_rules(
        tmp_path / "rules",
        f"""
rules:
  - {{name: restart-and-go-on, match: {{alertname: TargetDownA}}, playbook: restart-and-go-on}}
  - {{name: restart, match: {{alertname: TargetDownB}}, playbook: restart}}
playbooks:
  - name: restart-and-go-on
    steps:
      - action: http.request
        with: {{url: "{url}", method: POST, timeout: 2}}
        retry: {{attempts: 8, initial: 0s, max: 0s, jitter: 0s}}
        on_failure: continue
      - action: incident.annotate
        with: {{text: the restart failed; carried on}}
  - name: restart
    steps:
      - action: http.request
        with: {{url: "{url}", method: POST, timeout: 2}}
""",
    )
    settings = make_settings(
        f"sqlite:///{tmp_path}/cp.db", rules_dir=rules, http_allowed_hosts=[LOOPBACK], worker_poll_seconds=0.05
    )
    app = create_app(settings)
    with TestClient(app, headers=AUTH) as client:
        assert client.post(WEBHOOK, json=alert_named("TargetDownA")).status_code == 200
        first = wait_for("the first execution ends", lambda: execution_with(client, "succeeded"), 15)
        threshold = 5  # CircuitBreakers' default failure_threshold
        assert failing_target.calls == threshold  # then the circuit opened: attempts 6-8 made no call
        breakers = {b["name"]: b for b in client.get("/api/v1/circuit-breakers").json()}
        breaker = breakers[f"http.request:{LOOPBACK}"]
        assert breaker["state"] == "open"
        assert breaker["failed"] == threshold and breaker["rejected"] >= 1
        detail = client.get(f"/api/v1/executions/{first['id']}").json()
        call, note = detail["steps"]
        assert call["status"] == "failed" and "is open" in (call["error"] or "")
        assert note["status"] == "succeeded"  # on_failure: continue
        refusals = [e for e in detail["timeline"] if e["action"] == "step.refused"]
        assert refusals and "is open" in refusals[0]["detail"]["reason"]

        assert client.post(WEBHOOK, json=alert_named("TargetDownB", 1)).status_code == 200
        second = wait_for("the second execution fails", lambda: execution_with(client, "failed"), 15)
        assert failing_target.calls == threshold  # refused without calling the target
        detail = client.get(f"/api/v1/executions/{second['id']}").json()
        assert "is open" in detail["reason"] or "is open" in (detail["steps"][0]["error"] or "")
        assert "step.refused" in [e["action"] for e in detail["timeline"]]
        assert 'controlplane_circuit_breaker_state{name="http.request:127.0.0.1"} 1.0' in client.get("/metrics").text

    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        changes = conn.execute(select(audit_t.c.detail).where(audit_t.c.action == "circuit.changed")).scalars().all()
    engine.dispose()
    assert [(c["from"], c["to"]) for c in changes] == [("closed", "open")]


# ---------------------------------------------------------------------------------------------
# SIGTERM


def test_sigterm_refuses_new_work_finishes_the_step_in_flight_and_exits_0(tmp_path: Path) -> None:
    slow = Target(status=200, delay=1.0)
    rules = write_rules(
        tmp_path / "rules",
        f"""
rules:
  - {{name: slow, match: {{alertname: SlowStep}}, playbook: slow}}
playbooks:
  - name: slow
    steps:
      - action: http.request
        with: {{url: "{slow.url}/drain", method: POST, timeout: 5}}
""",
    )
    database_url = f"sqlite:///{tmp_path}/cp.db"
    server = ServerProcess(
        database_url, tmp_path / "server.log", rules_dir=str(rules), http_allowed_hosts=LOOPBACK, log_level="info"
    )
    try:
        server.wait_ready()
        assert httpx.post(f"{server.url}{WEBHOOK}", json=alert_named("SlowStep"), headers=AUTH).status_code == 200
        assert slow.called.wait(10), "the step never called its target"
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.2)  # the signal is handled on the event loop; then nothing new is taken
        answers: set[str] = set()
        while server.proc.poll() is None and time.monotonic() - signalled < 15:
            try:
                late = httpx.post(f"{server.url}{WEBHOOK}", json=alert_named("Late"), headers=AUTH)
                answers.add(str(late.status_code))
            except httpx.TransportError as exc:
                answers.add(type(exc).__name__)
            time.sleep(0.05)
        assert server.wait(15) == 0, server.log_tail()
        stopped_in = time.monotonic() - signalled
    finally:
        server.close()
        slow.close()
    assert answers <= {"503", "ConnectError"}, f"answers after SIGTERM: {answers}"
    assert slow.answered.is_set() and slow.calls == 1
    assert stopped_in < 10, f"stopped {stopped_in:.1f}s after SIGTERM"
    engine = make_engine(database_url)
    with engine.connect() as conn:
        [row] = conn.execute(select(executions_t.c.status, executions_t.c.lease_owner)).all()
    engine.dispose()
    assert row.status == "succeeded", server.log_tail()
    errors = [line for line in log_lines(server.log_path) if '"level": "error"' in line or "Traceback" in line]
    assert not errors, errors
