"""executions, steps, automation state, metric rule state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:12:15.993509
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import controlplane.db.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "automation_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=False),
        sa.Column("updated_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "metric_rule_states",
        sa.Column("rule_name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("active_since", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("last_evaluated_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("consecutive_errors", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("rule_name"),
    )
    op.create_table(
        "executions",
        sa.Column("id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("rule_name", sa.String(length=255), nullable=False),
        sa.Column("playbook_name", sa.String(length=255), nullable=False),
        sa.Column("trigger_key", sa.String(length=512), nullable=False),
        sa.Column("guard_key", sa.String(length=1024), nullable=False),
        sa.Column("incident_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True),
        sa.Column("alert_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column(
            "playbook", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "params", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "context", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("created_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("wake_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("current_step", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("claims", sa.Integer(), nullable=False),
        sa.Column("decided_by", sa.String(length=255), nullable=True),
        sa.Column("decided_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rule_name", "trigger_key", name="uq_executions_trigger"),
    )
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index("ix_executions_guard", ["rule_name", "guard_key", "created_at"], unique=False)
        batch_op.create_index("ix_executions_incident", ["incident_id"], unique=False)
        batch_op.create_index("ix_executions_runnable", ["status", "wake_at"], unique=False)

    op.create_table(
        "execution_steps",
        sa.Column("id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "inputs", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "output", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("started_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("execution_id", "phase", "index", name="uq_execution_steps_position"),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("execution_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True)
        )
        batch_op.create_index("ix_audit_events_execution", ["execution_id", "id"], unique=False)
        batch_op.create_foreign_key(
            "fk_audit_events_execution", "executions", ["execution_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_constraint("fk_audit_events_execution", type_="foreignkey")
        batch_op.drop_index("ix_audit_events_execution")
        batch_op.drop_column("execution_id")

    op.drop_table("execution_steps")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("ix_executions_runnable")
        batch_op.drop_index("ix_executions_incident")
        batch_op.drop_index("ix_executions_guard")

    op.drop_table("executions")
    op.drop_table("metric_rule_states")
    op.drop_table("automation_state")
