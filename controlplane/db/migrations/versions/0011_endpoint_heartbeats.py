"""endpoint_heartbeats: registrations of failover endpoints that send heartbeats (issue 18, seed 003)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 11:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import controlplane.db.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "endpoint_heartbeats",
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("instance", sa.String(length=255), nullable=False),
        sa.Column("registered_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeats", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("service", "endpoint"),
    )


def downgrade() -> None:
    op.drop_table("endpoint_heartbeats")
