"""Owns failover state in the database: endpoint_states, active_endpoints, failover_events (and their audit rows).

All state lives here, not in a process, so it holds across restarts and replicas: any engine
of the same database sees and changes the same state. Every change runs in `locked()`, one
write transaction that holds the service's active_endpoints row, so changes of one service
apply one after the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from controlplane.audit import audit
from controlplane.db.engine import write_transaction
from controlplane.db.tables import active_endpoints_t, dialect_insert, endpoint_states_t, failover_events_t
from controlplane.failover.schemas import ActiveEndpointView, FailoverEventView, SwitchResult
from controlplane.failover.scoring import EndpointMetrics
from controlplane.failover.thresholds import (
    ACTOR,
    FAILOVER_COMPLETED,
    Event,
    GroupState,
    Health,
    endpoint_named,
    initial_active,
)
from controlplane.leader import Fence
from controlplane.rules.schema import FailoverGroup


@contextmanager
def locked(
    engine: Engine, group: FailoverGroup, now: datetime, *, fence: Fence | None = None
) -> Iterator[tuple[Connection, GroupState]]:
    """A write transaction holding the service's active_endpoints row, and the service's state read under it.

    `fence` (LeaderElector.fence) runs first: a replaced leader's write raises StaleLeader and
    records nothing. A group new in the rule files gets its rows here.
    """
    with write_transaction(engine) as conn:
        if fence is not None:
            fence(conn)
        conn.execute(
            dialect_insert(conn, endpoint_states_t)
            .values(
                [
                    {"service": group.service, "endpoint": e.name, "healthy": True, "updated_at": now}
                    for e in group.endpoints
                ]
            )
            .on_conflict_do_nothing(index_elements=["service", "endpoint"])
        )
        has_active = select(active_endpoints_t.c.service).where(active_endpoints_t.c.service == group.service)
        if conn.execute(has_active).first() is None:
            first = initial_active(group, read_health(conn, group))
            conn.execute(
                dialect_insert(conn, active_endpoints_t)
                .values(service=group.service, endpoint=first.name, since=now, changed_by=ACTOR)
                .on_conflict_do_nothing(index_elements=["service"])
            )
        # FOR UPDATE on PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises writers): checks
        # and switches of one service, from any thread or replica, apply one after the other.
        # Health is read only once the lock is held: before, another writer may still change it.
        active = conn.execute(
            select(active_endpoints_t.c.endpoint).where(active_endpoints_t.c.service == group.service).with_for_update()
        ).scalar_one()
        yield conn, GroupState(group, active, read_health(conn, group))


def read_health(conn: Connection, group: FailoverGroup) -> dict[str, Health]:
    """Every endpoint of the group; one without a row yet is healthy (never checked)."""
    rows = conn.execute(select(endpoint_states_t).where(endpoint_states_t.c.service == group.service))
    found = {
        r.endpoint: Health(
            r.healthy, r.consecutive_failures, r.consecutive_successes, r.last_checked_at, r.last_error, _metrics(r)
        )
        for r in rows
    }
    return {e.name: found.get(e.name, Health()) for e in group.endpoints}


def _metrics(row: Any) -> EndpointMetrics | None:
    if row.metrics_at is None or None in (row.cpu_usage, row.memory_usage, row.response_seconds):
        return None
    return EndpointMetrics(row.cpu_usage, row.memory_usage, row.response_seconds, row.metrics_at)


def save_health(conn: Connection, service: str, endpoint: str, health: Health, now: datetime) -> None:
    conn.execute(
        update(endpoint_states_t)
        .where(endpoint_states_t.c.service == service, endpoint_states_t.c.endpoint == endpoint)
        .values(
            healthy=health.healthy,
            consecutive_failures=health.failures,
            consecutive_successes=health.successes,
            last_checked_at=health.last_checked_at,
            last_error=health.last_error,
            cpu_usage=health.metrics.cpu if health.metrics else None,
            memory_usage=health.metrics.memory if health.metrics else None,
            response_seconds=health.metrics.response_seconds if health.metrics else None,
            metrics_at=health.metrics.at if health.metrics else None,
            updated_at=now,
        )
    )


def set_active(conn: Connection, service: str, endpoint: str, *, since: datetime, changed_by: str) -> None:
    conn.execute(
        update(active_endpoints_t)
        .where(active_endpoints_t.c.service == service)
        .values(endpoint=endpoint, since=since, changed_by=changed_by)
    )


def record_event(
    conn: Connection,
    service: str,
    event: Event,
    now: datetime,
    *,
    incident_id: int | None = None,
    execution_id: int | None = None,
) -> None:
    """A failover_events row and its audit row."""
    row = {
        "service": service,
        "event": event.kind,
        "endpoint": event.endpoint,
        "from_endpoint": event.from_endpoint,
        "to_endpoint": event.to_endpoint,
        "from_region": event.from_region,
        "to_region": event.to_region,
    }
    conn.execute(failover_events_t.insert().values(at=now, detail={"actor": event.actor, **event.detail}, **row))
    audit(
        conn,
        actor=event.actor,
        action=f"failover.{event.kind}",
        incident_id=incident_id,
        execution_id=execution_id,
        detail={**row, **event.detail},
        now=now,
    )


def switched_with(conn: Connection, service: str, idempotency_key: str) -> SwitchResult | None:
    """The switch an earlier call with this idempotency key made, if any."""
    # Recent completions only: a retry comes within minutes, and the key lives in the JSON detail.
    rows = conn.execute(
        select(failover_events_t)
        .where(failover_events_t.c.service == service, failover_events_t.c.event == FAILOVER_COMPLETED)
        .order_by(failover_events_t.c.id.desc())
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


def active_view(conn: Connection, group: FailoverGroup) -> ActiveEndpointView:
    row = conn.execute(select(active_endpoints_t).where(active_endpoints_t.c.service == group.service)).first()
    spec = endpoint_named(group, row.endpoint) if row is not None else None
    if row is None or spec is None:
        # Nothing recorded yet (or a removed endpoint): what the manager will choose on its next write.
        spec = initial_active(group, read_health(conn, group))
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


def list_events(conn: Connection, service: str | None, limit: int) -> list[FailoverEventView]:
    """Newest first; events of services no longer in the rule files are kept and listed too."""
    query = select(failover_events_t).order_by(failover_events_t.c.id.desc()).limit(limit)
    if service is not None:
        query = query.where(failover_events_t.c.service == service)
    return [FailoverEventView.model_validate(row, from_attributes=True) for row in conn.execute(query)]


def switch_counts(conn: Connection) -> list[tuple[str | None, str | None, int]]:
    """Completed switches by (from_region, to_region), of every service ever recorded."""
    rows = conn.execute(
        select(failover_events_t.c.from_region, failover_events_t.c.to_region, func.count())
        .where(failover_events_t.c.event == FAILOVER_COMPLETED)
        .group_by(failover_events_t.c.from_region, failover_events_t.c.to_region)
    )
    return [(from_region, to_region, count) for from_region, to_region, count in rows]
