"""The approvals page's plan cache: a redraw within the time to live reads no target; after it, or for another
execution, the plan is made again; the cache holds a bounded number of plans."""

from __future__ import annotations

from datetime import UTC, datetime

from controlplane.playbooks.approval_plans import RecentPlans
from controlplane.playbooks.planning import ExecutionPlan


def test_a_plan_is_made_once_per_time_to_live_and_the_cache_is_bounded() -> None:
    now = [0.0]
    made: list[int] = []

    def make(execution_id: int) -> ExecutionPlan:
        made.append(execution_id)
        return ExecutionPlan(rule="r", playbook="p", planned_at=datetime(2026, 12, 6, tzinfo=UTC))

    recent = RecentPlans(ttl=30.0, size=2, clock=lambda: now[0])
    first = recent.get(1, lambda: make(1))
    assert recent.get(1, lambda: make(1)) is first  # a redraw 0 s later reads nothing
    now[0] = 29.0
    recent.get(1, lambda: make(1))
    now[0] = 31.0
    recent.get(1, lambda: make(1))  # expired: planned again
    recent.get(2, lambda: make(2))
    recent.get(3, lambda: make(3))  # over the size: the oldest (1) is dropped
    recent.get(1, lambda: make(1))
    assert made == [1, 1, 2, 3, 1]
