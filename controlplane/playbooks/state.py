"""Owns the execution state machine: every status change goes through `transition()`, and is audited."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ClauseElement, Connection, bindparam, update

from controlplane.audit import audit
from controlplane.db.tables import executions_t

Status = Literal[
    "suppressed",
    "awaiting_approval",
    "pending",
    "running",
    "waiting",
    "succeeded",
    "failed",
    "rolled_back",
    "cancelled",
    "dry_run",
]
TERMINAL: frozenset[str] = frozenset({"suppressed", "succeeded", "failed", "rolled_back", "cancelled", "dry_run"})
ACTIVE: frozenset[str] = frozenset({"awaiting_approval", "pending", "running", "waiting"})

# to-state -> the states it may be entered from
_ALLOWED_FROM: dict[str, frozenset[str]] = {
    "pending": frozenset({"awaiting_approval"}),
    "running": frozenset({"pending", "waiting", "running"}),  # running -> running: a lease taken over
    "waiting": frozenset({"running"}),
    "succeeded": frozenset({"running"}),
    "dry_run": frozenset({"running"}),
    "rolled_back": frozenset({"running"}),
    "failed": frozenset({"pending", "running", "waiting"}),
    "cancelled": frozenset({"awaiting_approval", "pending", "running", "waiting"}),
}


# Built once, run with a parameter dict: building the statement per call was most of a step's CPU.
# The SET clause is the keys of the parameters that name columns; `b_*` are the WHERE's.
_TRANSITION = update(executions_t).where(
    executions_t.c.id == bindparam("b_id"), executions_t.c.status.in_(bindparam("b_sources", expanding=True))
)
_TRANSITION_OWNED = _TRANSITION.where(executions_t.c.lease_owner == bindparam("b_owner"))


class InvalidTransition(Exception):
    pass


def allowed_from(to: str) -> frozenset[str]:
    try:
        return _ALLOWED_FROM[to]
    except KeyError:
        raise InvalidTransition(f"no transition into {to!r}") from None


def transition(
    conn: Connection,
    execution_id: int,
    to: Status,
    *,
    actor: str,
    now: datetime,
    reason: str | None = None,
    owner: str | None = None,
    from_states: Iterable[str] | None = None,
    values: dict[str, Any] | None = None,
    incident_id: int | None = None,
    detail: dict[str, Any] | None = None,
    audit_it: bool = True,
) -> bool:
    """Move an execution to `to` if it is in an allowed state (and, with `owner`, still claimed by it).

    Returns False when another actor got there first: the caller lost the race and must stop.
    """
    sources = allowed_from(to) if from_states is None else frozenset(from_states) & allowed_from(to)
    changes: dict[str, Any] = {"status": to, "updated_at": now, **(values or {})}
    if reason is not None:
        changes["reason"] = reason
    if to in TERMINAL:
        changes.setdefault("finished_at", now)
        changes.setdefault("lease_expires_at", None)
    if any(isinstance(value, ClauseElement) for value in changes.values()):  # a SQL expression: built here
        stmt = update(executions_t).where(executions_t.c.id == execution_id, executions_t.c.status.in_(sources))
        if owner is not None:
            stmt = stmt.where(executions_t.c.lease_owner == owner)
        changed = conn.execute(stmt.values(**changes)).rowcount
    else:
        params = {"b_id": execution_id, "b_sources": sorted(sources), **changes}
        if owner is not None:
            params["b_owner"] = owner
        changed = conn.execute(_TRANSITION if owner is None else _TRANSITION_OWNED, params).rowcount
    if changed != 1:
        return False
    if audit_it:
        audit(
            conn,
            actor=actor,
            action=f"execution.{to}",
            incident_id=incident_id,
            execution_id=execution_id,
            detail={"reason": reason or "", **(detail or {})},
            now=now,
        )
    return True
