"""indexes the console reads by: incidents by severity, an incident's runs newest first, the runs that ended lately

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 08:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTED = sa.text("status != 'suppressed'")
FINISHED_RUN = sa.text("status IN ('succeeded', 'failed', 'rolled_back')")


def upgrade() -> None:
    op.create_index("ix_incidents_severity_id", "incidents", ["severity", "id"])
    # (incident_id, id) serves what (incident_id) did, and the newest runs of an incident without a sort.
    op.drop_index("ix_executions_incident", table_name="executions")
    op.create_index("ix_executions_incident_id", "executions", ["incident_id", "id"])
    op.create_index(
        "ix_executions_incident_counted",
        "executions",
        ["incident_id", "id"],
        sqlite_where=COUNTED,
        postgresql_where=COUNTED,
    )
    op.create_index(
        "ix_executions_finished_runs",
        "executions",
        ["status", "finished_at", "rule_name", "outcome", "dry_run"],  # covering: the ledger reads no row
        sqlite_where=FINISHED_RUN,
        postgresql_where=FINISHED_RUN,
    )


def downgrade() -> None:
    op.drop_index("ix_executions_finished_runs", table_name="executions")
    op.drop_index("ix_executions_incident_counted", table_name="executions")
    op.drop_index("ix_executions_incident_id", table_name="executions")
    op.create_index("ix_executions_incident", "executions", ["incident_id"])
    op.drop_index("ix_incidents_severity_id", table_name="incidents")
