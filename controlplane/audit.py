"""Owns writing the audit trail: one `audit()` for every change, and `PendingAudits` to write many in one statement."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

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
