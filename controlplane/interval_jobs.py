"""Owns running named jobs at intervals (APScheduler) and matching them to a wanted set on reload."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger


class IntervalJobs:
    """One job per name calling `run(name)` every interval; `sync()` keeps a job's timing unless its
    interval changed, so a reload does not make every job run at once.

    A job never overlaps itself (max_instances=1), and a backlog after a pause (GC, a suspended
    VM) runs once, not once per missed interval (coalesce).
    """

    def __init__(self, run: Callable[[str], object], *, prefix: str) -> None:
        self._run = run
        self._prefix = prefix
        self._lock = threading.Lock()
        self._intervals: dict[str, timedelta] = {}
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )

    def sync(self, wanted: Mapping[str, timedelta]) -> None:
        """Jobs for exactly `wanted` (name -> interval); a new or re-timed job runs at once."""
        with self._lock:
            for name in set(self._intervals) - set(wanted):
                self._scheduler.remove_job(self._prefix + name)
                del self._intervals[name]
            for name, interval in wanted.items():
                if self._intervals.get(name) != interval:
                    self._scheduler.add_job(
                        self._run,
                        IntervalTrigger(seconds=interval.total_seconds(), timezone=UTC),
                        args=[name],
                        id=self._prefix + name,
                        name=self._prefix + name,
                        replace_existing=True,
                        next_run_time=datetime.now(UTC),
                    )
                    self._intervals[name] = interval

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._intervals)

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)
