"""Bulkheads: per-target slots, calls bounded by their deadline, and no call started after its caller gave up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from controlplane.resilience.bulkhead import Bulkheads, CallTimeout, SlotTimeout


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds `hang` calls until the test ends (or opens it)."""
    event = threading.Event()
    yield event
    event.set()


def soon(seconds: float) -> float:
    return time.monotonic() + seconds


def test_a_call_returns_its_result_or_raises_its_error() -> None:
    bulkheads = Bulkheads()
    assert bulkheads.call("t", lambda: 42, deadline=soon(5)) == 42
    with pytest.raises(ZeroDivisionError):
        bulkheads.call("t", lambda: 1 // 0, deadline=soon(5))


def test_a_hung_target_uses_up_its_own_slots_only(gate: threading.Event) -> None:
    bulkheads = Bulkheads(slots=2)
    for _ in range(2):
        with pytest.raises(CallTimeout):
            bulkheads.call("hung", lambda: gate.wait(60), deadline=soon(0.1))
    made: list[str] = []
    began = time.monotonic()
    with pytest.raises(SlotTimeout):
        bulkheads.call("hung", lambda: made.append("hung"), deadline=soon(0.3))
    assert 0.25 < time.monotonic() - began < 2
    assert bulkheads.call("healthy", lambda: "ok", deadline=soon(0.3)) == "ok"
    gate.set()  # the abandoned calls return and give their slots back
    deadline = soon(5)
    while True:
        try:
            bulkheads.call("hung", lambda: made.append("later"), deadline=soon(0.05))
            break
        except SlotTimeout:
            assert time.monotonic() < deadline, "the slots were never given back"
    assert made == ["later"]  # the call refused for want of a slot never ran


def test_the_deadline_covers_the_wait_for_a_slot_and_the_call(gate: threading.Event) -> None:
    bulkheads = Bulkheads(slots=1)
    first_started, first_done = threading.Event(), threading.Event()

    def first() -> None:
        first_started.set()
        first_done.wait(10)

    threading.Thread(target=lambda: bulkheads.call("t", first, deadline=soon(10))).start()
    assert first_started.wait(5)
    threading.Timer(0.3, first_done.set).start()  # frees the slot after 0.3 s
    began = time.monotonic()
    with pytest.raises(CallTimeout):
        bulkheads.call("t", lambda: gate.wait(60), deadline=soon(0.6))
    assert time.monotonic() - began < 1.0  # 0.6 s in all, not 0.3 s of waiting plus 0.6 s of call


def test_a_call_whose_thread_runs_only_after_the_deadline_is_never_made() -> None:
    # The clock reads 0 when the caller takes a slot, then 10 (past the deadline of 1) by the time
    # the call's thread runs: as if that thread were scheduled late on a loaded machine.
    readings = iter([0.0])
    bulkheads = Bulkheads(clock=lambda: next(readings, 10.0))
    made: list[int] = []
    with pytest.raises(CallTimeout):
        bulkheads.call("t", lambda: made.append(1), deadline=1.0)
    for thread in threading.enumerate():
        if thread.name == "action:t":
            thread.join(5)
    assert made == []
