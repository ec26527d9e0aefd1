"""Replicas starting together migrate a fresh database once; a release rolled back serves a newer schema."""

from __future__ import annotations

import threading
import uuid

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import text

from controlplane.app import create_app
from controlplane.cli import main
from controlplane.db import migrate
from controlplane.db.engine import make_engine
from tests.conftest import AUTH, PG_URL, WEBHOOK, load_payload, make_settings, pg_schema_url


@pytest.mark.postgres
def test_concurrent_upgrades_take_turns(postgres_url: str) -> None:  # postgres_url: fails under CI without PG
    schema = f"cp_mig_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engines = [make_engine(pg_schema_url(schema)) for _ in range(3)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine: object) -> None:
        try:
            barrier.wait(10)
            migrate.upgrade(engine)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=start, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert all(migrate.is_current(e) for e in engines)
    finally:
        for e in engines:
            e.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


NEWER = "9999_from_a_newer_release"


def test_a_rolled_back_release_serves_a_database_a_newer_one_migrated(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Migrations only add, so the previous release runs on the newer schema: a rollback must start and be ready."""
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    head = migrate.head_revision(engine)
    with engine.begin() as conn:  # what a newer release's migration did: a column added, the revision moved on
        conn.execute(text("ALTER TABLE incidents ADD COLUMN added_by_newer_release VARCHAR(32)"))
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": NEWER})
    try:
        settings = make_settings(database_url)
        with structlog.testing.capture_logs() as logs, TestClient(create_app(settings), headers=AUTH) as client:
            ready = client.get("/ready")
            assert ready.status_code == 200, ready.text
            assert NEWER in ready.json()["checks"]["migrations"] and "newer" in ready.json()["checks"]["migrations"]
            assert client.post(WEBHOOK, json=load_payload("alertmanager_firing.json")).status_code == 200
            assert len(client.get("/api/v1/incidents").json()["items"]) == 1
        [ahead] = [entry for entry in logs if entry["event"] == "database.ahead"]
        assert ahead["log_level"] == "warning" and ahead["revision"] == NEWER
        assert main(["migrate", "--database-url", database_url]) == 0
        assert NEWER in capsys.readouterr().out
        assert migrate.current_revision(engine) == NEWER  # left as the newer release left it
    finally:  # the PostgreSQL schema is shared by the session's tests
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE incidents DROP COLUMN added_by_newer_release"))
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
        engine.dispose()
