"""A change made through the API is answered only once it is committed: a commit that fails is a 503, never a
200 saying the change was made (the kill switch answered "paused" while automation went on), and a read right
after the answer sees the change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from controlplane.app import create_app
from tests.conftest import ADMIN_TOKEN, AUTH, make_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    app = create_app(make_settings(database_url))
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as client:
        yield client


def test_a_pause_whose_commit_fails_is_not_answered_paused(client: TestClient) -> None:
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    failing = {"on": True}

    def commit_fails(conn: Any) -> None:
        if failing["on"] and conn.get_execution_options().get("write"):
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    event.listen(engine, "commit", commit_fails)
    try:
        answer = client.post("/api/v1/automation/pause", headers=ADMIN, json={"reason": "stop it"})
    finally:
        failing["on"] = False
        event.remove(engine, "commit", commit_fails)
    assert answer.status_code == 503, answer.text
    assert client.get("/api/v1/automation").json()["paused"] is False
