"""An approved execution runs at once, through the API and the console: the approval wakes the workers.

The workers poll only every POLL_SECONDS here, far longer than the test waits, so only the wake
after the approval can make the execution run in time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.app import create_app
from tests.conftest import ADMIN_TOKEN, AUTH, make_settings
from tests.helpers import SESSION_SECRET, csrf
from tests.integration.test_console_routes import USERS, execution_status, needs_approval

POLL_SECONDS = 120.0
RUNS_WITHIN = 15.0  # generous on a loaded machine, and still far below a poll

RULES = """
rules:
  - name: careful
    match: {alertname: NeedsApproval}
    playbook: tell
    guards: {approval: true}
playbooks:
  - name: tell
    steps:
      - action: notify.log
        with: {text: "approved run for {{ alert.labels.namespace }}"}
"""


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "test.yaml").write_text(RULES)
    settings = make_settings(
        database_url,
        rules_dir=rules,
        console_users=USERS,
        session_secret=SESSION_SECRET,
        worker_poll_seconds=POLL_SECONDS,
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


def runs_promptly(client: TestClient, execution_id: int) -> None:
    deadline = time.monotonic() + RUNS_WITHIN
    while (status := execution_status(client, execution_id)) != "succeeded":
        assert time.monotonic() < deadline, f"approved execution still {status} after {RUNS_WITHIN:g}s"
        time.sleep(0.05)


def test_an_approval_through_the_api_wakes_the_workers(app: TestClient) -> None:
    _, execution_id = needs_approval(app)
    approved = app.post(
        f"/api/v1/executions/{execution_id}/approve", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert approved.status_code == 200, approved.text
    runs_promptly(app, execution_id)


def test_an_approval_in_the_console_wakes_the_workers(app: TestClient) -> None:
    _, execution_id = needs_approval(app)
    app.post("/login", data={"csrf_token": csrf(app, "/login"), "username": "operator", "password": "correct horse"})
    token = csrf(app, "/approvals")
    response = app.post(f"/executions/{execution_id}/approve", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    runs_promptly(app, execution_id)
