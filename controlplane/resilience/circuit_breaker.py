"""Owns circuit breakers: stop calling an action target that keeps failing, probe it again after a pause.

Semantics (seed 002): CLOSED counts consecutive failures, a success resets the count, and
`failure_threshold` of them open the circuit. OPEN rejects every call until `open_timeout`
has passed, then HALF_OPEN lets at most `half_open_max_calls` calls be in flight at once;
`success_threshold` consecutive successes close the circuit, any failure opens it again.

Every call admitted by `allow()`/`guard()` must be followed by exactly one `record_success()`
or `record_failure()`; `attempt()` and `call()` do that for you, and also ignore the result of
a call admitted before the last state change (it says nothing about the target now).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import ParamSpec, TypedDict, TypeVar, Unpack

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

P = ParamSpec("P")
R = TypeVar("R")

log = structlog.get_logger("controlplane.resilience")


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Seed 001's encoding, so a dashboard can plot state as one line per breaker.
STATE_VALUE: dict[State, float] = {State.CLOSED: 0.0, State.HALF_OPEN: 0.5, State.OPEN: 1.0}

# Module globals: one lookup cheaper than `State.X` on the admission path.
_CLOSED, _OPEN, _HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN

StateListener = Callable[[str, State, State], None]
FailurePredicate = Callable[[BaseException], bool]


class CircuitOpenError(Exception):
    """A call was refused without being made: the circuit is open (or half-open and busy)."""

    def __init__(self, name: str, retry_in_seconds: float) -> None:
        super().__init__(name, retry_in_seconds)
        self.name = name
        self.retry_in_seconds = retry_in_seconds

    def __str__(self) -> str:
        # Built on demand: failing fast should not pay for formatting a message nobody reads.
        return f"circuit {self.name!r} is open; next probe in {self.retry_in_seconds:.1f}s"


class BreakerSettings(TypedDict, total=False):
    failure_threshold: int
    success_threshold: int
    open_timeout: float
    half_open_max_calls: int


class BreakerSnapshot(TypedDict):
    name: str
    state: State
    consecutive_failures: int  # in CLOSED
    consecutive_successes: int  # in HALF_OPEN
    in_flight: int  # half-open probes not yet settled
    total: int  # calls asked for: succeeded + failed + rejected + those still running
    succeeded: int
    failed: int
    rejected: int
    opened_at: datetime | None  # wall-clock time it last opened; None while closed
    retry_in: float | None  # seconds until it goes half-open; None unless open


def _every_exception(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


class CircuitBreaker:
    """One breaker for one target. Thread-safe: all state changes under one lock; listeners run outside it."""

    __slots__ = (
        "_clock",
        "_failures",
        "_generation",
        "_in_flight",
        "_lock",
        "_on_state_change",
        "_open_until",
        "_opened_at",
        "_state",
        "_successes",
        "failed",
        "failure_threshold",
        "half_open_max_calls",
        "name",
        "open_timeout",
        "rejected",
        "succeeded",
        "success_threshold",
        "total",
    )

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        success_threshold: int = 2,
        open_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        for field, value in (
            ("failure_threshold", failure_threshold),
            ("success_threshold", success_threshold),
            ("half_open_max_calls", half_open_max_calls),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"circuit breaker {name!r}: {field} must be an integer >= 1, got {value!r}")
        # `not > 0` also refuses NaN; an infinite timeout would never probe the target again.
        if isinstance(open_timeout, bool) or not isinstance(open_timeout, int | float) or not 0 < open_timeout < 1e9:
            raise ValueError(f"circuit breaker {name!r}: open_timeout must be seconds > 0, got {open_timeout!r}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.open_timeout = float(open_timeout)
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._generation = 0  # bumped on every transition, so late results of older calls are ignored
        self._failures = 0
        self._successes = 0
        self._in_flight = 0
        self._opened_at: float | None = None
        self._open_until = 0.0  # clock reading at which OPEN turns HALF_OPEN
        self.total = self.succeeded = self.failed = self.rejected = 0

    # -- admission ---------------------------------------------------------------------------

    def allow(self) -> bool:
        """Admit one call (then record its result) or count it as rejected."""
        return self._acquire() is not None

    def guard(self) -> None:
        """Like `allow()`, but raise CircuitOpenError instead of returning False."""
        if self._acquire() is None:
            raise CircuitOpenError(self.name, self._retry_hint())

    def attempt(self, is_failure: FailurePredicate = _every_exception) -> _Attempt:
        """`with breaker.attempt(): ...` records success on normal exit, failure on an exception.

        An exception for which `is_failure` is false (say, the target answered 404) counts as a
        success: the target responded. One that is not an Exception (cancellation, Ctrl-C) counts
        as neither. The exception always propagates.
        """
        return _Attempt(self, is_failure)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn` through the breaker; raises CircuitOpenError without calling it when open."""
        with _Attempt(self, _every_exception):
            return fn(*args, **kwargs)

    def record_success(self) -> None:
        self._settle(None, True)

    def record_failure(self) -> None:
        self._settle(None, False)

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        with self._lock:
            change = self._expire_open()
            state = self._state
        if change:
            self._notify(*change)
        return state

    @property
    def opened_at(self) -> float | None:
        """Clock reading when it last opened (kept while half-open); None while closed."""
        return self._opened_at

    @property
    def retry_in(self) -> float:
        """Seconds until an open circuit lets a probe through; 0 unless open."""
        with self._lock:
            return self._retry_in()

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            change = self._expire_open()
            now = self._clock()
            opened_at = (
                None
                if self._opened_at is None
                else datetime.now(UTC) - timedelta(seconds=max(0.0, now - self._opened_at))
            )
            snap = BreakerSnapshot(
                name=self.name,
                state=self._state,
                consecutive_failures=self._failures,
                consecutive_successes=self._successes,
                in_flight=self._in_flight,
                total=self.total,
                succeeded=self.succeeded,
                failed=self.failed,
                rejected=self.rejected,
                opened_at=opened_at,
                retry_in=self._retry_in() if self._state is State.OPEN else None,
            )
        if change:
            self._notify(*change)
        return snap

    # -- internals (callers hold self._lock unless said otherwise) ----------------------------

    def _acquire(self) -> int | None:
        """The admitted call's generation, or None if rejected. Takes the lock."""
        with self._lock:
            self.total += 1
            state = self._state
            if state is _CLOSED:  # the common path: no clock read, no allocation
                return self._generation
            if state is _OPEN and self._clock() < self._open_until:  # failing fast: keep it this short
                self.rejected += 1
                return None
            change = self._expire_open()
            admitted: int | None = None
            if self._state is _HALF_OPEN and self._in_flight < self.half_open_max_calls:
                self._in_flight += 1
                admitted = self._generation
            else:
                self.rejected += 1
        if change:
            self._notify(*change)
        return admitted

    def _settle(self, generation: int | None, ok: bool | None) -> None:
        """Record one admitted call's result: True success, False failure, None neither. Takes the lock."""
        with self._lock:
            if ok is True:
                self.succeeded += 1
            elif ok is False:
                self.failed += 1
            if generation is not None and generation != self._generation:
                return
            change: tuple[State, State] | None = None
            state = self._state
            if state is State.HALF_OPEN:
                self._in_flight = max(0, self._in_flight - 1)
                if ok is True:
                    self._successes += 1
                    if self._successes >= self.success_threshold:
                        change = self._to(State.CLOSED)
                elif ok is False:
                    change = self._to(State.OPEN)
            elif state is State.CLOSED:
                if ok is True:
                    self._failures = 0
                elif ok is False:
                    self._failures += 1
                    if self._failures >= self.failure_threshold:
                        change = self._to(State.OPEN)
            # OPEN: a result recorded without admission changes nothing; the timer keeps running.
        if change:
            self._notify(*change)

    def _expire_open(self) -> tuple[State, State] | None:
        if self._state is State.OPEN and self._retry_in() <= 0:
            return self._to(State.HALF_OPEN)
        return None

    def _retry_in(self) -> float:
        if self._state is not _OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def _retry_hint(self) -> float:
        """`retry_in` without the lock, for the error of a rejected call: a hint, so a racy read is fine."""
        return max(0.0, self._open_until - self._clock()) if self._state is _OPEN else 0.0

    def _to(self, new: State) -> tuple[State, State]:
        old, self._state = self._state, new
        self._generation += 1
        self._failures = self._successes = self._in_flight = 0
        if new is State.OPEN:
            self._opened_at = self._clock()
            self._open_until = self._opened_at + self.open_timeout
        elif new is State.CLOSED:
            self._opened_at = None
        return old, new

    def _notify(self, old: State, new: State) -> None:
        """Runs outside the lock, so a slow or re-entrant listener cannot stall or deadlock calls."""
        log.info("circuit_breaker_transition", breaker=self.name, old=old.value, new=new.value)
        if self._on_state_change is None:
            return
        try:
            self._on_state_change(self.name, old, new)
        except Exception:
            # The transition has happened; a broken audit hook must not turn the call's result into an error.
            log.exception("circuit_breaker_listener_failed", breaker=self.name)


class _Attempt:
    __slots__ = ("_breaker", "_generation", "_is_failure")

    def __init__(self, breaker: CircuitBreaker, is_failure: FailurePredicate) -> None:
        self._breaker = breaker
        self._is_failure = is_failure
        self._generation = 0

    def __enter__(self) -> None:
        generation = self._breaker._acquire()
        if generation is None:
            raise CircuitOpenError(self._breaker.name, self._breaker._retry_hint())
        self._generation = generation

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ok: bool | None
        if exc is None:
            ok = True
        elif self._is_failure(exc):
            ok = False
        else:
            ok = True if isinstance(exc, Exception) else None
        self._breaker._settle(self._generation, ok)


class CircuitBreakers:
    """The service's breakers by name (one per action target, e.g. `graph.disable:http://sample:8000`).

    `defaults` apply to breakers created by `get()`; they are validated here, so bad settings
    fail at start-up. With `registry`, the breakers' state and call counts are exported on it.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        on_state_change: StateListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        **defaults: Unpack[BreakerSettings],
    ) -> None:
        CircuitBreaker("defaults", **defaults)
        self._defaults = defaults
        self._clock = clock
        self._on_state_change = on_state_change
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(_BreakerCollector(self))

    def get(self, name: str, **settings: Unpack[BreakerSettings]) -> CircuitBreaker:
        """The breaker called `name`, created with `settings` over the defaults on first use only."""
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    merged: BreakerSettings = {**self._defaults, **settings}
                    breaker = CircuitBreaker(
                        name,
                        **merged,
                        clock=self._clock,
                        on_state_change=self._on_state_change,
                    )
                    self._breakers[name] = breaker
        return breaker

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def snapshot(self) -> list[BreakerSnapshot]:
        with self._lock:
            breakers = sorted(self._breakers.values(), key=lambda b: b.name)
        return [breaker.snapshot() for breaker in breakers]


class _BreakerCollector(Collector):
    """Reads every breaker at scrape time; nothing to keep in step when breakers are created."""

    def __init__(self, breakers: CircuitBreakers) -> None:
        self._breakers = breakers

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "controlplane_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 0.5 half-open, 1 open.",
                labels=["name"],
            ),
            CounterMetricFamily(
                "controlplane_circuit_breaker_calls",
                "Calls through circuit breakers by result; rejected calls failed fast without being made.",
                labels=["name", "result"],
            ),
        )

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        # Lets the registry refuse a second collector exporting the same names.
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        state, calls = self._families()
        for snap in self._breakers.snapshot():
            state.add_metric([snap["name"]], STATE_VALUE[snap["state"]])
            for result, count in (
                ("succeeded", snap["succeeded"]),
                ("failed", snap["failed"]),
                ("rejected", snap["rejected"]),
            ):
                calls.add_metric([snap["name"], result], float(count))
        return (state, calls)
