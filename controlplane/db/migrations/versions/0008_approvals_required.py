"""executions.approvals_required: how many distinct people must approve (the rule's `approvals`, kept at creation)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 04:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("approvals_required", sa.Integer(), server_default=sa.text("1"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("approvals_required")
