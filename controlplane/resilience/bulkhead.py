"""Owns bulkheads: a few call slots per action target, and calls that end at their deadline.

A shared pool would let one hung target fill every thread, so that other targets' calls wait
in its queue, time out there, and still run after their step was recorded failed. Instead each
target (the circuit breaker's key) has `slots` calls in flight at most. A call waits for a slot
until its deadline; without one it fails and is never started. With one it runs on a thread
of its own while the caller waits until the same deadline; a call still running then is
abandoned, and its thread keeps the target's slot until the call returns, so a hung target
uses up its own slots and no one else's. A thread that gets to run only after its caller gave
up (or after the deadline) does not start the call.

Threads are bounded by slots x targets, and targets are bounded: only targets the rule files
or settings define get a key of their own (an action's `target` returns None for any other
name, see actions/base.py), so labels cannot add keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

R = TypeVar("R")

SLOTS_PER_TARGET = 4


class SlotTimeout(TimeoutError):
    """No slot of the target became free before the deadline: the call was never started."""


class CallTimeout(TimeoutError):
    """The call had not returned at its deadline: it was abandoned (or never started)."""


class _Call(Generic[R]):
    """One call on its own thread; `abandon()` and the start decision share a lock, so exactly one wins."""

    def __init__(self, fn: Callable[[], R], deadline: float, clock: Callable[[], float]) -> None:
        self._fn = fn
        self._deadline = deadline
        self._clock = clock
        self._lock = threading.Lock()
        self._abandoned = False
        self.done = threading.Event()
        self.result: R | None = None
        self.error: BaseException | None = None

    def run(self, release: Callable[[], None]) -> None:
        try:
            with self._lock:
                if self._abandoned or self._clock() >= self._deadline:
                    self._abandoned = True
                    return
            try:
                self.result = self._fn()
            except BaseException as exc:  # handed to the caller, who re-raises it
                self.error = exc
            self.done.set()
        finally:
            release()

    def abandon(self) -> bool:
        """Give up on the call; False if it finished after all (its result stands)."""
        with self._lock:
            if self.done.is_set():
                return False
            self._abandoned = True
            return True


class Bulkheads:
    """The service's bulkheads by target key; thread-safe."""

    def __init__(self, slots: int = SLOTS_PER_TARGET, *, clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1:
            raise ValueError(f"slots per target must be >= 1, got {slots}")
        self.slots = slots
        self._clock = clock
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def call(self, key: str, fn: Callable[[], R], *, deadline: float) -> R:
        """`fn()` on a slot of `key`, by `deadline` (a `clock` reading); raises SlotTimeout or CallTimeout."""
        slots = self._semaphores_of(key)
        left = deadline - self._clock()
        if left <= 0 or not slots.acquire(timeout=left):
            raise SlotTimeout(key)
        call = _Call(fn, deadline, self._clock)
        try:
            threading.Thread(target=call.run, args=(slots.release,), name=f"action:{key}", daemon=True).start()
        except BaseException:
            slots.release()
            raise
        if not call.done.wait(max(0.0, deadline - self._clock())) and call.abandon():
            raise CallTimeout(key)
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # set when done and no error

    def _semaphores_of(self, key: str) -> threading.BoundedSemaphore:
        with self._lock:
            semaphore = self._semaphores.get(key)
            if semaphore is None:
                semaphore = self._semaphores[key] = threading.BoundedSemaphore(self.slots)
            return semaphore
