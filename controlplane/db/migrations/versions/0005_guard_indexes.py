"""guard indexes that leave suppressed executions out

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTED = sa.text("status != 'suppressed'")


def upgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("ix_executions_guard")
        batch_op.create_index("ix_executions_rule_status_guard", ["rule_name", "status", "guard_key"])
        batch_op.create_index(
            "ix_executions_counted_guard",
            ["rule_name", "guard_key", "created_at"],
            sqlite_where=COUNTED,
            postgresql_where=COUNTED,
        )
        batch_op.create_index(
            "ix_executions_counted_rule", ["rule_name", "created_at"], sqlite_where=COUNTED, postgresql_where=COUNTED
        )


def downgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("ix_executions_counted_rule")
        batch_op.drop_index("ix_executions_counted_guard")
        batch_op.drop_index("ix_executions_rule_status_guard")
        batch_op.create_index("ix_executions_guard", ["rule_name", "guard_key", "created_at"])
