"""Owns the heartbeat registry (seed 003): endpoints that say they are alive instead of (or besides) being probed.

An endpoint whose group config has `checks: heartbeat` (or `both`) registers with its first
`POST /api/v1/endpoints/heartbeat` and stays registered while it sends them. The health checker
(checker.py) reads the registry each round: a heartbeat older than the group's
`heartbeat_timeout` (10 s by default, as in the seed), or none at all, is a failed check, so the
failover manager's thresholds and circuit breakers apply to it unchanged. Registrations live in
the database (`endpoint_heartbeats`), so every replica sees the same ones; one without a
heartbeat for the group's `heartbeat_expiry` is removed (the console shows it expired before).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, Row, delete, select, update

from controlplane.db.engine import write_transaction
from controlplane.db.tables import dialect_insert, endpoint_heartbeats_t
from controlplane.errors import Conflict, NotFound
from controlplane.rules.schema import Endpoint, FailoverGroup

HEARTBEAT_CHECKS = ("heartbeat", "both")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Registration(BaseModel):
    """One endpoint's registration as the API and the console show it."""

    service: str
    endpoint: str
    instance: str
    registered_at: datetime
    last_heartbeat_at: datetime
    heartbeats: int
    age_seconds: float  # since the last heartbeat
    timeout_seconds: float
    expired: bool  # older than the group's heartbeat_timeout (or the group or endpoint left the rule files)


@dataclass(frozen=True)
class Beat:
    """The last heartbeat of one endpoint, as the checker judges it."""

    at: datetime | None

    def check(self, group: FailoverGroup, now: datetime) -> tuple[bool, str | None]:
        if self.at is None:
            return False, "no heartbeat received (not registered)"
        age = (now - self.at).total_seconds()
        if age > group.heartbeat_timeout.total_seconds():
            return False, f"no heartbeat for {age:.1f} s (timeout {group.heartbeat_timeout.total_seconds():g} s)"
        return True, None


def heartbeat_endpoint(groups: Mapping[str, FailoverGroup], service: str, endpoint: str) -> FailoverGroup:
    """The group of a heartbeat, or the 4xx an endpoint that sends one to the wrong place should see (404, 409)."""
    group = groups.get(service)
    if group is None:
        known = ", ".join(sorted(groups)) or "none"
        raise NotFound(f"unknown service {service!r} (failover groups in the rule files: {known})")
    spec = next((e for e in group.endpoints if e.name == endpoint), None)
    if spec is None:
        known = ", ".join(e.name for e in group.endpoints)
        raise NotFound(f"service {service!r} has no endpoint {endpoint!r} (endpoints: {known})")
    if spec.checks not in HEARTBEAT_CHECKS:
        raise Conflict(
            f"endpoint {endpoint!r} of service {service!r} is checked over HTTP only: give it `checks: heartbeat`"
            " (or `both`) in its failover group to have its heartbeats counted"
        )
    return group


class HeartbeatRegistry:
    """Registrations in the database; `groups` returns the failover groups in force (by service)."""

    def __init__(
        self,
        engine: Engine,
        groups: Callable[[], Mapping[str, FailoverGroup]],
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine = engine
        self._groups = groups
        self._clock = clock

    def beat(self, service: str, endpoint: str, instance: str = "", now: datetime | None = None) -> Registration:
        """Record a heartbeat (the first one registers the endpoint); 404/400 for one the rules do not expect."""
        group = heartbeat_endpoint(self._groups(), service, endpoint)
        now = now or self._clock()
        with write_transaction(self._engine) as conn:
            key = (endpoint_heartbeats_t.c.service == service, endpoint_heartbeats_t.c.endpoint == endpoint)
            conn.execute(
                dialect_insert(conn, endpoint_heartbeats_t)
                .values(
                    service=service,
                    endpoint=endpoint,
                    instance=instance,
                    registered_at=now,
                    last_heartbeat_at=now,
                    heartbeats=0,
                )
                .on_conflict_do_nothing(index_elements=["service", "endpoint"])
            )
            c = endpoint_heartbeats_t.c
            conn.execute(
                update(endpoint_heartbeats_t)
                .where(*key)
                .values(instance=instance, last_heartbeat_at=now, heartbeats=c.heartbeats + 1)
            )
            row = conn.execute(select(endpoint_heartbeats_t).where(*key)).one()
        return _view(row, group, now)

    def last_beats(self, group: FailoverGroup) -> dict[str, Beat]:
        """Each endpoint of `group` that is checked by heartbeat, with its last one (None: never registered)."""
        wanted = [e.name for e in group.endpoints if e.checks in HEARTBEAT_CHECKS]
        if not wanted:
            return {}
        c = endpoint_heartbeats_t.c
        with self._engine.connect() as conn:
            rows = conn.execute(select(c.endpoint, c.last_heartbeat_at).where(c.service == group.service))
            found = {r.endpoint: r.last_heartbeat_at for r in rows}
        return {name: Beat(found.get(name)) for name in wanted}

    def registrations(self, now: datetime | None = None) -> list[Registration]:
        """Every registration, by service and endpoint; those of endpoints no longer in the rules show expired."""
        now = now or self._clock()
        groups = self._groups()
        c = endpoint_heartbeats_t.c
        with self._engine.connect() as conn:
            rows = conn.execute(select(endpoint_heartbeats_t).order_by(c.service, c.endpoint)).all()
        return [_view(row, groups.get(row.service), now) for row in rows]

    def expire(self, now: datetime | None = None) -> int:
        """Remove registrations silent for their group's heartbeat_expiry (24 h for a group no longer in the rules)."""
        now = now or self._clock()
        groups = self._groups()
        c = endpoint_heartbeats_t.c
        removed = 0
        with write_transaction(self._engine) as conn:
            for service in conn.execute(select(c.service).distinct()).scalars().all():
                group = groups.get(service)
                keep = group.heartbeat_expiry if group is not None else timedelta(hours=24)
                result = conn.execute(
                    delete(endpoint_heartbeats_t).where(c.service == service, c.last_heartbeat_at < now - keep)
                )
                removed += result.rowcount or 0
        return removed


def _view(row: Row[Any], group: FailoverGroup | None, now: datetime) -> Registration:
    last: datetime = row.last_heartbeat_at
    age = max((now - last).total_seconds(), 0.0)
    spec: Endpoint | None = None
    if group is not None:
        spec = next((e for e in group.endpoints if e.name == row.endpoint), None)
    timeout = group.heartbeat_timeout.total_seconds() if group is not None else 0.0
    return Registration(
        service=row.service,
        endpoint=row.endpoint,
        instance=row.instance,
        registered_at=row.registered_at,
        last_heartbeat_at=last,
        heartbeats=row.heartbeats,
        age_seconds=age,
        timeout_seconds=timeout,
        expired=spec is None or spec.checks not in HEARTBEAT_CHECKS or age > timeout,
    )
