"""Owns writing the audit trail: one `audit()` for every change, and `PendingAudits` to write many in one statement.

`details()` reads back what was recorded of one kind for an execution or an incident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from controlplane.db.tables import audit_t

# Built once: on the ingest hot path building a statement (not running it) was most of the time.
_INSERT_AUDIT = audit_t.insert()


@dataclass
class PendingAudits:
    """Audit rows nothing reads before the transaction ends, written in bulk: one statement, not one a row.

    A storm's new alert costs one or two audit rows; each its own round trip was a large part
    of its time. Flush before reading the trail in the same transaction.
    """

    audits: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, conn: Connection) -> None:
        if self.audits:
            conn.execute(_INSERT_AUDIT, self.audits)
            self.audits = []


def audit(
    conn: Connection,
    *,
    actor: str,
    action: str,
    incident_id: int | None,
    detail: dict[str, Any],
    now: datetime,
    execution_id: int | None = None,
    pending: PendingAudits | None = None,
) -> None:
    """Write an audit row, or queue it in `pending` to be written with others in one statement."""
    row = {
        "at": now,
        "actor": actor,
        "action": action,
        "incident_id": incident_id,
        "execution_id": execution_id,
        "detail": detail,
    }
    if pending is not None:
        pending.audits.append(row)
    else:
        conn.execute(_INSERT_AUDIT, row)


def details(
    conn: Connection, *, action: str, execution_id: int | None = None, incident_id: int | None = None
) -> list[dict[str, Any]]:
    """The `detail` of the `action` events of the execution and/or the incident, newest first."""
    if execution_id is None and incident_id is None:
        raise ValueError("details() reads one execution's or one incident's events, not the whole trail")
    query = select(audit_t.c.detail).where(audit_t.c.action == action).order_by(audit_t.c.id.desc())
    if execution_id is not None:
        query = query.where(audit_t.c.execution_id == execution_id)
    if incident_id is not None:
        query = query.where(audit_t.c.incident_id == incident_id)
    return [dict(detail) for detail in conn.execute(query).scalars()]
