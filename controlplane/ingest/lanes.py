"""Owns which ingest lane a notification takes: light groups go express, so a storm cannot queue them.

The ingest writer commits notifications on two lanes, each its own thread and transactions. A
storm is heavy groups: many alerts per notification, one notification after another. Their
batches take long to commit, and a page from a quiet service queued behind them would wait as
long. So a notification whose Alertmanager group (`groupKey`) sent few alerts lately takes the
express lane, and the rest the bulk lane; when nothing storms, both lanes are idle and equally fast.

A group's notifications must commit in the order they came (a resolve must not overtake its
firing). Each lane commits first in, first out, so it is enough that a group never has
notifications in both lanes at once: while any of its notifications is not yet committed, the
next one takes the same lane, whatever its volume says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Lane = Literal["express", "bulk"]
LANES: tuple[Lane, ...] = ("express", "bulk")

EXPRESS_MAX_ALERTS = 4  # alerts a group may send within the window and still go express
WINDOW_SECONDS = 10.0


@dataclass
class _Group:
    window_start: float
    alerts: int  # sent since window_start, this notification included
    lane: Lane | None = None  # where its uncommitted notifications are
    outstanding: int = 0


class LaneRouter:
    """Thread-safe: the event loop routes, the lanes' threads report what they committed."""

    def __init__(
        self,
        *,
        max_alerts: int = EXPRESS_MAX_ALERTS,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_alerts = max_alerts
        self._window = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._next_sweep = clock() + window_seconds

    def route(self, group_key: str, alerts: int) -> Lane:
        """The lane of a notification of `alerts` alerts from `group_key`; call `done` once it is committed."""
        now = self._clock()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            group = self._groups.get(group_key)
            if group is None:
                group = self._groups[group_key] = _Group(window_start=now, alerts=0)
            elif now - group.window_start >= self._window:
                group.window_start, group.alerts = now, 0
            group.alerts += alerts
            lane: Lane = "express" if group.alerts <= self._max_alerts else "bulk"
            if group.outstanding and group.lane is not None:
                lane = group.lane
            group.lane = lane
            group.outstanding += 1
            return lane

    def done(self, group_key: str) -> None:
        """One notification of the group is committed (or failed): it no longer holds the group to its lane."""
        with self._lock:
            group = self._groups.get(group_key)
            if group is not None and group.outstanding > 0:
                group.outstanding -= 1

    def tracked(self) -> int:
        """Groups remembered now (those seen within the window, and any with uncommitted notifications)."""
        with self._lock:
            return len(self._groups)

    def _sweep(self, now: float) -> None:
        """Forget groups quiet for a whole window: memory follows the groups active lately, not all ever seen."""
        self._groups = {
            key: g for key, g in self._groups.items() if g.outstanding or now - g.window_start < self._window
        }
        self._next_sweep = now + self._window
