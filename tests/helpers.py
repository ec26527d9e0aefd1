"""Plain helpers the tests share: polling with a deadline and a clock the test moves by hand."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

T = TypeVar("T")
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # where a test's clock starts unless it says otherwise


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (),
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy, and return that; fail once `timeout` seconds have passed.

    `retry_on`: exceptions that mean "not yet" (a server between restarts); the last one is named on failure.
    `details`: what else to say on failure (the servers' logs).
    """
    deadline = time.monotonic() + timeout
    while True:
        error: Exception | None = None
        try:
            value = check()
        except retry_on as exc:
            value, error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"not within {timeout:g}s: {what}"
            if error is not None:
                message += f" (last error: {error!r})"
            if details is not None:
                message += f"\n{details()}"
            raise AssertionError(message)
        time.sleep(interval)


class Clock:
    """A clock that moves only when the test says: by `advance()`, or by `step` at every reading."""

    def __init__(self, start: datetime = T0, *, step: timedelta = timedelta(0)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def monotonic(self) -> float:
        """This clock in seconds, for what reads `time.monotonic()` (circuit breakers)."""
        return self.now.timestamp()
