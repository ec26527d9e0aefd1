"""leader lease

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 09:44:42.615992
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import controlplane.db.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "leader_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("renewed_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:

    op.drop_table("leader_leases")
