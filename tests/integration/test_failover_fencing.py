"""Scheduled health checks are leader work on SQLite and PostgreSQL: a replaced leader's round records nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from structlog.testing import CapturingLogger

from controlplane.db.models import AuditEvent
from controlplane.failover import checker as checker_module
from controlplane.failover.checker import HealthChecker
from controlplane.failover.manager import FailoverManager
from controlplane.leader import LeaderElector
from controlplane.rules.schema import Endpoint, FailoverGroup
from controlplane.services import Services
from tests.conftest import make_settings
from tests.helpers import Clock

GROUP = FailoverGroup(
    service="chat",
    endpoints=[
        Endpoint(name="node-1", url="http://node-1:8000", region="eu-west", priority=1),
        Endpoint(name="node-2", url="http://node-2:8000", region="us-east", priority=0),
    ],
    failure_threshold=1,
    recovery_threshold=1,
)


def node_2_is_down(url: str, _timeout: float) -> int:
    return 500 if "node-2" in url else 200


def checker(engine: Engine, clock: Clock, elector: LeaderElector) -> tuple[HealthChecker, FailoverManager]:
    manager = FailoverManager(engine, groups=lambda: {"chat": GROUP}, clock=clock)
    groups = {"chat": GROUP}
    return HealthChecker(lambda: groups, manager, http_get=node_2_is_down, clock=clock, fence=elector.fence), manager


def failover_audit(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        actions = conn.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars()
        return [a for a in actions if a.startswith("failover.")]


def test_a_replaced_leader_records_no_check_and_the_new_leader_does(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged = CapturingLogger()
    monkeypatch.setattr(checker_module, "log", logged)
    clock = Clock()
    old = LeaderElector(engine, instance_id="old", lease_seconds=15, clock=clock)
    new = LeaderElector(engine, instance_id="new", lease_seconds=15, clock=clock)
    assert old.tick()
    clock.advance(20)  # the old leader is paused past its lease; another replica takes over
    assert new.tick() and new.term == 2
    old._valid_until = clock() + timedelta(seconds=60)  # ... and, waking, still believes it leads
    stale, stale_manager = checker(engine, clock, old)

    assert stale.check_now() == []
    # Nothing of that round is recorded: no check, no health change, no switch, no event.
    assert [(e.healthy, e.last_checked_at) for e in stale_manager.states("chat")] == [(True, None), (True, None)]
    assert stale_manager.active("chat").endpoint == "node-2"
    assert stale_manager.events("chat") == []
    assert failover_audit(engine) == []
    # A skip, logged at info: not a crash with a traceback.
    assert [(c.method_name, c.args[0]) for c in logged.calls] == [("info", "failover.check_skipped_not_leader")]

    current, manager = checker(engine, clock, new)
    outcomes = current.check_now()
    assert [(o.endpoint, o.healthy) for o in outcomes] == [("node-1", True), ("node-2", False)]
    assert manager.active("chat").endpoint == "node-1"
    assert [e.event for e in reversed(manager.events("chat"))] == [
        "node_marked_failed",
        "failover_started",
        "failover_completed",
    ]
    assert failover_audit(engine) == [
        "failover.node_marked_failed",
        "failover.failover_started",
        "failover.failover_completed",
    ]


def test_on_a_replica_that_does_not_lead_checks_record_nothing_but_a_manual_switch_works(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """An operator's switch (API, playbook step) is not leader work: any replica makes it."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "failover.yaml").write_text(
        "failover:\n"
        "  - service: chat\n"
        "    endpoints: [{name: node-1, url: 'http://127.0.0.1:9', priority: 1},\n"
        "                {name: node-2, url: 'http://127.0.0.1:9', priority: 0}]\n"
    )
    services = Services.build(make_settings(database_url, rules_dir=tmp_path / "rules"))
    try:
        services.rules.load()
        assert not services.elector.is_leader  # never campaigned
        assert services.health_checker.check_now() == []
        assert services.failover.events("chat") == []
        result = services.failover.switch("chat", "node-1", actor="alice", reason="maintenance on node-2")
        assert result.changed and services.failover.active("chat").endpoint == "node-1"
    finally:
        services.engine.dispose()
