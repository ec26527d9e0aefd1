"""Replicas starting together on a fresh PostgreSQL database migrate it once, without failing."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import text

from controlplane.db import migrate
from controlplane.db.engine import make_engine
from tests.conftest import PG_URL, pg_schema_url


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
