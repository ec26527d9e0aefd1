"""Owns schema migrations: upgrade to head, and tell whether a database is current."""

from __future__ import annotations

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, text

log = structlog.get_logger(__name__)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", "controlplane.db:migrations")
    config.attributes["engine"] = engine
    return config


MIGRATION_LOCK = 0x636F6E74726F6C  # "control": PostgreSQL advisory lock key for migrations


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema; replicas starting together take turns (the second finds it current).

    A database at a revision this release does not know was migrated by a newer release (this one
    was rolled back): it is left as it is, since migrations only add what older releases ignore.
    """
    current = current_revision(engine)
    if is_newer(engine, current):
        log.warning("database.ahead", revision=current, this_release_head=head_revision(engine))
        return
    if engine.dialect.name != "postgresql":
        command.upgrade(alembic_config(engine), revision)
        return
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        try:
            command.upgrade(alembic_config(engine), revision)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            lock.commit()


def is_newer(engine: Engine, revision: str | None) -> bool:
    """A revision none of this release's migrations has: a newer release's."""
    if revision is None:
        return False
    try:
        ScriptDirectory.from_config(alembic_config(engine)).get_revision(revision)
    except CommandError:
        return True
    return False


def schema_status(engine: Engine, head: str | None) -> tuple[bool, str]:
    """(ready to serve, what /ready says): current, or newer (a rolled-back release), or behind."""
    current = current_revision(engine)
    if current == head:
        return True, "current"
    if is_newer(engine, current):
        return True, f"at {current}, newer than this release's {head}: served as is (migrations only add)"
    return False, f"at {current}, want {head}"


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision(engine)
