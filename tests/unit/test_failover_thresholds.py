"""The failover rules without a database: thresholds, priorities, failback, no healthy endpoint (seed 002)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.failover.thresholds import (
    ACTOR,
    GroupState,
    Health,
    Transition,
    apply_check,
    initial_active,
    leave_removed,
    manual_switch,
)
from controlplane.rules.schema import Endpoint, FailoverGroup

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def chat(*, failure_threshold: int = 2, recovery_threshold: int = 2, auto_failback: bool = True) -> FailoverGroup:
    """Seed 002's three nodes; node-2 is preferred, node-1 and node-3 tie (node-1 wins by name)."""
    return FailoverGroup(
        service="chat",
        endpoints=[
            Endpoint(name="node-1", url="http://node-1:8000", region="eu-west", priority=1),
            Endpoint(name="node-2", url="http://node-2:8000", region="us-east", priority=0),
            Endpoint(name="node-3", url="http://node-3:8000", region="ap-south", priority=1),
        ],
        failure_threshold=failure_threshold,
        recovery_threshold=recovery_threshold,
        auto_failback=auto_failback,
    )


def fresh(group: FailoverGroup) -> GroupState:
    health = {e.name: Health() for e in group.endpoints}
    return GroupState(group, initial_active(group, health).name, health)


class Run:
    """Feeds checks one interval apart, as the checker does, and keeps every transition."""

    def __init__(self, state: GroupState) -> None:
        self.state = state
        self.now = T0
        self.log: list[Transition] = []

    def check(self, endpoint: str, ok: bool, error: str | None = None) -> list[str]:
        self.now += timedelta(seconds=10)
        change = apply_check(self.state, endpoint, ok, error, self.now)
        self.state = change.after
        self.log.append(change)
        return change.kinds

    def health(self, endpoint: str) -> Health:
        return self.state.health[endpoint]


def test_seed_002_demo_node_2_fails_twice_then_passes_twice() -> None:
    run = Run(fresh(chat()))
    assert run.state.active == "node-2"

    assert run.check("node-2", False, "HTTP 500") == []
    failed = run.log[-1]
    assert failed.after.health["node-2"] == Health(True, 1, 0, run.now, "HTTP 500") and not failed.moved

    assert run.check("node-2", False, "HTTP 500") == ["node_marked_failed", "failover_started", "failover_completed"]
    failover = run.log[-1]
    assert failover.moved and failover.after.active == "node-1"
    marked, started, completed = failover.events
    assert (marked.endpoint, dict(marked.detail)) == ("node-2", {"failures": 2, "error": "HTTP 500"})
    assert (started.endpoint, started.from_endpoint, started.from_region, started.to_endpoint) == (
        "node-2",
        "node-2",
        "us-east",
        None,
    )
    assert (completed.from_endpoint, completed.to_endpoint, completed.from_region, completed.to_region) == (
        "node-2",
        "node-1",
        "us-east",
        "eu-west",
    )
    assert completed.detail["reason"] == "active endpoint node-2 failed its health checks"
    assert {e.actor for e in failover.events} == {ACTOR}

    assert run.check("node-2", True) == ["recovery_started"]
    assert run.state.active == "node-1" and not run.health("node-2").healthy  # one pass is not recovery yet
    assert run.check("node-2", True) == ["recovery_completed", "failover_started", "failover_completed"]
    failback = run.log[-1]
    assert (failback.before.active, failback.after.active) == ("node-1", "node-2")
    assert "failback" in failback.events[-1].detail["reason"]
    assert run.health("node-2") == Health(True, 0, 2, run.now, None)


def test_a_pass_resets_the_failure_count_and_a_failure_the_recovery_count() -> None:
    run = Run(fresh(chat(failure_threshold=3, recovery_threshold=3)))
    for ok in (False, False, True, False, False):
        assert run.check("node-2", ok) == []
    assert run.health("node-2").healthy and run.health("node-2").failures == 2
    assert run.health("node-2").last_error == "health check failed"  # a failure without a message still says so
    assert run.check("node-2", False)[0] == "node_marked_failed"

    assert run.check("node-2", True) == ["recovery_started"]
    assert run.check("node-2", True) == []
    assert run.check("node-2", False) == []
    assert run.check("node-2", True) == ["recovery_started"]  # counting starts over
    assert run.check("node-2", True) == []
    assert run.check("node-2", True)[0] == "recovery_completed"


def test_failover_goes_to_the_most_preferred_healthy_endpoint() -> None:
    group = chat(auto_failback=False)
    run = Run(fresh(group))
    run.check("node-1", False)
    run.check("node-1", False)
    assert run.state.active == "node-2"  # a backup failing moves nothing
    assert run.log[-1].kinds == ["node_marked_failed"]
    run.check("node-2", False)
    run.check("node-2", False)
    assert run.state.active == "node-3"  # node-1 would win the tie by name, but it is failed


def test_without_auto_failback_traffic_stays_on_the_backup() -> None:
    run = Run(fresh(chat(auto_failback=False)))
    for ok in (False, False, True):
        run.check("node-2", ok)
    assert run.check("node-2", True) == ["recovery_completed"]
    assert run.state.active == "node-1" and run.health("node-2").healthy


def test_failback_only_to_a_more_preferred_endpoint() -> None:
    run = Run(fresh(chat()))
    for node in ("node-3", "node-3", "node-2", "node-2"):
        run.check(node, False)
    assert run.state.active == "node-1"
    run.check("node-3", True)
    assert run.check("node-3", True) == ["recovery_completed"]  # node-3 ties node-1: no move
    assert run.state.active == "node-1"


def test_with_no_healthy_endpoint_the_active_stays_and_the_first_back_takes_over() -> None:
    run = Run(fresh(chat(failure_threshold=1, recovery_threshold=1, auto_failback=False)))
    run.check("node-1", False, "down")
    run.check("node-3", False, "down")
    assert run.check("node-2", False, "down") == ["node_marked_failed", "failover_started", "failover_failed"]
    failed = run.log[-1]
    assert not failed.moved and run.state.active == "node-2"  # clients still get an answer
    assert failed.events[-1].detail["error"] == "no healthy endpoint"
    assert run.check("node-3", True) == [
        "recovery_started",
        "recovery_completed",
        "failover_started",
        "failover_completed",
    ]
    assert run.state.active == "node-3"  # not a failback, so auto_failback does not matter
    assert "recovered while node-2 is failed" in run.log[-1].events[-1].detail["reason"]


def test_a_check_neither_reads_a_clock_nor_changes_the_state_it_was_given() -> None:
    state = fresh(chat())
    later = T0 + timedelta(days=400)
    change = apply_check(state, "node-2", False, "timeout", later)
    assert change.after.health["node-2"].last_checked_at == later
    assert state.health["node-2"] == Health() and change.before is state
    with pytest.raises(NotFound, match="service 'chat' has no endpoint 'node-9'"):
        apply_check(state, "node-9", True, None, later)


def test_manual_switch() -> None:
    run = Run(fresh(chat()))
    for node in ("node-3", "node-3"):
        run.check(node, False, "refused")

    with pytest.raises(Conflict, match=r"'node-3' of service 'chat' is unhealthy \(2 failed .*refused"):
        manual_switch(run.state, "node-3", actor="admin", reason="try it")
    with pytest.raises(InvalidInput, match=r"no endpoint 'node-9' \(endpoints: node-1, node-2, node-3\)"):
        manual_switch(run.state, "node-9", actor="admin", reason="")
    same = manual_switch(run.state, "node-2", actor="admin", reason="")
    assert not same.moved and same.events == ()

    moved = manual_switch(run.state, None, actor="admin", reason="drain node-2", detail={"manual": True})
    assert (moved.after.active, moved.actor, moved.kinds) == (
        "node-1",
        "admin",
        ["failover_started", "failover_completed"],
    )
    assert {e.actor for e in moved.events} == {"admin"}
    assert dict(moved.events[-1].detail) == {"reason": "drain node-2", "manual": True}

    run.state = moved.after
    run.check("node-2", False)
    run.check("node-2", False)
    with pytest.raises(Conflict, match="no healthy endpoint of service 'chat' other than the active 'node-1'"):
        manual_switch(run.state, None, actor="admin", reason="")


def test_an_endpoint_removed_from_the_rules_is_left() -> None:
    state = fresh(chat())
    smaller = chat().model_copy(update={"endpoints": chat().endpoints[::2]})
    health = {e.name: state.health[e.name] for e in smaller.endpoints}
    change = leave_removed(GroupState(smaller, "node-2", health))
    assert (change.after.active, change.kinds) == ("node-1", ["failover_started", "failover_completed"])
    assert change.events[0].endpoint is None and change.events[0].from_endpoint == "node-2"
    assert change.events[-1].detail["reason"] == "endpoint node-2 is no longer in the rule files"

    down = {name: Health(healthy=False) for name in health}
    assert (
        leave_removed(GroupState(smaller, "node-2", down)).after.active == "node-1"
    )  # nothing healthy: still an answer
    assert leave_removed(change.after).events == ()
