"""Owns probing failover endpoints on a schedule: one APScheduler job per group, GET url + health_path.

A 2xx answer within the group's `timeout` is a passed check; any other status, a timeout or a
connection error is a failed one. Results go to the FailoverManager, which applies the
thresholds and switches. A probe or a recording that raises is logged; the schedule goes on.

A group with `score` also gets each endpoint's load every round: its `cpu` and `memory` queries,
one series per endpoint (named by the `label` label), read from Prometheus, with the probe's own
response time; a query that fails or misses an endpoint leaves that endpoint without fresh
metrics (logged), so the choice falls back to priority once all are stale.

Only the leader should run it: the checks of two replicas would both count, so an endpoint
would reach its failure (or recovery) threshold in half the intended time. With `fence`
(LeaderElector.fence) every recording checks the leader's term in its transaction, so a
leader that was paused or replaced mid-round records nothing.

An endpoint with `checks: heartbeat` is not probed: its check passes while the heartbeat registry
(heartbeats.py) holds a heartbeat younger than the group's `heartbeat_timeout`; with `checks: both`
the probe and the heartbeat must both pass. `on_failed` is told of each endpoint a round marked
failed (recovery.py tries to bring it back).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import httpx
import structlog

from controlplane.failover.heartbeats import HEARTBEAT_CHECKS, Beat, HeartbeatRegistry
from controlplane.failover.manager import FailoverManager
from controlplane.failover.schemas import CheckOutcome
from controlplane.failover.scoring import EndpointMetrics
from controlplane.failover.thresholds import NODE_MARKED_FAILED, checked_endpoint
from controlplane.interval_jobs import IntervalJobs
from controlplane.leader import Fence, StaleLeader
from controlplane.rules.schema import Endpoint, FailoverGroup

if TYPE_CHECKING:  # prometheus-api-client loads with the client services.py builds, not with the checker
    from controlplane.integrations.prometheus import Sample

log = structlog.get_logger("controlplane.failover")

JOB_PREFIX = "failover-check:"
MAX_PROBES_AT_ONCE = 8

# (url, timeout in seconds) -> HTTP status; raises on timeouts and connection errors.
HttpGet = Callable[[str, float], int]
# A check's result: passed, why not, and the probe's response time in seconds (None: not probed).
Probed = tuple[bool, str | None, float | None]


class Vectors(Protocol):
    """What the checker needs of Prometheus (PrometheusClient satisfies it)."""

    def query_vector(self, promql: str) -> list[Sample]: ...


def http_get(url: str, timeout: float) -> int:
    # A fresh connection per probe: a pooled one would hide that new connections are refused.
    # Redirects are not followed: a health endpoint that redirects is misconfigured, not healthy.
    return httpx.get(url, timeout=timeout, follow_redirects=False).status_code


def health_url(group: FailoverGroup, endpoint: Endpoint) -> str:
    return endpoint.url.rstrip("/") + "/" + group.health_path.lstrip("/")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class HealthChecker:
    """Checks every endpoint of every group in `groups_provider()` each group's `interval`.

    Call `resync()` after a rules reload to add, drop or re-time jobs; `check_now()` checks
    at once in the calling thread (tests, operators).
    """

    def __init__(
        self,
        groups_provider: Callable[[], Mapping[str, FailoverGroup]],
        manager: FailoverManager,
        *,
        http_get: HttpGet = http_get,
        clock: Callable[[], datetime] = _utcnow,
        fence: Fence | None = None,
        prometheus: Vectors | None = None,
        timer: Callable[[], float] = time.monotonic,
        heartbeats: HeartbeatRegistry | None = None,
        on_failed: Callable[[FailoverGroup, str], object] | None = None,
    ) -> None:
        self._fence = fence
        self._prometheus = prometheus  # for scored groups' cpu and memory; None: they fall back to priority
        self._timer = timer
        self._heartbeats = heartbeats
        self._on_failed = on_failed
        self._groups_provider = groups_provider
        self._manager = manager
        self._http_get = http_get
        self._clock = clock
        self._lock = threading.Lock()
        self._groups: dict[str, FailoverGroup] = {}  # what each job checks, as of the last resync
        self._jobs = IntervalJobs(self._run, prefix=JOB_PREFIX)

    def start(self) -> None:
        self.resync()
        self._jobs.start()
        log.info("failover.checker_started", groups=len(self._jobs.names()))

    def shutdown(self, wait: bool = True) -> None:
        self._jobs.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return self._jobs.running

    @property
    def scheduled(self) -> list[str]:
        """Services with a check job, sorted."""
        return self._jobs.names()

    def resync(self) -> None:
        """Match the jobs to the current groups (a group checks at once when new: its state may be old)."""
        wanted = dict(self._groups_provider())
        with self._lock:
            self._groups = wanted
        self._jobs.sync({s: max(g.interval, timedelta(seconds=1)) for s, g in wanted.items()})
        try:
            self._manager.sync()
        except Exception:  # the database may be down; the next write of each group does the same
            log.exception("failover.sync_failed")

    def check_now(self, service: str | None = None) -> list[CheckOutcome]:
        """Check every group in the rules (or one) once, in this thread; a group whose recording fails is logged."""
        groups = sorted(self._groups_provider().values(), key=lambda g: g.service)
        outcomes: list[CheckOutcome] = []
        for group in groups:
            if service is None or group.service == service:
                outcomes += self._check_group_logged(group)
        return outcomes

    def _run(self, service: str) -> None:
        with self._lock:
            group = self._groups.get(service)
        if group is not None:  # dropped by a resync while this run was queued
            self._check_group_logged(group)

    def _check_group_logged(self, group: FailoverGroup) -> list[CheckOutcome]:
        try:
            return self._check_group(group)
        except StaleLeader as exc:  # leadership moved on since this job was scheduled: not an error
            log.info("failover.check_skipped_not_leader", service=group.service, reason=str(exc))
            return []
        except Exception:  # the schedule outlives any one check
            log.exception("failover.check_crashed", service=group.service)
            return []

    def _check_group(self, group: FailoverGroup) -> list[CheckOutcome]:
        # Probed in parallel: sequential probes of dead endpoints would add up their timeouts.
        with ThreadPoolExecutor(
            max_workers=min(len(group.endpoints), MAX_PROBES_AT_ONCE), thread_name_prefix="failover-probe"
        ) as pool:
            results = list(pool.map(lambda e: self._probe(group, e), group.endpoints))
        now = self._clock()
        results = self._with_heartbeats(group, results, now)
        loads = self._loads(group)
        # The active endpoint last: if it fails over, the choice of where to uses this round's results.
        active = self._manager.active(group.service).endpoint
        ordered = sorted(zip(group.endpoints, results, strict=True), key=lambda pair: pair[0].name == active)
        outcomes = [
            self._manager.record_check(
                group,
                e.name,
                ok,
                error,
                now=now,
                fence=self._fence,
                metrics=(
                    EndpointMetrics(*loads[e.name], seconds, now)
                    if ok and seconds is not None and e.name in loads
                    else None
                ),
            )
            for e, (ok, error, seconds) in ordered
        ]
        if self._on_failed is not None:
            for outcome in outcomes:
                if NODE_MARKED_FAILED in outcome.events:
                    self._on_failed(group, outcome.endpoint)
        return outcomes

    def passes(self, group: FailoverGroup, name: str) -> tuple[bool, str | None]:
        """Whether endpoint `name` passes a check now (its probe and/or heartbeat), without recording it."""
        endpoint = checked_endpoint(group, name)  # NotFound once the rules dropped it
        ok, error, _seconds = self._probe(group, endpoint)
        if endpoint.checks not in HEARTBEAT_CHECKS:
            return ok, error
        beats = self._heartbeats.last_beats(group) if self._heartbeats is not None else {}
        beat_ok, beat_error = beats.get(name, Beat(None)).check(group, self._clock())
        return ok and beat_ok, error or beat_error

    def _with_heartbeats(self, group: FailoverGroup, probed: list[Probed], now: datetime) -> list[Probed]:
        """The probes' results with the heartbeats' verdict folded in (both must pass for `checks: both`)."""
        if not any(e.checks in HEARTBEAT_CHECKS for e in group.endpoints):
            return probed
        beats = self._heartbeats.last_beats(group) if self._heartbeats is not None else {}
        results = []
        for endpoint, (ok, error, seconds) in zip(group.endpoints, probed, strict=True):
            if endpoint.checks in HEARTBEAT_CHECKS:
                beat_ok, beat_error = beats.get(endpoint.name, Beat(None)).check(group, now)
                ok, error = ok and beat_ok, error or beat_error
            results.append((ok, error, seconds))
        if self._heartbeats is not None:
            self._heartbeats.expire(now)
        return results

    def _probe(self, group: FailoverGroup, endpoint: Endpoint) -> Probed:
        """Passed or not, why not, and how long the answer took (seconds; None when not probed)."""
        if endpoint.checks == "heartbeat":
            return True, None, None  # not probed: the heartbeat decides (_with_heartbeats)
        url = health_url(group, endpoint)
        started = self._timer()
        try:
            status = self._http_get(url, group.timeout.total_seconds())
        except Exception as exc:
            return False, f"GET {url}: {type(exc).__name__}: {exc}"[:1000], self._timer() - started
        seconds = self._timer() - started
        if 200 <= status < 300:
            return True, None, seconds
        return False, f"GET {url} answered {status}", seconds

    def _loads(self, group: FailoverGroup) -> dict[str, tuple[float, float]]:
        """(cpu, memory) of each endpoint both queries answer for, as shares clamped to 0..1; {} unless scored."""
        if group.score is None or self._prometheus is None:
            return {}
        try:
            cpu = self._by_endpoint(group.score.cpu, group.score.label)
            memory = self._by_endpoint(group.score.memory, group.score.label)
        except Exception as exc:  # no fresh metrics this round: the choice falls back once they are stale
            log.warning("failover.score_query_failed", service=group.service, error=str(exc))
            return {}
        missing = sorted({e.name for e in group.endpoints} - (cpu.keys() & memory.keys()))
        if missing:
            log.warning("failover.score_metrics_missing", service=group.service, endpoints=missing)
        return {name: (cpu[name], memory[name]) for name in cpu.keys() & memory.keys()}

    def _by_endpoint(self, promql: str, label: str) -> dict[str, float]:
        assert self._prometheus is not None
        return {
            s.labels[label]: min(max(s.value, 0.0), 1.0)
            for s in self._prometheus.query_vector(promql)
            if label in s.labels and not math.isnan(s.value)
        }
