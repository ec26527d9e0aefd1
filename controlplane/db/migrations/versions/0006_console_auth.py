"""console login attempts and sessions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 00:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import controlplane.db.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("window_start", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_login_attempts_window_start", "login_attempts", ["window_start"])
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=128), nullable=False),
        sa.Column("password_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", controlplane.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_expires_at", table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_index("ix_login_attempts_window_start", table_name="login_attempts")
    op.drop_table("login_attempts")
