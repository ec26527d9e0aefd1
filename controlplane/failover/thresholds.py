"""Owns the failover rules of one service: health thresholds, which endpoint is active, the events a change makes.

Semantics (seeds 002 and 003): an endpoint failing `failure_threshold` consecutive checks is
marked failed (`node_marked_failed`); if it was the active one, traffic moves to the most
preferred healthy endpoint (lowest priority number, then name: `failover_started`,
`failover_completed`). A failed endpoint passing `recovery_threshold` consecutive checks is
healthy again (`recovery_started` on its first pass, `recovery_completed` at the threshold);
with `auto_failback` traffic then returns to the most preferred healthy endpoint. When no
healthy endpoint is left the active one stays (clients need some answer) and
`failover_failed` is recorded; the first endpoint to recover takes over. A group with `score`
chooses where to fail over by seed 003's score instead (scoring.py), among healthy endpoints
with fresh metrics; failback stays by priority.

Pure: every function takes a `GroupState` (and the time, as an argument) and returns a
`Transition`, the new state and the events to record; nothing here reads a clock or a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.failover.scoring import EndpointMetrics, scored_choice
from controlplane.rules.schema import Endpoint, FailoverGroup

ACTOR = "controlplane:failover"
NODE_MARKED_FAILED = "node_marked_failed"
FAILOVER_STARTED = "failover_started"
FAILOVER_COMPLETED = "failover_completed"
FAILOVER_FAILED = "failover_failed"  # the active endpoint failed and no healthy one was left
RECOVERY_STARTED = "recovery_started"
RECOVERY_COMPLETED = "recovery_completed"


@dataclass(frozen=True)
class Health:
    """One endpoint's health as the thresholds count it."""

    healthy: bool = True  # an endpoint never checked counts as healthy, as in seed 002
    failures: int = 0  # consecutive failed checks
    successes: int = 0  # consecutive passed checks
    last_checked_at: datetime | None = None
    last_error: str | None = None
    metrics: EndpointMetrics | None = None  # a scored group's last measurement (kept until a newer one)


@dataclass(frozen=True)
class Event:
    """One failover event, as it is recorded (a failover_events row, an audit row and a log line)."""

    kind: str
    endpoint: str | None
    detail: Mapping[str, Any]
    actor: str = ACTOR
    from_endpoint: str | None = None
    from_region: str | None = None
    to_endpoint: str | None = None
    to_region: str | None = None


@dataclass(frozen=True)
class GroupState:
    """A service's failover state: its group as in the rules, the active endpoint and each endpoint's health.

    `health` has an entry for every endpoint of the group; `active` may name an endpoint no
    longer in it (the rules changed) until `leave_removed` moves off it.
    """

    group: FailoverGroup
    active: str
    health: Mapping[str, Health]


@dataclass(frozen=True)
class Transition:
    """What one change did: the state before and after, and the events it made, in order.

    `after.active` is the endpoint to make active; `actor` is who changed it (and is the
    actor of its events).
    """

    before: GroupState
    after: GroupState
    events: tuple[Event, ...] = ()
    actor: str = ACTOR

    @property
    def moved(self) -> bool:
        return self.after.active != self.before.active

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


# --- choosing endpoints ------------------------------------------------------------------


def preference(endpoint: Endpoint) -> tuple[int, str]:
    """Lower is preferred: the priority number, then the name."""
    return (endpoint.priority, endpoint.name)


def endpoint_named(group: FailoverGroup, name: str) -> Endpoint | None:
    return next((e for e in group.endpoints if e.name == name), None)


def preferred(group: FailoverGroup, health: Mapping[str, Health], exclude: str | None = None) -> Endpoint | None:
    """The most preferred healthy endpoint (other than `exclude`), or None if none is healthy."""
    healthy = [e for e in group.endpoints if e.name != exclude and health.get(e.name, Health()).healthy]
    return min(healthy, key=preference, default=None)


def chosen(
    group: FailoverGroup, health: Mapping[str, Health], *, exclude: str | None, now: datetime | None
) -> tuple[Endpoint | None, dict[str, Any]]:
    """Where to go next: by score when the group has `score` and fresh metrics, else by priority.

    Only healthy endpoints (other than `exclude`) are candidates, whatever their score. The
    detail says how it was chosen, with the scores (empty for a group without `score`).
    """
    healthy = [e for e in group.endpoints if e.name != exclude and health.get(e.name, Health()).healthy]
    best, why = scored_choice(group, healthy, {e.name: health[e.name].metrics for e in healthy}, now)
    return best or min(healthy, key=preference, default=None), why


def initial_active(group: FailoverGroup, health: Mapping[str, Health]) -> Endpoint:
    """Where a service with no recorded choice starts: the most preferred healthy endpoint, else the most preferred."""
    return preferred(group, health) or min(group.endpoints, key=preference)


def checked_endpoint(group: FailoverGroup, name: str) -> Endpoint:
    endpoint = endpoint_named(group, name)
    if endpoint is None:
        raise NotFound(f"service {group.service!r} has no endpoint {name!r}")
    return endpoint


def switch_target(group: FailoverGroup, name: str) -> Endpoint:
    endpoint = endpoint_named(group, name)
    if endpoint is None:
        known = ", ".join(e.name for e in group.endpoints)
        raise InvalidInput(f"service {group.service!r} has no endpoint {name!r} (endpoints: {known})")
    return endpoint


# --- changes -----------------------------------------------------------------------------


def apply_check(
    state: GroupState,
    endpoint: str,
    ok: bool,
    error: str | None,
    now: datetime,
    metrics: EndpointMetrics | None = None,
) -> Transition:
    """One health check result of `endpoint` at `now`, with the group's thresholds and what follows from it.

    `metrics`, measured with the check (scored groups), replace the endpoint's earlier ones.
    """
    group = state.group
    spec = checked_endpoint(group, endpoint)
    error = None if ok else (error or "health check failed")
    before = state.health[endpoint]
    failures, successes = (0, before.successes + 1) if ok else (before.failures + 1, 0)
    healthy = before.healthy
    if failures >= group.failure_threshold:
        healthy = False
    elif successes >= group.recovery_threshold:
        healthy = True
    change = _Change.of(state, now=now)
    change.health[endpoint] = Health(healthy, failures, successes, now, error, metrics or before.metrics)
    if before.healthy and not healthy:
        change.event(NODE_MARKED_FAILED, endpoint=spec, detail={"failures": failures, "error": error})
        if change.active == endpoint:
            change.move(None, reason=f"active endpoint {endpoint} failed its health checks")
    elif not before.healthy and ok:
        if successes == 1:
            change.event(RECOVERY_STARTED, endpoint=spec, detail={"needed": group.recovery_threshold})
        if healthy:
            change.event(RECOVERY_COMPLETED, endpoint=spec, detail={"successes": successes})
            change.after_recovery()
    return change.done(state)


def leave_removed(state: GroupState, now: datetime | None = None) -> Transition:
    """Move the service off an active endpoint that is no longer in the rule files (else change nothing)."""
    change = _Change.of(state, now=now)
    if endpoint_named(state.group, state.active) is None:
        change.move(None, reason=f"endpoint {state.active} is no longer in the rule files")
    return change.done(state)


def manual_switch(
    state: GroupState,
    to: str | None,
    *,
    actor: str,
    reason: str,
    detail: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Transition:
    """Make `to` (default: the best healthy endpoint other than the active one, see `chosen`) active.

    Refuses (Conflict) an unhealthy target: failing over onto a failed endpoint only moves the
    outage. Switching to the active endpoint changes nothing (no events).
    """
    group = state.group
    if to is None:
        target, why = chosen(group, state.health, exclude=state.active, now=now)
        detail = {**(detail or {}), **why}
        if target is None:
            raise Conflict(f"no healthy endpoint of service {group.service!r} other than the active {state.active!r}")
    else:
        target = switch_target(group, to)
        h = state.health[to]
        if not h.healthy:
            raise Conflict(
                f"endpoint {to!r} of service {group.service!r} is unhealthy ({h.failures} failed checks in a row, "
                f"last error: {h.last_error or 'none'}); refusing to switch traffic to it"
            )
        if to == state.active:
            return Transition(state, state, actor=actor)
    change = _Change.of(state, actor=actor, now=now)
    change.move(target, reason=reason, detail=detail)
    return change.done(state)


@dataclass
class _Change:
    """A transition being worked out: what the steps of one change share."""

    group: FailoverGroup
    active: str
    health: dict[str, Health]
    actor: str
    now: datetime | None = None  # for the freshness of a scored group's metrics
    events: list[Event] = field(default_factory=list)

    @classmethod
    def of(cls, state: GroupState, *, actor: str = ACTOR, now: datetime | None = None) -> _Change:
        return cls(state.group, state.active, dict(state.health), actor, now)

    def done(self, before: GroupState) -> Transition:
        after = replace(before, active=self.active, health=self.health)
        return Transition(before, after, tuple(self.events), self.actor)

    def event(self, kind: str, *, endpoint: Endpoint | None, detail: Mapping[str, Any], **fields: Any) -> None:
        self.events.append(Event(kind, endpoint.name if endpoint else None, detail, **fields))

    def after_recovery(self) -> None:
        if not self.health[self.active].healthy:
            # Not a failback: every endpoint was down and this is the first one back.
            target, why = chosen(self.group, self.health, exclude=self.active, now=self.now)
            assert target is not None  # an endpoint just recovered
            self.move(target, reason=f"endpoint {target.name} recovered while {self.active} is failed", detail=why)
            return
        best = preferred(self.group, self.health)
        assert best is not None  # an endpoint just recovered
        if best.name == self.active:
            return
        active = endpoint_named(self.group, self.active)
        if self.group.auto_failback and (active is None or preference(best) < preference(active)):
            self.move(best, reason=f"failback to the preferred endpoint {best.name}")

    def move(self, target: Endpoint | None, *, reason: str, detail: Mapping[str, Any] | None = None) -> None:
        """Switch to `target` (default: the best healthy other endpoint), with its events."""
        source = endpoint_named(self.group, self.active)
        common: dict[str, Any] = {
            "actor": self.actor,
            "from_endpoint": self.active,
            "from_region": source.region if source else None,
        }
        details = {"reason": reason, **(detail or {})}
        if target is None:
            target, why = chosen(self.group, self.health, exclude=self.active, now=self.now)
            details |= why
        self.event(FAILOVER_STARTED, endpoint=source, detail=details, **common)
        if target is None:
            if source is None:  # a removed endpoint and nothing healthy: clients still need an answer
                target = min(self.group.endpoints, key=preference)
            else:
                self.event(FAILOVER_FAILED, endpoint=source, detail={**details, "error": "no healthy endpoint"})
                return
        self.event(
            FAILOVER_COMPLETED,
            endpoint=target,
            detail=details,
            to_endpoint=target.name,
            to_region=target.region,
            **common,
        )
        self.active = target.name
