"""indexes retention prunes by: incidents by when they resolved, audit rows by age, suppressed runs by age

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


def downgrade() -> None:
    op.drop_index("ix_executions_suppressed_created", table_name="executions")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_index("ix_incidents_resolved_at", table_name="incidents")
