"""Circuit breaker transitions on a fake clock, the registry's metrics, listeners and thread safety."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from controlplane.resilience import CircuitBreaker, CircuitBreakers, CircuitOpenError, State
from tests.helpers import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.fromtimestamp(1000, UTC))  # reads 1000.0 in seconds


def make(clock: Clock, **settings: int | float) -> CircuitBreaker:
    params: dict[str, int | float] = {
        "failure_threshold": 3,
        "success_threshold": 2,
        "open_timeout": 30.0,
        "half_open_max_calls": 1,
    }
    params.update(settings)
    return CircuitBreaker("target", clock=clock.monotonic, **params)  # type: ignore[arg-type]


def run(breaker: CircuitBreaker, clock: Clock, script: str) -> str:
    """Play a script and return the state letter after each event.

    Events: s/f = one admitted call that succeeds/fails, r = a call that must be rejected,
    `+N` = advance the clock N seconds. States: C closed, O open, H half-open.
    """
    letters = {State.CLOSED: "C", State.OPEN: "O", State.HALF_OPEN: "H"}
    seen = []
    for event in script.split():
        if event.startswith("+"):
            clock.advance(float(event[1:]))
        elif event == "r":
            assert not breaker.allow(), f"expected a rejection at {' '.join(seen)}"
        else:
            assert breaker.allow(), f"expected admission at {' '.join(seen)}"
            breaker.record_success() if event == "s" else breaker.record_failure()
        seen.append(letters[breaker.state])
    return " ".join(seen)


@pytest.mark.parametrize(
    ("script", "states"),
    [
        pytest.param("f f f", "C C O", id="closed-opens-at-threshold"),
        pytest.param("f f s f f", "C C C C C", id="success-resets-consecutive-failures"),
        pytest.param("f f f r r +29.9 r", "C C O O O O O", id="open-rejects-until-timeout"),
        pytest.param("f f f +30 s s", "C C O H H C", id="half-open-after-timeout-then-closes"),
        pytest.param("f f f +30 s f", "C C O H H O", id="failure-in-half-open-reopens"),
        pytest.param("f f f +30 f r +29 r +1 s s", "C C O H O O O O H H C", id="reopen-restarts-timer"),
        pytest.param("f f f +30 s s f f s f f f", "C C O H H C C C C C C O", id="closed-again-counts-afresh"),
    ],
)
def test_transitions(clock: Clock, script: str, states: str) -> None:
    assert run(make(clock), clock, script) == states


def test_rejections_are_counted_while_open(clock: Clock) -> None:
    breaker = make(clock)
    run(breaker, clock, "f f f r r +10 r")
    with pytest.raises(CircuitOpenError):
        breaker.guard()
    snap = breaker.snapshot()
    assert (snap["total"], snap["failed"], snap["succeeded"], snap["rejected"]) == (7, 3, 0, 4)


def test_counters_and_snapshot(clock: Clock) -> None:
    breaker = make(clock)
    run(breaker, clock, "s f f f r r +10")
    snap = breaker.snapshot()
    assert snap["state"] is State.OPEN
    assert (snap["total"], snap["succeeded"], snap["failed"], snap["rejected"]) == (6, 1, 3, 2)
    assert snap["retry_in"] == pytest.approx(20.0)
    assert breaker.retry_in == pytest.approx(20.0)
    assert breaker.opened_at == pytest.approx(1000.0)
    assert snap["opened_at"] is not None
    clock.advance(20)
    snap = breaker.snapshot()
    assert snap["state"] is State.HALF_OPEN and snap["retry_in"] is None and breaker.retry_in == 0.0
    run(breaker, clock, "s s")
    snap = breaker.snapshot()
    assert snap["state"] is State.CLOSED and snap["opened_at"] is None and snap["consecutive_failures"] == 0


def test_half_open_limits_concurrent_probes(clock: Clock) -> None:
    breaker = make(clock, half_open_max_calls=2, success_threshold=3)
    run(breaker, clock, "f f f +30")
    assert breaker.allow() and breaker.allow()
    assert not breaker.allow()  # two probes already in flight
    breaker.record_success()
    assert breaker.allow()  # a slot freed up
    assert not breaker.allow()
    breaker.record_success()
    breaker.record_success()
    assert breaker.state is State.CLOSED
    assert breaker.snapshot()["rejected"] == 2


def test_guard_raises_with_time_to_next_probe(clock: Clock) -> None:
    breaker = make(clock)
    run(breaker, clock, "f f f +12")
    with pytest.raises(CircuitOpenError) as caught:
        breaker.guard()
    assert caught.value.name == "target"
    assert caught.value.retry_in_seconds == pytest.approx(18.0)
    assert "next probe in 18.0s" in str(caught.value)


def test_attempt_records_success_and_failure(clock: Clock) -> None:
    breaker = make(clock)
    with breaker.attempt():
        pass
    for _ in range(3):
        with pytest.raises(RuntimeError), breaker.attempt():
            raise RuntimeError("boom")
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError), breaker.attempt():
        pytest.fail("the body must not run while open")
    snap = breaker.snapshot()
    assert (snap["succeeded"], snap["failed"], snap["rejected"]) == (1, 3, 1)


def test_is_failure_lets_the_caller_choose(clock: Clock) -> None:
    """A 4xx-like error means the target answered: it propagates but keeps the circuit closed."""
    breaker = make(clock, failure_threshold=1)

    def only_timeouts(exc: BaseException) -> bool:
        return isinstance(exc, TimeoutError)

    for _ in range(5):
        with pytest.raises(ValueError), breaker.attempt(is_failure=only_timeouts):
            raise ValueError("bad request")
    assert breaker.state is State.CLOSED
    assert breaker.snapshot()["succeeded"] == 5
    with pytest.raises(TimeoutError), breaker.attempt(is_failure=only_timeouts):
        raise TimeoutError
    assert breaker.state is State.OPEN


def test_call_passes_arguments_and_result(clock: Clock) -> None:
    breaker = make(clock, failure_threshold=1)
    assert breaker.call(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never")


def test_late_result_of_an_older_call_is_ignored(clock: Clock) -> None:
    """A slow call admitted while closed finishes after the circuit went half-open: it proves nothing now."""
    breaker = make(clock, success_threshold=1)
    slow = breaker.attempt()
    slow.__enter__()
    run(breaker, clock, "f f f +30")
    assert breaker.state is State.HALF_OPEN
    slow.__exit__(None, None, None)
    assert breaker.state is State.HALF_OPEN  # not closed by a result from before the outage
    assert breaker.snapshot()["succeeded"] == 1  # but still counted


def test_cancellation_frees_the_probe_slot_without_a_verdict(clock: Clock) -> None:
    breaker = make(clock)
    run(breaker, clock, "f f f +30")
    with pytest.raises(KeyboardInterrupt), breaker.attempt():
        raise KeyboardInterrupt
    assert breaker.state is State.HALF_OPEN
    assert breaker.allow()  # the slot was released


def test_seed_002_demo_sequence(clock: Clock) -> None:
    """Seed 002's demo with its defaults: 5 failures open it, 30 s later 2 probes close it."""
    breaker = CircuitBreaker("demo", clock=clock.monotonic)
    outcomes = []
    for i in range(10):
        try:
            breaker.call(_fail if i < 5 else _ok)
            outcomes.append("ok")
        except CircuitOpenError:
            outcomes.append("rejected")
        except RuntimeError:
            outcomes.append("failed")
    assert outcomes == ["failed"] * 5 + ["rejected"] * 5
    assert breaker.state is State.OPEN
    clock.advance(30)
    assert breaker.state is State.HALF_OPEN
    assert breaker.call(_ok) == "ok"
    assert breaker.state is State.HALF_OPEN
    assert breaker.call(_ok) == "ok"
    assert breaker.state is State.CLOSED
    snap = breaker.snapshot()
    assert (snap["total"], snap["succeeded"], snap["failed"], snap["rejected"]) == (12, 2, 5, 5)


def _ok() -> str:
    return "ok"


def _fail() -> str:
    raise RuntimeError("target down")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be an integer >= 1"),
        ({"success_threshold": -1}, "success_threshold must be an integer >= 1"),
        ({"half_open_max_calls": 0}, "half_open_max_calls must be an integer >= 1"),
        ({"failure_threshold": 2.5}, "failure_threshold must be an integer >= 1"),
        ({"failure_threshold": True}, "failure_threshold must be an integer >= 1"),
        ({"open_timeout": 0}, "open_timeout must be seconds > 0"),
        ({"open_timeout": -5.0}, "open_timeout must be seconds > 0"),
        ({"open_timeout": float("nan")}, "open_timeout must be seconds > 0"),
        ({"open_timeout": float("inf")}, "open_timeout must be seconds > 0"),
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker("x", **settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        CircuitBreakers(**settings)  # type: ignore[arg-type]


def test_listener_sees_every_transition(clock: Clock) -> None:
    seen: list[tuple[str, State, State]] = []
    breakers = CircuitBreakers(clock=clock.monotonic, on_state_change=lambda *t: seen.append(t), failure_threshold=2)
    breaker = breakers.get("graph.disable:http://sample:8000")
    run(breaker, clock, "f f r +30 f +30 s s")
    name = "graph.disable:http://sample:8000"
    assert seen == [
        (name, State.CLOSED, State.OPEN),
        (name, State.OPEN, State.HALF_OPEN),
        (name, State.HALF_OPEN, State.OPEN),
        (name, State.OPEN, State.HALF_OPEN),
        (name, State.HALF_OPEN, State.CLOSED),
    ]


def test_a_failing_listener_does_not_break_calls(clock: Clock) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("audit down")

    breaker = CircuitBreaker("x", failure_threshold=1, clock=clock.monotonic, on_state_change=broken)
    breaker.record_failure()
    assert breaker.state is State.OPEN


def test_registry_creates_once_with_defaults_and_overrides(clock: Clock) -> None:
    breakers = CircuitBreakers(clock=clock.monotonic, failure_threshold=4, open_timeout=10)
    first = breakers.get("a")
    assert breakers.get("a", failure_threshold=9) is first  # settings apply on creation only
    assert (first.failure_threshold, first.open_timeout, first.success_threshold) == (4, 10.0, 2)
    assert breakers.get("b", failure_threshold=7).failure_threshold == 7
    assert "a" in breakers and len(breakers) == 2
    assert [s["name"] for s in breakers.snapshot()] == ["a", "b"]


def _sample(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def test_metrics_exported_on_the_given_registry(clock: Clock) -> None:
    registry = CollectorRegistry()
    breakers = CircuitBreakers(registry=registry, clock=clock.monotonic, failure_threshold=2, open_timeout=5)
    closed, flappy = breakers.get("closed"), breakers.get("flappy")
    run(closed, clock, "s")
    state = "controlplane_circuit_breaker_state"
    calls = "controlplane_circuit_breaker_calls_total"

    assert _sample(registry, state, name="closed") == 0
    assert _sample(registry, state, name="flappy") == 0
    run(flappy, clock, "f f r")
    assert _sample(registry, state, name="flappy") == 1
    clock.advance(5)
    assert _sample(registry, state, name="flappy") == 0.5
    run(flappy, clock, "s s")
    assert _sample(registry, state, name="flappy") == 0

    assert _sample(registry, calls, name="flappy", result="succeeded") == 2
    assert _sample(registry, calls, name="flappy", result="failed") == 2
    assert _sample(registry, calls, name="flappy", result="rejected") == 1
    assert _sample(registry, calls, name="closed", result="succeeded") == 1
    # A second set of breakers on the same registry would export the same names: refused.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        CircuitBreakers(registry=registry)


def test_threads_counters_add_up() -> None:
    """Many threads through one flapping breaker: every call lands in exactly one counter."""
    transitions: list[tuple[State, State]] = []
    breaker = CircuitBreaker(
        "shared",
        failure_threshold=3,
        success_threshold=2,
        half_open_max_calls=2,
        open_timeout=1e-4,
        on_state_change=lambda _name, old, new: transitions.append((old, new)),
    )
    threads, per_thread = 16, 2000
    start = threading.Barrier(threads)

    def work(seed: int) -> None:
        start.wait()
        for i in range(per_thread):
            try:
                with breaker.attempt():
                    if (i + seed) % 10 < 4:  # bursts of failures, so it opens and recovers many times
                        raise RuntimeError
            except (RuntimeError, CircuitOpenError):
                pass

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    snap = breaker.snapshot()
    assert snap["total"] == threads * per_thread
    assert snap["succeeded"] + snap["failed"] + snap["rejected"] == snap["total"]
    assert snap["in_flight"] == 0
    assert set(transitions) == {
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.OPEN),
        (State.HALF_OPEN, State.CLOSED),
    }


@pytest.fixture(autouse=True)
def _no_leaked_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No thread started while a test runs outlives it: the breaker itself never leaves one behind.

    Counts only the threads this test (or a thread it started) starts; a process-wide count also saw
    worker threads that earlier tests' pools start or retire in the background, and flaked.
    """
    started: list[threading.Thread] = []
    ours = {threading.get_ident()}
    original = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if threading.get_ident() in ours:
            started.append(thread)
        original(thread)
        if thread.ident is not None and threading.get_ident() in ours:
            ours.add(thread.ident)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield
    assert [thread.name for thread in started if thread.is_alive()] == []
