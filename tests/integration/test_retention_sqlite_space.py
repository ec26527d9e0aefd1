"""SQLite gives the space of pruned rows back: a new file has incremental vacuum on and shrinks after a round;
an older file (made without it) keeps its size, is warned about once, and `controlplane vacuum` turns it on."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import structlog
from sqlalchemy import Engine

from controlplane.db import migrate
from controlplane.db.engine import make_engine, write_transaction
from tests.integration.test_retention import sweeps
from tests.integration.test_retention_service import run_cli, seed


def pragma(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())


def test_a_new_database_shrinks_as_retention_prunes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/new.db")
    try:
        migrate.upgrade(engine)
        assert pragma(engine, "auto_vacuum") == 2  # incremental
        seed(engine, 300)
        full = pragma(engine, "page_count")

        done = sweeps(engine)[0].sweep_now()

        assert done is not None and done.vacuumed_pages > 0
        assert pragma(engine, "freelist_count") == 0
        assert pragma(engine, "page_count") < full / 2, (pragma(engine, "page_count"), full)
    finally:
        engine.dispose()


def test_an_older_database_is_warned_about_once_and_vacuum_turns_it_on(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:  # as the service made files before incremental vacuum
        raw.execute("CREATE TABLE made_before (x)")
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        assert pragma(engine, "auto_vacuum") == 0
        seed(engine, 100)
        retention = sweeps(engine)[0]
        with structlog.testing.capture_logs() as logs:
            first = retention.sweep_now()
            seed(engine, 100, first_id=1000)
            second = retention.sweep_now()
        assert first is not None and second is not None and first.vacuumed_pages == second.vacuumed_pages == 0
        warnings = [entry for entry in logs if entry["event"] == "retention.sqlite_space_kept"]
        assert len(warnings) == 1 and "controlplane vacuum" in warnings[0]["hint"]
        assert pragma(engine, "freelist_count") > 0
        engine.dispose()

        vacuumed = run_cli("vacuum", "--database-url", url)

        assert vacuumed.returncode == 0, vacuumed.stderr
        assert "incremental vacuum on" in vacuumed.stdout
        assert pragma(engine, "auto_vacuum") == 2 and pragma(engine, "freelist_count") == 0
    finally:
        engine.dispose()


def test_vacuum_on_postgresql_says_there_is_nothing_to_do(postgres_url: str) -> None:
    result = run_cli("vacuum", "--database-url", postgres_url)
    assert result.returncode == 0 and "autovacuum" in result.stdout, result.stderr


def test_a_new_connection_opens_while_another_writes(tmp_path: Path) -> None:
    """Turning incremental vacuum on takes the write lock: only a new, empty file may be asked to (a connection
    opened while a writer held the lock waited 10 s and failed with "database is locked")."""
    url = f"sqlite:///{tmp_path}/busy.db"
    writer, reader = make_engine(url), make_engine(url)
    try:
        migrate.upgrade(writer)
        with write_transaction(writer) as conn:
            conn.exec_driver_sql("CREATE TABLE held (x)")
            started = time.monotonic()
            assert pragma(reader, "auto_vacuum") == 2
            assert time.monotonic() - started < 1.0
    finally:
        writer.dispose()
        reader.dispose()
