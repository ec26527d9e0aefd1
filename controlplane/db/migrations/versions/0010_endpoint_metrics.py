"""endpoint_states: each endpoint's last cpu, memory and health-check response time, for scored failover groups

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import controlplane.db.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint_states") as batch:
        batch.add_column(sa.Column("cpu_usage", sa.Float(), nullable=True))
        batch.add_column(sa.Column("memory_usage", sa.Float(), nullable=True))
        batch.add_column(sa.Column("response_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("metrics_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoint_states") as batch:
        batch.drop_column("metrics_at")
        batch.drop_column("response_seconds")
        batch.drop_column("memory_usage")
        batch.drop_column("cpu_usage")
