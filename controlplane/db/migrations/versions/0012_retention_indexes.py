"""indexes retention prunes by: incidents by when they resolved, audit rows by age, suppressed runs by age,
and the foreign keys without one (deleting an alert scanned every execution for its alert_id)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 14:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUPPRESSED = sa.text("status = 'suppressed'")
# Referencing columns that a delete of their parent looks up (ON DELETE SET NULL / CASCADE), with no index.
FOREIGN_KEYS = [
    ("executions", "alert_id"),
    ("pages", "execution_id"),
    ("pages", "incident_id"),
    ("quarantines", "execution_id"),
    ("quarantines", "incident_id"),
    ("silences", "execution_id"),
]


def upgrade() -> None:
    op.create_index("ix_incidents_resolved_at", "incidents", ["resolved_at", "id"])
    op.create_index("ix_audit_events_at", "audit_events", ["at", "id"])
    op.create_index(
        "ix_executions_suppressed_created",
        "executions",
        ["created_at"],
        sqlite_where=SUPPRESSED,
        postgresql_where=SUPPRESSED,
    )
    for table, column in FOREIGN_KEYS:
        op.create_index(f"ix_{table}_{column}", table, [column])


def downgrade() -> None:
    for table, column in reversed(FOREIGN_KEYS):
        op.drop_index(f"ix_{table}_{column}", table_name=table)
    op.drop_index("ix_executions_suppressed_created", table_name="executions")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_index("ix_incidents_resolved_at", table_name="incidents")
