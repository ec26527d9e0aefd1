"""pages to send, quarantines of the loop breaker, the effectiveness ledger on executions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import controlplane.db.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = controlplane.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("guard", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("page_on_failure", sa.Boolean(), server_default=sa.text("true"), nullable=False))
        batch.add_column(sa.Column("outcome", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("outcome_at", _WHEN, nullable=True))
    op.create_table(
        "pages",
        sa.Column("id", controlplane.db.models.BigId, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("execution_id", controlplane.db.models.BigId, nullable=False),
        sa.Column("incident_id", controlplane.db.models.BigId, nullable=True),
        sa.Column("rule_name", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("claimed_until", _WHEN, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sent_at", _WHEN, nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "execution_id", name="uq_pages_kind_execution"),
    )
    op.create_index("ix_pages_unsent", "pages", ["sent_at", "claimed_until"])
    op.create_table(
        "quarantines",
        sa.Column("id", controlplane.db.models.BigId, autoincrement=True, nullable=False),
        sa.Column("rule_name", sa.String(length=255), nullable=False),
        sa.Column("guard_key", sa.String(length=1024), nullable=False),
        sa.Column("execution_id", controlplane.db.models.BigId, nullable=True),
        sa.Column("incident_id", controlplane.db.models.BigId, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("runs", controlplane.db.models.JsonDoc, nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("lifted_at", _WHEN, nullable=True),
        sa.Column("lifted_by", sa.String(length=255), nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_quarantines_rule_key", "quarantines", ["rule_name", "guard_key", "lifted_at"])


def downgrade() -> None:
    op.drop_index("ix_quarantines_rule_key", table_name="quarantines")
    op.drop_table("quarantines")
    op.drop_index("ix_pages_unsent", table_name="pages")
    op.drop_table("pages")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("outcome_at")
        batch.drop_column("outcome")
        batch.drop_column("page_on_failure")
        batch.drop_column("guard")
