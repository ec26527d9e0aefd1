"""Owns what the automation did for each incident, in one word the incident list and page show.

Read from the incident's executions (the playbooks domain writes them; this only reads):
- `no_rule_matched`: none of its alerts matched a rule;
- `quarantined`: its latest trigger found the rule quarantined by the loop breaker (or tripped it);
- otherwise the latest run that was not suppressed: `running` (pending, running, waiting),
  `awaiting_approval`, `succeeded`, `failed` (failed or rolled back), `cancelled`, `dry_run`;
- `suppressed`: every trigger was suppressed by a guard (cooldown, pause, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sqlalchemy import ColumnElement, Connection, func, literal_column, select

from controlplane.db.tables import executions_t, incidents_t

AutomationState = Literal[
    "no_rule_matched",
    "quarantined",
    "suppressed",
    "running",
    "awaiting_approval",
    "succeeded",
    "failed",
    "cancelled",
    "dry_run",
]
FAILED = ("failed", "rolled_back")
_STATE_OF: dict[str, AutomationState] = {
    "pending": "running",
    "running": "running",
    "waiting": "running",
    "awaiting_approval": "awaiting_approval",
    "succeeded": "succeeded",
    "failed": "failed",
    "rolled_back": "failed",
    "cancelled": "cancelled",
    "dry_run": "dry_run",
}
_QUARANTINE_GUARDS = frozenset({"quarantined", "loop_breaker"})
_e = executions_t.c


def states(conn: Connection, incident_ids: Sequence[int]) -> dict[int, AutomationState]:
    """The automation state of each incident (every id given has one)."""
    if not incident_ids:
        return {}
    ids = list(incident_ids)
    # Each incident's newest run and newest counted run, one index probe each (a storm's incident has
    # tens of thousands of suppressed runs: grouping them all would read every one).
    inner = executions_t.alias("own")
    newest = select(func.max(inner.c.id)).where(inner.c.incident_id == incidents_t.c.id)
    counted = newest.where(inner.c.status != literal_column("'suppressed'"))
    found_runs = conn.execute(
        select(incidents_t.c.id, newest.scalar_subquery(), counted.scalar_subquery()).where(incidents_t.c.id.in_(ids))
    ).all()
    latest = {incident_id: last for incident_id, last, _ in found_runs if last is not None}
    acted = {incident_id: last for incident_id, _, last in found_runs if last is not None}
    wanted = set(latest.values()) | set(acted.values())
    rows = {
        r.id: (r.status, r.guard)
        for r in conn.execute(select(_e.id, _e.status, _e.guard).where(_e.id.in_(wanted))).all()
    }
    found: dict[int, AutomationState] = {}
    for incident_id in ids:
        last = latest.get(incident_id)
        if last is None:
            found[incident_id] = "no_rule_matched"
        elif rows[last][1] in _QUARANTINE_GUARDS:
            found[incident_id] = "quarantined"
        elif incident_id in acted:
            found[incident_id] = _STATE_OF.get(rows[acted[incident_id]][0], "running")
        else:
            found[incident_id] = "suppressed"
    return found


def automation_failed() -> ColumnElement[bool]:
    """A filter on incidents: the latest run that was not suppressed ended failed or rolled back."""
    inner = executions_t.alias("acted")
    latest_acted = (
        select(func.max(inner.c.id))
        .where(inner.c.incident_id == _e.incident_id, inner.c.status != literal_column("'suppressed'"))
        .scalar_subquery()
    )
    failed = select(_e.incident_id).where(
        _e.id == latest_acted, _e.status.in_([literal_column(f"'{s}'") for s in FAILED])
    )
    return incidents_t.c.id.in_(failed)
