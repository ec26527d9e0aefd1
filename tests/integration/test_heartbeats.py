"""Heartbeat registry (issue 18 item 3, seed 003) on SQLite and PostgreSQL: heartbeats keep an endpoint healthy,
silence fails it over after the timeout and the thresholds, the API's auth and validation, the console page."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from controlplane.failover.checker import HealthChecker
from controlplane.failover.heartbeats import HeartbeatRegistry
from controlplane.failover.manager import FailoverManager
from controlplane.rules.schema import Endpoint, FailoverGroup
from tests.conftest import ADMIN_TOKEN, TOKEN
from tests.helpers import Clock, console_app, console_users, log_in

HEARTBEAT_TOKEN = "test-heartbeat-token-0123456789"
SENDER = {"Authorization": f"Bearer {HEARTBEAT_TOKEN}"}
HEARTBEAT = "/api/v1/endpoints/heartbeat"

RULES = """
failover:
  - service: agents
    heartbeat_timeout: 10s
    endpoints:
      - {name: primary, url: "http://127.0.0.1:9", region: eu-west, checks: heartbeat}
      - {name: backup, url: "http://127.0.0.1:9", region: us-east, priority: 1}
"""


def agents() -> FailoverGroup:
    return FailoverGroup(
        service="agents",
        endpoints=[
            Endpoint(name="primary", url="http://primary:8000", region="eu-west", checks="heartbeat"),
            Endpoint(name="backup", url="http://backup:8000", region="us-east", priority=1),
        ],
        heartbeat_timeout=timedelta(seconds=10),
        failure_threshold=3,
        recovery_threshold=2,
    )


class Rig:
    """A manager, a heartbeat registry and a checker on one test clock; HTTP probes always pass."""

    def __init__(self, engine: Engine) -> None:
        self.group = agents()
        self.clock = Clock()
        groups = lambda: {"agents": self.group}  # noqa: E731
        self.manager = FailoverManager(engine, groups=groups, clock=self.clock)
        self.registry = HeartbeatRegistry(engine, groups, clock=self.clock)
        self.checker = HealthChecker(
            groups, self.manager, http_get=lambda _url, _timeout: 200, clock=self.clock, heartbeats=self.registry
        )

    def round(self, *, beat: bool) -> None:
        """Five seconds pass (the seed's check interval); the primary sends a heartbeat or not; one check round."""
        self.clock.advance(5)
        if beat:
            self.registry.beat("agents", "primary", "pod-1")
        self.checker.check_now()

    def primary(self) -> Any:
        return next(e for e in self.manager.states("agents") if e.name == "primary")


def test_heartbeats_keep_an_endpoint_healthy_and_silence_fails_it_over(engine: Engine) -> None:
    rig = Rig(engine)
    for _ in range(6):
        rig.round(beat=True)
    assert rig.primary().healthy and rig.manager.active("agents").endpoint == "primary"
    assert rig.primary().last_error is None

    # Silent from now: 5 and 10 s after the last heartbeat are still within the 10 s timeout.
    rig.round(beat=False)
    rig.round(beat=False)
    assert rig.primary().consecutive_failures == 0
    rig.round(beat=False)  # 15 s: a failed check, but one is not the threshold of 3
    rig.round(beat=False)
    assert rig.primary().healthy and rig.manager.active("agents").endpoint == "primary"
    rig.round(beat=False)  # the third failed check in a row
    primary = rig.primary()
    assert not primary.healthy and primary.consecutive_failures == 3
    assert "no heartbeat for 25.0 s (timeout 10 s)" in primary.last_error
    assert rig.manager.active("agents").endpoint == "backup"
    kinds = [e.event for e in reversed(rig.manager.events("agents"))]
    assert kinds == ["node_marked_failed", "failover_started", "failover_completed"]

    # Heartbeats again: the recovery threshold (2) brings it back, and traffic fails back.
    rig.round(beat=True)
    assert rig.manager.active("agents").endpoint == "backup"
    rig.round(beat=True)
    assert rig.primary().healthy and rig.manager.active("agents").endpoint == "primary"


def test_an_endpoint_that_never_registered_fails_its_checks(engine: Engine) -> None:
    rig = Rig(engine)
    for _ in range(3):
        rig.round(beat=False)
    assert not rig.primary().healthy
    assert rig.primary().last_error == "no heartbeat received (not registered)"


def test_registrations_show_expired_and_are_removed_after_the_expiry(engine: Engine) -> None:
    rig = Rig(engine)
    rig.group = rig.group.model_copy(update={"heartbeat_expiry": timedelta(minutes=1)})
    rig.registry.beat("agents", "primary", "pod-1")
    rig.registry.beat("agents", "primary", "pod-2")
    [fresh] = rig.registry.registrations()
    assert (fresh.instance, fresh.heartbeats, fresh.expired, fresh.age_seconds) == ("pod-2", 2, False, 0.0)
    rig.clock.advance(11)
    [old] = rig.registry.registrations()
    assert old.expired and old.age_seconds == 11.0
    assert rig.registry.expire() == 0  # expired is shown; removed only after heartbeat_expiry
    rig.clock.advance(50)
    assert rig.registry.expire() == 1
    assert rig.registry.registrations() == []


# --- the API and the console ---------------------------------------------------------------------


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    users = console_users(viewer="viewer")
    with console_app(database_url, RULES, tmp_path, users=users, heartbeat_token=HEARTBEAT_TOKEN) as client:
        yield client


def test_a_heartbeat_needs_the_heartbeat_or_admin_token(app: TestClient) -> None:
    body = {"service": "agents", "endpoint": "primary"}
    missing = app.post(HEARTBEAT, json=body, headers={"Authorization": ""})
    assert missing.status_code == 401 and "CONTROLPLANE_HEARTBEAT_TOKEN" in missing.text
    assert app.post(HEARTBEAT, json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401  # read
    assert app.post(HEARTBEAT, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert app.post(HEARTBEAT, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    assert app.post(HEARTBEAT, json=body, headers=SENDER).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"service": "nope", "endpoint": "primary"}, 404, "unknown service 'nope'"),
        ({"service": "agents", "endpoint": "nope"}, 404, "has no endpoint 'nope' (endpoints: primary, backup)"),
        ({"service": "agents", "endpoint": "backup"}, 409, "checked over HTTP only"),
        ({"service": "agents"}, 422, "endpoint"),
        ({"service": "agents", "endpoint": "primary", "instance": "x" * 256}, 422, "instance"),
        ({"service": "Agents!", "endpoint": "primary"}, 422, "service"),
        ({"service": "agents", "endpoint": "primary", "extra": 1}, 422, "extra"),
    ],
)
def test_a_heartbeat_the_rules_do_not_expect_is_refused_with_the_reason(
    app: TestClient, body: dict[str, Any], status: int, message: str
) -> None:
    response = app.post(HEARTBEAT, json=body, headers=SENDER)
    assert response.status_code == status, response.text
    assert message in response.text
    assert app.get("/api/v1/endpoints/heartbeats").json() == []


def test_the_console_shows_each_registration(app: TestClient) -> None:
    answer = app.post(HEARTBEAT, json={"service": "agents", "endpoint": "primary", "instance": "pod-7"}, headers=SENDER)
    assert answer.status_code == 200
    assert answer.json()["expired"] is False and answer.json()["timeout_seconds"] == 10.0
    [listed] = app.get("/api/v1/endpoints/heartbeats").json()
    assert (listed["service"], listed["endpoint"], listed["instance"]) == ("agents", "primary", "pod-7")
    log_in(app, "viewer")
    page = app.get("/endpoints").text
    assert "Heartbeat registrations" in page
    assert "agents/primary" in page and "pod-7" in page and "1 heartbeats" in page
    assert "status-alive" in page and "(timeout 10 s)" in page
