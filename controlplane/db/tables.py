"""Owns the table handles the code queries with (Core `Table`s of the models in db/models.py), and `dialect_insert`.

Modules write SQL against these handles, declared once here: `Model.__table__` is typed as a
`FromClause` and needed a `# type: ignore` in every module that took it. A misspelt name fails
at import, not at the first query.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

from controlplane.db.models import Base


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


alerts_t = _table("alerts")
incidents_t = _table("incidents")
links_t = _table("incident_alerts")  # which alerts an incident holds
audit_t = _table("audit_events")
executions_t = _table("executions")
steps_t = _table("execution_steps")
automation_t = _table("automation_state")
metric_states_t = _table("metric_rule_states")
endpoint_states_t = _table("endpoint_states")
active_endpoints_t = _table("active_endpoints")
endpoint_heartbeats_t = _table("endpoint_heartbeats")
failover_events_t = _table("failover_events")
notification_threads_t = _table("notification_threads")
silences_t = _table("silences")
leases_t = _table("leader_leases")
login_attempts_t = _table("login_attempts")
console_sessions_t = _table("console_sessions")
pages_t = _table("pages")
quarantines_t = _table("quarantines")


def dialect_insert(conn: Connection, table: Table) -> Any:
    """An INSERT with on_conflict_* for the connection's dialect (SQLite and PostgreSQL share the API)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
