"""Owns which endpoint of each failover group is active: health thresholds, switches, their events.

Semantics (seeds 002 and 003): an endpoint failing `failure_threshold` consecutive checks is
marked failed (`node_marked_failed`); if it was the active one, traffic moves to the most
preferred healthy endpoint (lowest priority number, then name: `failover_started`,
`failover_completed`). A failed endpoint passing `recovery_threshold` consecutive checks is
healthy again (`recovery_started` on its first pass, `recovery_completed` at the threshold);
with `auto_failback` traffic then returns to the most preferred healthy endpoint. When no
healthy endpoint is left the active one stays (clients need some answer) and
`failover_failed` is recorded; the first endpoint to recover takes over.

All state lives in the database (endpoint_states, active_endpoints, failover_events), so it
holds across restarts and replicas: a manager is cheap, and one built on any engine of the
same database sees and changes the same state. Every change runs in one write transaction
that locks the service's active_endpoints row first, so changes of one service apply one
after the other. Every event is audited. The metrics are read from the database at scrape
time, so switches made by a playbook's own manager, another replica or before a restart count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, Table, func, select, update

from controlplane.db.models import ActiveEndpoint, EndpointState, FailoverEvent
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.failover.schemas import (
    ActiveEndpointView,
    CheckOutcome,
    EndpointStatus,
    FailoverEventView,
    GroupStatus,
    SwitchResult,
)
from controlplane.ingest.store import audit, dialect_insert
from controlplane.leader import Fence
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.rules.schema import Endpoint, FailoverGroup

log = structlog.get_logger("controlplane.failover")

states_t: Table = EndpointState.__table__  # type: ignore[assignment]
active_t: Table = ActiveEndpoint.__table__  # type: ignore[assignment]
events_t: Table = FailoverEvent.__table__  # type: ignore[assignment]

ACTOR = "controlplane:failover"
NODE_MARKED_FAILED = "node_marked_failed"
FAILOVER_STARTED = "failover_started"
FAILOVER_COMPLETED = "failover_completed"
FAILOVER_FAILED = "failover_failed"  # the active endpoint failed and no healthy one was left
RECOVERY_STARTED = "recovery_started"
RECOVERY_COMPLETED = "recovery_completed"

GroupsProvider = Callable[[], Mapping[str, FailoverGroup]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def breaker_name(service: str, endpoint: str) -> str:
    return f"endpoint:{service}/{endpoint}"


# --- the manager -------------------------------------------------------------------------


@dataclass
class _Health:
    healthy: bool = True  # an endpoint never checked counts as healthy, as in seed 002
    failures: int = 0
    successes: int = 0
    last_checked_at: datetime | None = None
    last_error: str | None = None


def _key(endpoint: Endpoint) -> tuple[int, str]:
    return (endpoint.priority, endpoint.name)


def _best(group: FailoverGroup, health: Mapping[str, _Health], exclude: str | None = None) -> Endpoint | None:
    healthy = [e for e in group.endpoints if e.name != exclude and health.get(e.name, _Health()).healthy]
    return min(healthy, key=_key, default=None)


def _endpoint(group: FailoverGroup, name: str) -> Endpoint | None:
    return next((e for e in group.endpoints if e.name == name), None)


@dataclass
class _Tx:
    """One locked service inside a write transaction: what the transition helpers share."""

    conn: Connection
    group: FailoverGroup
    active: str
    health: dict[str, _Health]
    now: datetime
    events: list[str] = field(default_factory=list)


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
            metrics_registry.register(_FailoverCollector(engine, groups))

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
    ) -> CheckOutcome:
        """Apply one health check result of `endpoint` with the group's thresholds.

        `fence` (LeaderElector.fence) runs first in the write: the scheduled checks are leader
        work, so a replaced leader's late result raises StaleLeader and records nothing.
        """
        spec = _endpoint(group, endpoint)
        if spec is None:
            raise NotFound(f"service {group.service!r} has no endpoint {endpoint!r}")
        now = now or self._clock()
        error = None if ok else (error or "health check failed")
        with self._locked(group, now, fence=fence) as tx:
            h = tx.health[endpoint]
            was_healthy = h.healthy
            h.failures, h.successes = (0, h.successes + 1) if ok else (h.failures + 1, 0)
            h.last_checked_at, h.last_error = now, error
            if h.failures >= group.failure_threshold:
                h.healthy = False
            elif h.successes >= group.recovery_threshold:
                h.healthy = True
            self._save(tx, endpoint)
            if was_healthy and not h.healthy:
                self._event(tx, NODE_MARKED_FAILED, endpoint=spec, detail={"failures": h.failures, "error": error})
                if tx.active == endpoint:
                    self._move(tx, None, actor=ACTOR, reason=f"active endpoint {endpoint} failed its health checks")
            elif not was_healthy and ok:
                if h.successes == 1:
                    self._event(tx, RECOVERY_STARTED, endpoint=spec, detail={"needed": group.recovery_threshold})
                if h.healthy:
                    self._event(tx, RECOVERY_COMPLETED, endpoint=spec, detail={"successes": h.successes})
                    self._after_recovery(tx)
            outcome = CheckOutcome(group.service, endpoint, ok, error, h.healthy, tx.events)
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
        if to is not None and _endpoint(group, to) is None:
            known = ", ".join(e.name for e in group.endpoints)
            raise InvalidInput(f"service {service!r} has no endpoint {to!r} (endpoints: {known})")
        now = now or self._clock()
        with self._locked(group, now) as tx:
            if idempotency_key is not None:
                earlier = self._switched_with(tx, idempotency_key)
                if earlier is not None:
                    return earlier
            if to is None:
                target = _best(group, tx.health, exclude=tx.active)
                if target is None:
                    raise Conflict(f"no healthy endpoint of service {service!r} other than the active {tx.active!r}")
            else:
                target = _endpoint(group, to)
                assert target is not None
                h = tx.health[to]
                if not h.healthy:
                    raise Conflict(
                        f"endpoint {to!r} of service {service!r} is unhealthy ({h.failures} failed checks in a row, "
                        f"last error: {h.last_error or 'none'}); refusing to switch traffic to it"
                    )
                if to == tx.active:
                    return self._result(group, tx.active, tx.active, tx.now, changed=False)
            detail: dict[str, Any] = {"manual": True}
            if idempotency_key is not None:
                detail["idempotency_key"] = idempotency_key
            result = self._move(
                tx,
                target,
                actor=actor,
                reason=reason or "switch requested",
                detail=detail,
                incident_id=incident_id,
                execution_id=execution_id,
            )
            assert result is not None
            return result

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
            return self._active_view(conn, group)

    def states(self, service: str) -> list[EndpointStatus]:
        return self.status(service)[0].endpoints

    def status(self, service: str | None = None) -> list[GroupStatus]:
        """Every group in force (or one), with each endpoint's health and which one is active."""
        groups = [self._group(service)] if service is not None else sorted(self._groups().values(), key=_service)
        result = []
        with self._engine.connect() as conn:
            for group in groups:
                health = self._read_health(conn, group)
                active = self._active_view(conn, group).endpoint
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
                        endpoints=[self._endpoint_status(group, e, health, active) for e in group.endpoints],
                    )
                )
        return result

    def events(self, service: str | None = None, limit: int = 50) -> list[FailoverEventView]:
        """Newest first; events of services no longer in the rule files are kept and listed too."""
        query = select(events_t).order_by(events_t.c.id.desc()).limit(limit)
        if service is not None:
            query = query.where(events_t.c.service == service)
        with self._engine.connect() as conn:
            return [FailoverEventView.model_validate(row, from_attributes=True) for row in conn.execute(query)]

    # -- internals -------------------------------------------------------------------------

    def _group(self, service: str) -> FailoverGroup:
        groups = self._groups()
        group = groups.get(service)
        if group is None:
            known = ", ".join(sorted(groups)) or "none"
            raise NotFound(f"unknown service {service!r} (failover groups in the rule files: {known})")
        return group

    @contextmanager
    def _locked(self, group: FailoverGroup, now: datetime, *, fence: Fence | None = None) -> Iterator[_Tx]:
        """A write transaction holding the service's active_endpoints row, its endpoints' state read."""
        with self._engine.connect().execution_options(write=True) as conn, conn.begin():
            if fence is not None:
                fence(conn)
            conn.execute(
                dialect_insert(conn, states_t)
                .values(
                    [
                        {"service": group.service, "endpoint": e.name, "healthy": True, "updated_at": now}
                        for e in group.endpoints
                    ]
                )
                .on_conflict_do_nothing(index_elements=["service", "endpoint"])
            )
            if conn.execute(select(active_t.c.service).where(active_t.c.service == group.service)).first() is None:
                first = _best(group, self._read_health(conn, group)) or min(group.endpoints, key=_key)
                conn.execute(
                    dialect_insert(conn, active_t)
                    .values(service=group.service, endpoint=first.name, since=now, changed_by=ACTOR)
                    .on_conflict_do_nothing(index_elements=["service"])
                )
            # FOR UPDATE on PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises writers): checks
            # and switches of one service, from any thread or replica, apply one after the other.
            # Health is read only once the lock is held: before, another writer may still change it.
            active = conn.execute(
                select(active_t.c.endpoint).where(active_t.c.service == group.service).with_for_update()
            ).scalar_one()
            tx = _Tx(conn, group, active, self._read_health(conn, group), now)
            if _endpoint(group, active) is None:
                self._move(tx, None, actor=ACTOR, reason=f"endpoint {active} is no longer in the rule files")
            yield tx

    @staticmethod
    def _active_view(conn: Connection, group: FailoverGroup) -> ActiveEndpointView:
        row = conn.execute(select(active_t).where(active_t.c.service == group.service)).first()
        spec = _endpoint(group, row.endpoint) if row is not None else None
        if row is None or spec is None:
            # Nothing recorded yet (or a removed endpoint): what the manager will choose on its next write.
            spec = _best(group, FailoverManager._read_health(conn, group)) or min(group.endpoints, key=_key)
            return ActiveEndpointView(
                service=group.service, endpoint=spec.name, url=spec.url, region=spec.region, since=None, changed_by=""
            )
        return ActiveEndpointView(
            service=group.service,
            endpoint=spec.name,
            url=spec.url,
            region=spec.region,
            since=row.since,
            changed_by=row.changed_by,
        )

    @staticmethod
    def _read_health(conn: Connection, group: FailoverGroup) -> dict[str, _Health]:
        rows = conn.execute(select(states_t).where(states_t.c.service == group.service))
        found = {
            r.endpoint: _Health(
                r.healthy, r.consecutive_failures, r.consecutive_successes, r.last_checked_at, r.last_error
            )
            for r in rows
        }
        return {e.name: found.get(e.name, _Health()) for e in group.endpoints}

    @staticmethod
    def _save(tx: _Tx, endpoint: str) -> None:
        h = tx.health[endpoint]
        tx.conn.execute(
            update(states_t)
            .where(states_t.c.service == tx.group.service, states_t.c.endpoint == endpoint)
            .values(
                healthy=h.healthy,
                consecutive_failures=h.failures,
                consecutive_successes=h.successes,
                last_checked_at=h.last_checked_at,
                last_error=h.last_error,
                updated_at=tx.now,
            )
        )

    def _after_recovery(self, tx: _Tx) -> None:
        best = _best(tx.group, tx.health)
        assert best is not None  # an endpoint just recovered
        if best.name == tx.active:
            return
        active = _endpoint(tx.group, tx.active)
        if not tx.health[tx.active].healthy:
            # Not a failback: every endpoint was down and this is the first one back.
            self._move(tx, best, actor=ACTOR, reason=f"endpoint {best.name} recovered while {tx.active} is failed")
        elif tx.group.auto_failback and (active is None or _key(best) < _key(active)):
            self._move(tx, best, actor=ACTOR, reason=f"failback to the preferred endpoint {best.name}")

    def _move(
        self,
        tx: _Tx,
        target: Endpoint | None,
        *,
        actor: str,
        reason: str,
        detail: dict[str, Any] | None = None,
        incident_id: int | None = None,
        execution_id: int | None = None,
    ) -> SwitchResult | None:
        """Switch the active endpoint to `target` (default: the best healthy other one), with its events."""
        source = _endpoint(tx.group, tx.active)
        common: dict[str, Any] = {
            "actor": actor,
            "incident_id": incident_id,
            "execution_id": execution_id,
            "from_endpoint": tx.active,
            "from_region": source.region if source else None,
        }
        detail = {"reason": reason, **(detail or {})}
        self._event(tx, FAILOVER_STARTED, endpoint=source, detail=detail, **common)
        if target is None:
            target = _best(tx.group, tx.health, exclude=tx.active)
        if target is None:
            if source is None:  # a removed endpoint and nothing healthy: clients still need an answer
                target = min(tx.group.endpoints, key=_key)
            else:
                self._event(tx, FAILOVER_FAILED, endpoint=source, detail={**detail, "error": "no healthy endpoint"})
                log.error("failover.no_healthy_endpoint", service=tx.group.service, active=tx.active)
                return None
        tx.conn.execute(
            update(active_t)
            .where(active_t.c.service == tx.group.service)
            .values(endpoint=target.name, since=tx.now, changed_by=actor)
        )
        result = self._result(tx.group, tx.active, target.name, tx.now, changed=True)
        self._event(tx, FAILOVER_COMPLETED, endpoint=target, to=target, detail=detail, **common)
        tx.active = target.name
        return result

    @staticmethod
    def _event(
        tx: _Tx,
        event: str,
        *,
        endpoint: Endpoint | None,
        detail: dict[str, Any],
        to: Endpoint | None = None,
        actor: str = ACTOR,
        from_endpoint: str | None = None,
        from_region: str | None = None,
        incident_id: int | None = None,
        execution_id: int | None = None,
    ) -> None:
        row = {
            "service": tx.group.service,
            "event": event,
            "endpoint": endpoint.name if endpoint else None,
            "from_endpoint": from_endpoint,
            "to_endpoint": to.name if to else None,
            "from_region": from_region,
            "to_region": to.region if to else None,
        }
        tx.conn.execute(events_t.insert().values(at=tx.now, detail={"actor": actor, **detail}, **row))
        audit(
            tx.conn,
            actor=actor,
            action=f"failover.{event}",
            incident_id=incident_id,
            execution_id=execution_id,
            detail={**row, **detail},
            now=tx.now,
        )
        tx.events.append(event)
        log.info(
            "failover.event",
            kind=event,
            service=tx.group.service,
            endpoint=row["endpoint"],
            to=row["to_endpoint"],
            detail=detail,
        )

    def _switched_with(self, tx: _Tx, idempotency_key: str) -> SwitchResult | None:
        # Recent completions only: a retry comes within minutes, and the key lives in the JSON detail.
        rows = tx.conn.execute(
            select(events_t)
            .where(events_t.c.service == tx.group.service, events_t.c.event == FAILOVER_COMPLETED)
            .order_by(events_t.c.id.desc())
            .limit(100)
        )
        for row in rows:
            if row.detail.get("idempotency_key") == idempotency_key:
                return SwitchResult(
                    service=row.service,
                    from_endpoint=row.from_endpoint or "",
                    to_endpoint=row.to_endpoint or "",
                    from_region=row.from_region,
                    to_region=row.to_region,
                    changed=False,
                    at=row.at,
                )
        return None

    @staticmethod
    def _result(group: FailoverGroup, source: str, target: str, at: datetime, *, changed: bool) -> SwitchResult:
        a, b = _endpoint(group, source), _endpoint(group, target)
        return SwitchResult(
            service=group.service,
            from_endpoint=source,
            to_endpoint=target,
            from_region=a.region if a else None,
            to_region=b.region if b else None,
            changed=changed,
            at=at,
        )

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
        self, group: FailoverGroup, endpoint: Endpoint, health: Mapping[str, _Health], active: str
    ) -> EndpointStatus:
        h = health[endpoint.name]
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
        )


def _service(group: FailoverGroup) -> str:
    return group.service


class _FailoverCollector(Collector):
    """Reads switches and endpoint health from the database at scrape time, so every replica agrees."""

    def __init__(self, engine: Engine, groups: GroupsProvider) -> None:
        self._engine = engine
        self._groups = groups

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "controlplane_failover_events",
                "Switches of a service's active endpoint (failover, failback, manual), by region.",
                labels=["from_region", "to_region"],
            ),
            GaugeMetricFamily(
                "controlplane_endpoint_healthy",
                "1 if the endpoint passes its health checks (by the failover thresholds), else 0.",
                labels=["service", "endpoint"],
            ),
        )

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        switches, healthy = self._families()
        groups = list(self._groups().values())
        if groups:  # without failover groups, a scrape costs no query (and no wait while the database is down)
            try:
                with self._engine.connect() as conn:
                    counts = conn.execute(
                        select(events_t.c.from_region, events_t.c.to_region, func.count())
                        .where(events_t.c.event == FAILOVER_COMPLETED)
                        .group_by(events_t.c.from_region, events_t.c.to_region)
                    ).all()
                    health = {g.service: FailoverManager._read_health(conn, g) for g in groups}
            except Exception as exc:  # a scrape must not fail because the database is down
                log.warning("metrics.failover_unavailable", error=str(exc).splitlines()[0])
            else:
                for from_region, to_region, count in counts:
                    switches.add_metric([from_region or "", to_region or ""], float(count))
                for group in groups:
                    for endpoint in group.endpoints:
                        value = 1.0 if health[group.service][endpoint.name].healthy else 0.0
                        healthy.add_metric([group.service, endpoint.name], value)
        yield switches
        yield healthy
