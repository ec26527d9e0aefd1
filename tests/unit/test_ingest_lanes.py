"""Which ingest lane a notification takes (controlplane/ingest/lanes.py), on a fake clock."""

from __future__ import annotations

from controlplane.ingest.lanes import LaneRouter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(clock: Clock, **kwargs: float) -> LaneRouter:
    return LaneRouter(clock=clock, **kwargs)  # type: ignore[arg-type]


def test_a_page_from_a_quiet_group_goes_express_and_a_storms_notification_goes_bulk() -> None:
    lanes = router(Clock(), max_alerts=4)
    assert lanes.route("{}:{alertname=PodDown, service=checkout}", 1) == "express"
    assert lanes.route("{}:{alertname=StormAlert, service=svc-001}", 10) == "bulk"


def test_a_group_that_keeps_sending_goes_bulk_once_its_alerts_in_the_window_pass_the_bound() -> None:
    clock = Clock()
    lanes = router(clock, max_alerts=4, window_seconds=10)
    seen = []
    for _ in range(6):
        seen.append(lanes.route("g", 1))
        lanes.done("g")
        clock.now += 1
    assert seen == ["express"] * 4 + ["bulk"] * 2
    clock.now += 10  # a whole quiet window: its volume starts again
    assert lanes.route("g", 1) == "express"


def test_a_group_stays_in_its_lane_while_a_notification_of_it_is_not_committed() -> None:
    """A light notification behind a heavy one of its group must not overtake it in the express lane."""
    clock = Clock()
    lanes = router(clock, max_alerts=4, window_seconds=10)
    assert lanes.route("g", 10) == "bulk"
    clock.now += 11  # the volume window has passed, but the heavy one is still queued
    assert lanes.route("g", 1) == "bulk"
    lanes.done("g")
    lanes.done("g")
    clock.now += 11
    assert lanes.route("g", 1) == "express"  # nothing of it in flight: it may change lanes


def test_an_express_group_stays_express_while_outstanding_even_when_heavy() -> None:
    lanes = router(Clock(), max_alerts=4)
    assert lanes.route("g", 1) == "express"
    assert lanes.route("g", 50) == "express"  # its first one is not committed yet: same lane, same order
    lanes.done("g")
    lanes.done("g")
    assert lanes.route("g", 1) == "bulk"  # 52 alerts in the window


def test_groups_quiet_for_a_window_are_forgotten_so_memory_follows_recent_groups() -> None:
    clock = Clock()
    lanes = router(clock, window_seconds=10)
    for i in range(1000):  # every probe its own group, as many Alertmanager configurations do
        lanes.route(f"probe-{i}", 1)
        lanes.done(f"probe-{i}")
    lanes.route("held", 1)  # not committed yet: must survive the sweep
    clock.now += 11
    lanes.route("new", 1)
    assert lanes.tracked() == 2
