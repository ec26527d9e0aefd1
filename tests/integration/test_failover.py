"""Failover on SQLite and PostgreSQL: seed 002's demo, manual switches, restarts, real probes, API, playbooks."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select

from controlplane.app import create_app
from controlplane.db.engine import make_engine
from controlplane.db.models import AuditEvent
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.failover.checker import HealthChecker
from controlplane.failover.manager import FailoverManager
from controlplane.failover.schemas import CheckOutcome
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.rules.schema import Endpoint, FailoverGroup
from controlplane.services import Services
from tests.conftest import ADMIN_TOKEN, AUTH, WEBHOOK, make_settings
from tests.helpers import Clock, LoopbackHTTP, sample_notification
from tests.unit.test_failover_thresholds import chat

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHECK_INTERVAL = timedelta(seconds=10)  # the managers' clock moves one health-check interval per reading


def manager(engine: Engine, group: FailoverGroup, **kwargs: object) -> FailoverManager:
    clock = Clock(step=CHECK_INTERVAL)
    return FailoverManager(engine, groups=lambda: {group.service: group}, clock=clock, **kwargs)  # type: ignore[arg-type]


def names(m: FailoverManager, service: str = "chat") -> list[str]:
    return [e.event for e in reversed(m.events(service, limit=500))]


def switches(registry: CollectorRegistry, source: str, target: str) -> float | None:
    return registry.get_sample_value("controlplane_failover_events_total", {"from_region": source, "to_region": target})


def healthy(registry: CollectorRegistry, endpoint: str) -> float | None:
    return registry.get_sample_value("controlplane_endpoint_healthy", {"service": "chat", "endpoint": endpoint})


# --- the manager ---------------------------------------------------------------------------


def test_seed_002_demo_fails_over_recovers_and_fails_back(engine: Engine) -> None:
    group, registry, breakers = chat(), CollectorRegistry(), CircuitBreakers()
    m = manager(engine, group, metrics_registry=registry, breakers=breakers)
    assert m.active("chat").endpoint == "node-2" and m.active("chat").since is None

    for node in ("node-1", "node-2", "node-3"):
        assert m.record_check(group, node, True).events == []
    assert m.active("chat").since is not None
    assert m.record_check(group, "node-2", False, "HTTP 500").events == []
    assert healthy(registry, "node-2") == 1.0

    failed = m.record_check(group, "node-2", False, "HTTP 500")
    assert failed.events == ["node_marked_failed", "failover_started", "failover_completed"]
    assert not failed.healthy
    active = m.active("chat")
    assert (active.endpoint, active.url, active.region) == ("node-1", "http://node-1:8000", "eu-west")
    assert active.changed_by == "controlplane:failover"
    assert switches(registry, "us-east", "eu-west") == 1.0
    assert healthy(registry, "node-2") == 0.0
    node2 = next(e for e in m.states("chat") if e.name == "node-2")
    assert (node2.healthy, node2.consecutive_failures, node2.last_error) == (False, 2, "HTTP 500")
    assert node2.breaker == "open"  # its checks are the breaker's probes too

    assert m.record_check(group, "node-2", True).events == ["recovery_started"]
    assert m.active("chat").endpoint == "node-1"  # one pass is not recovery yet
    back = m.record_check(group, "node-2", True)
    assert back.events == ["recovery_completed", "failover_started", "failover_completed"]
    assert back.healthy and m.active("chat").endpoint == "node-2"
    assert switches(registry, "eu-west", "us-east") == 1.0
    assert healthy(registry, "node-2") == 1.0

    assert names(m) == [
        "node_marked_failed",
        "failover_started",
        "failover_completed",
        "recovery_started",
        "recovery_completed",
        "failover_started",
        "failover_completed",
    ]
    failover, failback = [e for e in reversed(m.events("chat")) if e.event == "failover_completed"]
    assert (failover.from_endpoint, failover.to_endpoint, failover.from_region, failover.to_region) == (
        "node-2",
        "node-1",
        "us-east",
        "eu-west",
    )
    assert (failback.from_endpoint, failback.to_endpoint) == ("node-1", "node-2")
    assert "failback" in failback.detail["reason"]
    with engine.connect() as conn:
        audited = conn.execute(select(AuditEvent.actor, AuditEvent.action).order_by(AuditEvent.id)).all()
    assert [a for _, a in audited] == [f"failover.{n}" for n in names(m)]
    assert {actor for actor, _ in audited} == {"controlplane:failover"}


def test_without_auto_failback_traffic_stays_on_the_backup(engine: Engine) -> None:
    group = chat(auto_failback=False)
    m = manager(engine, group)
    for ok in (False, False, True, True):
        m.record_check(group, "node-2", ok, None if ok else "timeout")
    assert m.active("chat").endpoint == "node-1"
    assert names(m)[-2:] == ["recovery_started", "recovery_completed"]
    assert next(e for e in m.states("chat") if e.name == "node-2").healthy


def test_manual_switch_refuses_an_unhealthy_endpoint(engine: Engine) -> None:
    group = chat()
    m = manager(engine, group)
    m.record_check(group, "node-2", False, "connection refused")
    m.record_check(group, "node-2", False, "connection refused")
    before = names(m)

    with pytest.raises(Conflict, match=r"'node-2' of service 'chat' is unhealthy .*connection refused"):
        m.switch("chat", "node-2", actor="admin", reason="try it")
    with pytest.raises(InvalidInput, match="no endpoint 'node-9'"):
        m.switch("chat", "node-9", actor="admin")
    with pytest.raises(NotFound, match="unknown service 'mail'"):
        m.switch("mail", actor="admin")
    assert names(m) == before and m.active("chat").endpoint == "node-1"

    same = m.switch("chat", "node-1", actor="admin")
    assert not same.changed and names(m) == before

    moved = m.switch("chat", actor="admin", reason="drain node-1", idempotency_key="exec-7:0")
    assert (moved.from_endpoint, moved.to_endpoint, moved.changed) == ("node-1", "node-3", True)
    assert m.active("chat").changed_by == "admin"
    again = m.switch("chat", actor="admin", idempotency_key="exec-7:0")  # a retried step
    assert (again.to_endpoint, again.changed) == ("node-3", False)
    assert m.active("chat").endpoint == "node-3"
    last = m.events("chat", limit=1)[0]
    assert last.detail["actor"] == "admin" and last.detail["reason"] == "drain node-1"

    m.record_check(group, "node-1", False, "down")
    m.record_check(group, "node-1", False, "down")
    with pytest.raises(Conflict, match="no healthy endpoint of service 'chat' other than the active 'node-3'"):
        m.switch("chat", actor="admin")


def test_state_survives_a_new_manager_on_the_same_database(engine: Engine, database_url: str) -> None:
    group = chat()
    manager(engine, group).record_check(group, "node-2", False, "HTTP 503")
    second = make_engine(database_url)
    try:
        # The consecutive count was kept: this manager's first failure is the threshold's second.
        assert manager(second, group).record_check(group, "node-2", False, "HTTP 503").events[0] == "node_marked_failed"
    finally:
        second.dispose()
    third = manager(engine, group)
    assert third.active("chat").endpoint == "node-1"
    node2 = next(e for e in third.states("chat") if e.name == "node-2")
    assert (node2.healthy, node2.consecutive_failures) == (False, 2)
    assert names(third) == ["node_marked_failed", "failover_started", "failover_completed"]


def test_with_every_endpoint_down_the_first_to_recover_takes_over(engine: Engine) -> None:
    group = chat(auto_failback=False, failure_threshold=1, recovery_threshold=1)
    m = manager(engine, group)
    for node in ("node-1", "node-3", "node-2"):
        m.record_check(group, node, False, "down")
    assert names(m)[-3:] == ["node_marked_failed", "failover_started", "failover_failed"]
    assert m.active("chat").endpoint == "node-2"  # clients still get an answer
    assert m.record_check(group, "node-3", True).events == [
        "recovery_started",
        "recovery_completed",
        "failover_started",
        "failover_completed",
    ]
    assert m.active("chat").endpoint == "node-3"


def test_an_endpoint_removed_from_the_rules_is_left(engine: Engine) -> None:
    groups = {"chat": chat()}
    m = FailoverManager(engine, groups=lambda: groups, clock=Clock(step=CHECK_INTERVAL))
    m.sync()
    assert m.active("chat").endpoint == "node-2"
    groups["chat"] = chat().model_copy(update={"endpoints": chat().endpoints[::2]})
    m.sync()
    assert m.active("chat").endpoint == "node-1"
    assert m.events("chat", limit=1)[0].detail["reason"] == "endpoint node-2 is no longer in the rule files"


# --- the checker, against real servers on loopback ----------------------------------------


class HealthServer:
    """A tiny HTTP server whose /health answers `status` after `delay` seconds."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(owner.delay)
                self.send_response(owner.status if self.path == "/health" else 404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = LoopbackHTTP(Handler, "health-server")
        self.url = self.httpd.url

    def close(self) -> None:
        self.httpd.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., HealthServer]]:
    started: list[HealthServer] = []

    def start(status: int = 200, delay: float = 0.0) -> HealthServer:
        started.append(HealthServer(status, delay))
        return started[-1]

    yield start
    for server in started:
        server.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_checker_probes_real_endpoints(engine: Engine, servers: Callable[..., HealthServer]) -> None:
    group = FailoverGroup(
        service="api",
        endpoints=[
            Endpoint(name="up", url=servers().url + "/", priority=0),
            Endpoint(name="broken", url=servers(status=500).url, priority=1),
            Endpoint(name="gone", url=closed_port_url(), priority=2),
            Endpoint(name="slow", url=servers(delay=1.0).url, priority=3),
        ],
        timeout=timedelta(seconds=0.3),
        failure_threshold=1,
    )
    m = FailoverManager(engine, groups=lambda: {"api": group})
    checker = HealthChecker(lambda: {"api": group}, m)
    started = time.monotonic()
    outcomes = {o.endpoint: o for o in checker.check_now()}
    assert time.monotonic() - started < 0.9  # probed in parallel: the timeouts do not add up
    assert outcomes["up"].ok and outcomes["up"].error is None
    assert "answered 500" in (outcomes["broken"].error or "")
    assert "ConnectError" in (outcomes["gone"].error or "")
    assert "Timeout" in (outcomes["slow"].error or "")
    assert {name for name, o in outcomes.items() if not o.healthy} == {"broken", "gone", "slow"}
    assert list(outcomes)[-1] == "up"  # the active endpoint is recorded last


class FlakyManager(FailoverManager):
    def record_check(self, group: FailoverGroup, *args: object, **kwargs: object) -> CheckOutcome:
        if group.service == "bad":
            raise RuntimeError("database went away")
        return super().record_check(group, *args, **kwargs)  # type: ignore[arg-type]


def test_checker_schedules_groups_and_survives_errors(engine: Engine, servers: Callable[..., HealthServer]) -> None:
    url = servers().url
    groups = {
        name: FailoverGroup(service=name, endpoints=[Endpoint(name="only", url=url)], interval=timedelta(hours=1))
        for name in ("bad", "good")
    }
    m = FlakyManager(engine, groups=lambda: groups)

    def probe(url: str, timeout: float) -> int:
        if "boom" in url:
            raise RuntimeError("probe bug")
        return 200

    checker = HealthChecker(lambda: groups, m, http_get=probe)
    assert [o.service for o in checker.check_now()] == ["good"]  # the bad group is logged, not raised

    checker.start()
    try:
        deadline = time.monotonic() + 5
        while m.states("good")[0].last_checked_at is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert m.states("good")[0].consecutive_successes >= 1  # the job ran at once
        assert checker.scheduled == ["bad", "good"]
        groups["boom"] = FailoverGroup(service="boom", endpoints=[Endpoint(name="x", url="http://boom")])
        del groups["bad"]
        checker.resync()
        assert checker.scheduled == ["boom", "good"]
        [outcome] = checker.check_now("boom")
        assert outcome.error is not None and "RuntimeError: probe bug" in outcome.error
        assert checker.running
    finally:
        checker.shutdown()


# --- the API and the playbook action, in the running service ------------------------------


def rules_dir(tmp_path: Path, primary: str, backup: str) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "failover.yaml").write_text(f"""
failover:
  - service: chat
    interval: 1h
    timeout: 1s
    failure_threshold: 2
    recovery_threshold: 2
    endpoints:
      - {{name: primary, url: "{primary}", region: eu-west, priority: 0}}
      - {{name: backup, url: "{backup}", region: us-east, priority: 1}}
rules:
  - name: chat-down
    match: {{alertname: ChatDown}}
    playbook: move-chat
playbooks:
  - name: move-chat
    steps:
      - id: move
        action: failover.switch
        with: {{service: chat}}
      - action: incident.annotate
        with: {{text: "moved chat to {{{{ steps.move.value }}}}"}}
""")
    return rules


def wait_for_first_checks(services: Services) -> None:
    deadline = time.monotonic() + 5
    while any(e.last_checked_at is None for e in services.failover.states("chat")):
        assert time.monotonic() < deadline, "the checker's first run did not happen"
        time.sleep(0.02)


def test_endpoints_api(database_url: str, tmp_path: Path, servers: Callable[..., HealthServer]) -> None:
    primary, backup = servers(), servers()
    app = create_app(make_settings(database_url, rules_dir=rules_dir(tmp_path, primary.url, backup.url)))
    with TestClient(app, headers=AUTH) as client:
        services: Services = app.state.services
        wait_for_first_checks(services)
        active = client.get("/api/v1/endpoints/active", params={"service": "chat"}).json()
        assert {k: active[k] for k in ("endpoint", "url", "region")} == {
            "endpoint": "primary",
            "url": primary.url,
            "region": "eu-west",
        }
        assert active["since"] is not None
        missing = client.get("/api/v1/endpoints/active", params={"service": "mail"})
        assert missing.status_code == 404 and "unknown service 'mail'" in missing.json()["error"]

        primary.status = 500
        services.health_checker.check_now()
        services.health_checker.check_now()
        assert client.get("/api/v1/endpoints/active", params={"service": "chat"}).json()["endpoint"] == "backup"
        [group] = client.get("/api/v1/endpoints").json()
        assert group["service"] == "chat" and group["active"] == "backup"
        first = group["endpoints"][0]
        assert (first["name"], first["healthy"], first["active"], first["consecutive_failures"]) == (
            "primary",
            False,
            False,
            2,
        )
        assert "answered 500" in first["last_error"] and first["breaker"] == "open"
        assert group["endpoints"][1]["breaker"] == "closed"
        events = client.get("/api/v1/failover/events", params={"service": "chat", "limit": 2}).json()
        assert [e["event"] for e in events] == ["failover_completed", "failover_started"]
        assert (events[0]["from_region"], events[0]["to_region"]) == ("eu-west", "us-east")

        assert client.post("/api/v1/failover/chat/switch", json={"to": "primary"}).status_code == 401
        refused = client.post("/api/v1/failover/chat/switch", json={"to": "primary"}, headers=ADMIN)
        assert refused.status_code == 409 and "unhealthy" in refused.json()["error"]

        primary.status = 200
        services.health_checker.check_now()
        services.health_checker.check_now()
        assert client.get("/api/v1/endpoints/active", params={"service": "chat"}).json()["endpoint"] == "primary"

        moved = client.post("/api/v1/failover/chat/switch", json={"reason": "maintenance"}, headers=ADMIN)
        assert moved.status_code == 200, moved.text
        assert (moved.json()["from_endpoint"], moved.json()["to_endpoint"]) == ("primary", "backup")
        assert client.get("/api/v1/failover/events", params={"limit": 1}).json()[0]["detail"]["actor"] == "admin"
        metrics = client.get("/metrics").text
        assert 'controlplane_failover_events_total{from_region="eu-west",to_region="us-east"} 2.0' in metrics
        assert 'controlplane_endpoint_healthy{endpoint="primary",service="chat"} 1.0' in metrics


def test_failover_switch_action_in_a_playbook(
    database_url: str, tmp_path: Path, servers: Callable[..., HealthServer]
) -> None:
    primary, backup = servers(), servers()
    settings = make_settings(
        database_url, rules_dir=rules_dir(tmp_path, primary.url, backup.url), worker_poll_seconds=0.05
    )
    app = create_app(settings)
    with TestClient(app, headers=AUTH) as client:
        wait_for_first_checks(app.state.services)
        payload = sample_notification({"labels": {"alertname": "ChatDown"}})
        assert client.post(WEBHOOK, json=payload).status_code == 200
        deadline = time.monotonic() + 10
        while not (items := client.get("/api/v1/executions", params={"status": "succeeded"}).json()["items"]):
            assert time.monotonic() < deadline, client.get("/api/v1/executions").json()
            time.sleep(0.05)
        [execution] = items
        detail = client.get(f"/api/v1/executions/{execution['id']}").json()
        move = detail["steps"][0]
        assert move["action"] == "failover.switch"
        assert (move["output"]["from"], move["output"]["to"], move["output"]["changed"]) == ("primary", "backup", True)
        assert client.get("/api/v1/endpoints/active", params={"service": "chat"}).json()["endpoint"] == "backup"
        incident = client.get(f"/api/v1/incidents/{execution['incident_id']}").json()
        [completed] = [e for e in incident["timeline"] if e["action"] == "failover.failover_completed"]
        assert completed["actor"] == "rule:chat-down" and completed["detail"]["to_endpoint"] == "backup"
        # Said as people count steps, the same in the failover's history as in the execution's summary.
        assert completed["detail"]["reason"] == f"playbook step 1 of execution {execution['id']}"
        assert move["effect"] == "Failed over chat from primary to backup (us-east)"
        assert detail["summary"] == "Failed over chat from primary to backup (us-east); done"
        # Counted on the app's registry although the step used a manager of its own: read from the database.
        metrics = client.get("/metrics").text
        assert 'controlplane_failover_events_total{from_region="eu-west",to_region="us-east"} 1.0' in metrics
