"""failover, notification threads, silences

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:37:13.502669
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import controlplane.db.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "active_endpoints",
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("since", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("service"),
    )
    op.create_table(
        "endpoint_states",
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("consecutive_successes", sa.Integer(), nullable=False),
        sa.Column("last_checked_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("service", "endpoint"),
    )
    op.create_table(
        "failover_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=True),
        sa.Column("from_endpoint", sa.String(length=255), nullable=True),
        sa.Column("to_endpoint", sa.String(length=255), nullable=True),
        sa.Column("from_region", sa.String(length=255), nullable=True),
        sa.Column("to_region", sa.String(length=255), nullable=True),
        sa.Column(
            "detail", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("failover_events", schema=None) as batch_op:
        batch_op.create_index("ix_failover_events_service", ["service", "id"], unique=False)

    op.create_table(
        "notification_threads",
        sa.Column("incident_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("channel", sa.String(length=255), nullable=False),
        sa.Column("ts", sa.String(length=64), nullable=False),
        sa.Column("created_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("incident_id", "channel"),
    )
    op.create_table(
        "silences",
        sa.Column("id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("silence_id", sa.String(length=64), nullable=False),
        sa.Column("incident_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True),
        sa.Column("execution_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True),
        sa.Column("alertmanager_url", sa.Text(), nullable=False),
        sa.Column(
            "matchers", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expired_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("silence_id"),
    )
    with op.batch_alter_table("silences", schema=None) as batch_op:
        batch_op.create_index("ix_silences_incident", ["incident_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("silences", schema=None) as batch_op:
        batch_op.drop_index("ix_silences_incident")

    op.drop_table("silences")
    op.drop_table("notification_threads")
    with op.batch_alter_table("failover_events", schema=None) as batch_op:
        batch_op.drop_index("ix_failover_events_service")

    op.drop_table("failover_events")
    op.drop_table("endpoint_states")
    op.drop_table("active_endpoints")
