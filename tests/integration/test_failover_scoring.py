"""Scored failover groups through the health checker and the manager, on SQLite and PostgreSQL (seed 003).

The probes answer at once and Prometheus is a stub of fixed cpu and memory shares per endpoint,
so the scores are exact; the checker's clock moves as the test says.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from controlplane.db.models import AuditEvent
from controlplane.failover import repository
from controlplane.failover.checker import HealthChecker
from controlplane.failover.heartbeats import HeartbeatRegistry
from controlplane.failover.manager import FailoverManager
from controlplane.integrations.prometheus import Sample
from controlplane.rules.schema import Endpoint, FailoverGroup, FailoverScore
from tests.helpers import Clock
from tests.integration.test_failover import HealthServer
from tests.unit.test_failover_thresholds import chat

GROUP = chat(failure_threshold=1).model_copy(
    update={"score": FailoverScore(cpu="node_cpu_share", memory="node_memory_share", label="node")}
)


class Loads:
    """Prometheus as the checker reads it: `{query: {endpoint: share}}`, one series per endpoint."""

    def __init__(self, label: str = "node") -> None:
        self.label = label
        self.shares: dict[str, dict[str, float]] = {"node_cpu_share": {}, "node_memory_share": {}}

    def set(self, endpoint: str, cpu: float, memory: float) -> None:
        self.shares["node_cpu_share"][endpoint] = cpu
        self.shares["node_memory_share"][endpoint] = memory

    def query_vector(self, promql: str) -> list[Sample]:
        return [Sample({self.label: name}, value) for name, value in self.shares[promql].items()]


class Probes:
    def __init__(self) -> None:
        self.down: set[str] = set()

    def __call__(self, url: str, timeout: float) -> int:
        return 503 if any(f"//{name}:" in url for name in self.down) else 200


@pytest.fixture
def world(engine: Engine) -> Iterator[tuple[FailoverManager, HealthChecker, Loads, Probes, Clock]]:
    clock = Clock()
    manager = FailoverManager(engine, groups=lambda: {"chat": GROUP}, clock=clock)
    loads, probes = Loads(), Probes()
    checker = HealthChecker(
        lambda: {"chat": GROUP}, manager, http_get=probes, clock=clock, prometheus=loads, timer=lambda: 0.0
    )
    yield manager, checker, loads, probes, clock


def completed(manager: FailoverManager) -> dict[str, object]:
    [event] = [e for e in manager.events("chat") if e.event == "failover_completed"][:1]
    return {"to": event.to_endpoint, **event.detail}


def test_the_checker_records_the_loads_and_the_failover_goes_to_the_best_score(
    world: tuple[FailoverManager, HealthChecker, Loads, Probes, Clock], engine: Engine
) -> None:
    manager, checker, loads, probes, clock = world
    loads.set("node-1", cpu=0.9, memory=0.8)  # 0.04 + 0.06 + 0.3 = 0.4
    loads.set("node-2", cpu=0.5, memory=0.5)
    loads.set("node-3", cpu=0.2, memory=0.3)  # 0.32 + 0.21 + 0.3 = 0.83
    checker.check_now()
    with engine.connect() as conn:
        stored = repository.read_health(conn, GROUP)["node-3"].metrics
    assert stored is not None and (stored.cpu, stored.memory, stored.response_seconds) == (0.2, 0.3, 0.0)
    assert manager.active("chat").endpoint == "node-2"
    assert [e.score for e in manager.states("chat")] == [0.4, 0.65, 0.83]  # GET /api/v1/endpoints, the console

    clock.advance(10)
    probes.down = {"node-2"}
    checker.check_now()
    assert manager.active("chat").endpoint == "node-3"  # priority alone would say node-1
    assert completed(manager) | {"chosen_by": "score", "scores": {"node-1": 0.4, "node-3": 0.83}} == completed(manager)
    with engine.connect() as conn:
        audited = conn.execute(
            select(AuditEvent.detail).where(AuditEvent.action == "failover.failover_completed")
        ).scalar_one()
    assert audited["to_endpoint"] == "node-3" and audited["scores"] == {"node-1": 0.4, "node-3": 0.83}


def test_stale_metrics_fall_back_to_priority(
    world: tuple[FailoverManager, HealthChecker, Loads, Probes, Clock],
) -> None:
    manager, checker, loads, probes, clock = world
    loads.set("node-3", cpu=0.0, memory=0.0)
    loads.set("node-1", cpu=0.9, memory=0.9)
    checker.check_now()
    loads.shares = {"node_cpu_share": {}, "node_memory_share": {}}  # the exporter stops answering
    clock.advance(61)
    probes.down = {"node-2"}
    checker.check_now()
    assert manager.active("chat").endpoint == "node-1"
    assert completed(manager) | {"chosen_by": "priority", "why": "no fresh metrics"} == completed(manager)
    assert [e.score for e in manager.states("chat")] == [None, None, None]


def test_an_unhealthy_endpoint_is_never_chosen_whatever_its_score(
    world: tuple[FailoverManager, HealthChecker, Loads, Probes, Clock],
) -> None:
    manager, checker, loads, probes, clock = world
    loads.set("node-1", cpu=0.9, memory=0.9)
    loads.set("node-3", cpu=0.0, memory=0.0)  # the best score (fresh), then failing its checks
    checker.check_now()
    clock.advance(5)
    probes.down = {"node-3"}
    checker.check_now()
    assert [s.healthy for s in manager.states("chat")] == [True, True, False]
    clock.advance(5)
    probes.down = {"node-3", "node-2"}
    checker.check_now()
    assert manager.active("chat").endpoint == "node-1"
    assert completed(manager)["scores"] == {"node-1": pytest.approx(0.4 * 0.1 + 0.3 * 0.1 + 0.3)}


def test_the_response_time_is_the_health_checks_own(engine: Engine) -> None:
    slow, quick = HealthServer(delay=0.3), HealthServer()
    try:
        group = FailoverGroup(
            service="api",
            endpoints=[Endpoint(name="slow", url=slow.url), Endpoint(name="quick", url=quick.url, priority=1)],
            score=FailoverScore(cpu="cpu", memory="memory"),
        )
        loads = Loads(label="endpoint")  # the default label
        loads.shares = {"cpu": {"slow": 0.1, "quick": 0.1}, "memory": {"slow": 0.1}}
        manager = FailoverManager(engine, groups=lambda: {"api": group})
        HealthChecker(lambda: {"api": group}, manager, prometheus=loads).check_now()
        with engine.connect() as conn:
            health = repository.read_health(conn, group)
    finally:
        slow.close()
        quick.close()
    measured = health["slow"].metrics
    assert measured is not None and 0.3 <= measured.response_seconds < 5
    assert health["quick"].metrics is None  # no memory series for it: no metrics, never a guess


def test_an_endpoint_checked_by_heartbeat_alone_has_no_response_time_so_is_never_scored(engine: Engine) -> None:
    """Its check is not a probe: scoring it on a made-up response time (0 s, the best) would favour it."""
    group = FailoverGroup(
        service="api",
        endpoints=[
            Endpoint(name="beating", url="http://beating:8000", checks="heartbeat"),
            Endpoint(name="probed", url="http://probed:8000", priority=1),
        ],
        score=FailoverScore(cpu="cpu", memory="memory"),
    )
    clock = Clock()
    loads = Loads(label="endpoint")
    loads.shares = {"cpu": {"beating": 0.1, "probed": 0.1}, "memory": {"beating": 0.1, "probed": 0.1}}
    manager = FailoverManager(engine, groups=lambda: {"api": group}, clock=clock)
    registry = HeartbeatRegistry(engine, lambda: {"api": group}, clock=clock)
    registry.beat("api", "beating", "pod-1")
    checker = HealthChecker(
        lambda: {"api": group},
        manager,
        http_get=lambda _url, _timeout: 200,
        clock=clock,
        prometheus=loads,
        timer=lambda: 0.0,
        heartbeats=registry,
    )
    checker.check_now()
    with engine.connect() as conn:
        health = repository.read_health(conn, group)
    assert health["beating"].healthy and health["beating"].metrics is None
    assert health["probed"].metrics is not None
