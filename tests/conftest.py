"""Shared fixtures: each database test runs on SQLite and on the real PostgreSQL.

PostgreSQL tests use a schema of their own per test session (named in the URL's
search_path), migrated once and truncated between tests, so they never touch other data.
Missing prerequisites skip locally but fail under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from controlplane.app import create_app
from controlplane.config import Settings
from controlplane.db import migrate
from controlplane.db.engine import make_engine
from controlplane.db.models import Base
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR

# Fixtures of the real binaries and the sample service: `prometheus`, `alertmanager`, `sample_app`; and the
# wheel of the tree, `project_wheel`.
pytest_plugins = ["tests.prometheus_server", "tests.alertmanager_server", "tests.sample_fixture", "tests.project_wheel"]

DATA = Path(__file__).parent / "data"
PG_URL = os.environ.get("CONTROLPLANE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI") == "true"
WEBHOOK = "/api/v1/alerts/alertmanager"
TOKEN = "test-webhook-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # the webhook and read token of make_settings()
RULES = DEFAULTS_DIR / "rules"  # the default rules shipped in the package


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing; under CI=true fail instead, so CI cannot pass on nothing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: `make test` must provide it)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"binary {name!r} not found")
    assert path is not None
    return path


def load_payload(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def pg_schema_url(schema: str) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated schema of this session's own on the real PostgreSQL."""
    admin = make_engine(PG_URL)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        require(False, f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}")
    schema = f"cp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = pg_schema_url(schema)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/controlplane.db"
    url: str = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as conn:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def pagerduty_api() -> Iterator[Any]:
    """A PagerDuty Events v2 stand-in on a loopback port (tests/standins/pagerduty.py)."""
    from tests.standins.pagerduty import PagerDutyStandIn  # it imports tests.helpers, which imports this module

    standin = PagerDutyStandIn()
    yield standin
    standin.close()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def unused_engine() -> Iterator[Engine]:
    """For the contexts of actions that never touch the database: a context just needs an engine."""
    engine = make_engine("sqlite://")
    yield engine
    engine.dispose()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Test settings: no rules unless a test names a rules_dir (the shipped rules act on what they match).

    The webhook and read tokens are one value here, so one client header posts alerts and reads them
    back; tests/integration/test_api_auth.py checks them apart.
    """
    values: dict[str, Any] = {
        "database_url": database_url,
        "webhook_token": TOKEN,
        "read_token": TOKEN,
        "admin_token": ADMIN_TOKEN,
        "rules_dir": Path(tempfile.mkdtemp(prefix="cp-no-rules-")),
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
