"""Owns which endpoint of each failover group is active: applies checks and switches, records their events.

The façade the rest of the code calls. The rules (thresholds, which endpoint to choose, which
events a change makes) are in `thresholds`, pure; the state and its locking in `repository`;
the answers' shapes in `schemas`; the metrics in `metrics`. Every change runs in one write
transaction that locks the service first; every event is recorded, audited and logged. With
`breakers`, every check is also fed to the endpoint's circuit breaker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine

from controlplane.errors import NotFound
from controlplane.failover import repository, scoring, thresholds
from controlplane.failover.metrics import FailoverCollector
from controlplane.failover.schemas import (
    ActiveEndpointView,
    CheckOutcome,
    EndpointStatus,
    FailoverEventView,
    GroupStatus,
    SwitchResult,
)
from controlplane.failover.scoring import EndpointMetrics
from controlplane.failover.thresholds import FAILOVER_FAILED, Health, Transition
from controlplane.leader import Fence
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.rules.schema import Endpoint, FailoverGroup

log = structlog.get_logger("controlplane.failover")

GroupsProvider = Callable[[], Mapping[str, FailoverGroup]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def breaker_name(service: str, endpoint: str) -> str:
    return f"endpoint:{service}/{endpoint}"


class FailoverManager:
    """Records health checks and switches; `groups` returns the failover groups in force (by service).

    With `metrics_registry`, exports `controlplane_failover_events_total{from_region,to_region}`
    and `controlplane_endpoint_healthy{service,endpoint}` on it (register one manager per
    registry). With `breakers`, every check is also fed to the endpoint's circuit breaker
    (`endpoint:<service>/<name>`), whose state the status shows.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        groups: GroupsProvider,
        metrics_registry: CollectorRegistry | None = None,
        breakers: CircuitBreakers | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine = engine
        self._groups = groups
        self._breakers = breakers
        self._clock = clock
        if metrics_registry is not None:
            metrics_registry.register(FailoverCollector(engine, groups))

    # -- changes ---------------------------------------------------------------------------

    def record_check(
        self,
        group: FailoverGroup,
        endpoint: str,
        ok: bool,
        error: str | None = None,
        now: datetime | None = None,
        *,
        fence: Fence | None = None,
        metrics: EndpointMetrics | None = None,
    ) -> CheckOutcome:
        """Apply one health check result of `endpoint` with the group's thresholds.

        `metrics` (a scored group's, measured with the check) are kept for choosing where to fail over.
        `fence` (LeaderElector.fence) runs first in the write: the scheduled checks are leader
        work, so a replaced leader's late result raises StaleLeader and records nothing.
        """
        thresholds.checked_endpoint(group, endpoint)
        now = now or self._clock()
        with self._locked(group, now, fence=fence) as (conn, settled):
            change = thresholds.apply_check(settled.after, endpoint, ok, error, now, metrics)
            self._apply(conn, change, now)
            h = change.after.health[endpoint]
            outcome = CheckOutcome(group.service, endpoint, ok, h.last_error, h.healthy, settled.kinds + change.kinds)
        self._feed_breaker(group, endpoint, ok)
        return outcome

    def switch(
        self,
        service: str,
        to: str | None = None,
        *,
        actor: str,
        reason: str = "",
        now: datetime | None = None,
        incident_id: int | None = None,
        execution_id: int | None = None,
        idempotency_key: str | None = None,
    ) -> SwitchResult:
        """Make `to` (default: the most preferred healthy endpoint other than the active one) active.

        Refuses (Conflict) an unhealthy target: failing over onto a failed endpoint only moves
        the outage. A repeated call with the same `idempotency_key` (a retried playbook step)
        returns the first call's result instead of switching again.
        """
        group = self._group(service)
        if to is not None:
            thresholds.switch_target(group, to)
        now = now or self._clock()
        with self._locked(group, now) as (conn, settled):
            if idempotency_key is not None:
                earlier = repository.switched_with(conn, service, idempotency_key)
                if earlier is not None:
                    return earlier
            detail: dict[str, Any] = {"manual": True}
            if idempotency_key is not None:
                detail["idempotency_key"] = idempotency_key
            change = thresholds.manual_switch(
                settled.after, to, actor=actor, reason=reason or "switch requested", detail=detail, now=now
            )
            self._apply(conn, change, now, incident_id=incident_id, execution_id=execution_id)
            source = thresholds.endpoint_named(group, change.before.active)
            target = thresholds.endpoint_named(group, change.after.active)
            return SwitchResult(
                service=service,
                from_endpoint=change.before.active,
                to_endpoint=change.after.active,
                from_region=source.region if source else None,
                to_region=target.region if target else None,
                changed=change.moved,
                at=now,
            )

    def preview(self, service: str, to: str | None = None) -> tuple[str, str]:
        """(active endpoint, the one `switch` would make active), read without a write or a lock (a plan).

        Raises what `switch` would raise: NotFound for an unknown service or endpoint, Conflict for
        an unhealthy target or no healthy endpoint to go to.
        """
        group = self._group(service)
        if to is not None:
            thresholds.switch_target(group, to)
        with self._engine.connect() as conn:
            active = repository.active_view(conn, group).endpoint
            state = thresholds.GroupState(group, active, repository.read_health(conn, group))
        now = self._clock()
        settled = thresholds.leave_removed(state, now)
        change = thresholds.manual_switch(settled.after, to, actor="plan", reason="plan", now=now)
        return change.before.active, change.after.active

    def sync(self) -> None:
        """Create the state of groups new in the rule files, and move services off removed endpoints."""
        now = self._clock()
        for group in list(self._groups().values()):
            with self._locked(group, now):
                pass

    # -- reads -----------------------------------------------------------------------------

    def active(self, service: str) -> ActiveEndpointView:
        group = self._group(service)
        with self._engine.connect() as conn:
            return repository.active_view(conn, group)

    def states(self, service: str) -> list[EndpointStatus]:
        return self.status(service)[0].endpoints

    def status(self, service: str | None = None) -> list[GroupStatus]:
        """Every group in force (or one), with each endpoint's health and which one is active."""
        groups = [self._group(service)] if service is not None else sorted(self._groups().values(), key=_service)
        result = []
        with self._engine.connect() as conn:
            for group in groups:
                health = repository.read_health(conn, group)
                active = repository.active_view(conn, group).endpoint
                now = self._clock() if group.score is not None else None  # for the scores' freshness
                result.append(
                    GroupStatus(
                        service=group.service,
                        active=active,
                        health_path=group.health_path,
                        interval_seconds=group.interval.total_seconds(),
                        timeout_seconds=group.timeout.total_seconds(),
                        failure_threshold=group.failure_threshold,
                        recovery_threshold=group.recovery_threshold,
                        auto_failback=group.auto_failback,
                        endpoints=[
                            self._endpoint_status(group, e, health[e.name], active, now) for e in group.endpoints
                        ],
                    )
                )
        return result

    def events(self, service: str | None = None, limit: int = 50) -> list[FailoverEventView]:
        """Newest first; events of services no longer in the rule files are kept and listed too."""
        with self._engine.connect() as conn:
            return repository.list_events(conn, service, limit)

    # -- internals -------------------------------------------------------------------------

    def _group(self, service: str) -> FailoverGroup:
        groups = self._groups()
        group = groups.get(service)
        if group is None:
            known = ", ".join(sorted(groups)) or "none"
            raise NotFound(f"unknown service {service!r} (failover groups in the rule files: {known})")
        return group

    @contextmanager
    def _locked(
        self, group: FailoverGroup, now: datetime, *, fence: Fence | None = None
    ) -> Iterator[tuple[Connection, Transition]]:
        """The service locked in a write transaction, already moved off an endpoint the rules dropped."""
        with repository.locked(self._engine, group, now, fence=fence) as (conn, state):
            settled = thresholds.leave_removed(state, now)
            self._apply(conn, settled, now)
            yield conn, settled

    @staticmethod
    def _apply(
        conn: Connection,
        change: Transition,
        now: datetime,
        *,
        incident_id: int | None = None,
        execution_id: int | None = None,
    ) -> None:
        """Write a transition: changed health, the new active endpoint, then its events in order."""
        service = change.after.group.service
        for name, health in change.after.health.items():
            if health != change.before.health.get(name):
                repository.save_health(conn, service, name, health, now)
        if change.moved:
            repository.set_active(conn, service, change.after.active, since=now, changed_by=change.actor)
        for event in change.events:
            repository.record_event(conn, service, event, now, incident_id=incident_id, execution_id=execution_id)
            log.info(
                "failover.event",
                kind=event.kind,
                service=service,
                endpoint=event.endpoint,
                to=event.to_endpoint,
                detail=dict(event.detail),
            )
            if event.kind == FAILOVER_FAILED:
                log.error("failover.no_healthy_endpoint", service=service, active=event.endpoint)

    def _feed_breaker(self, group: FailoverGroup, endpoint: str, ok: bool) -> None:
        # The checks are the breaker's probes: while it is open they are counted as refused (the
        # database still records them), and once it half-opens they decide whether it closes.
        if self._breakers is None:
            return
        breaker = self._breakers.get(
            breaker_name(group.service, endpoint),
            failure_threshold=group.failure_threshold,
            success_threshold=group.recovery_threshold,
        )
        if breaker.allow():
            breaker.record_success() if ok else breaker.record_failure()

    def _endpoint_status(
        self, group: FailoverGroup, endpoint: Endpoint, h: Health, active: str, now: datetime | None
    ) -> EndpointStatus:
        name = breaker_name(group.service, endpoint.name)
        breaker = None
        if self._breakers is not None and name in self._breakers:
            breaker = str(self._breakers.get(name).state)
        return EndpointStatus(
            name=endpoint.name,
            url=endpoint.url,
            region=endpoint.region,
            priority=endpoint.priority,
            active=endpoint.name == active,
            healthy=h.healthy,
            consecutive_failures=h.failures,
            consecutive_successes=h.successes,
            last_checked_at=h.last_checked_at,
            last_error=h.last_error,
            breaker=breaker,
            checks=endpoint.checks,
            score=round(scoring.score(h.metrics), 4) if h.metrics and scoring.fresh(h.metrics, group, now) else None,
        )


def _service(group: FailoverGroup) -> str:
    return group.service
