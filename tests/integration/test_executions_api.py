"""Webhook to playbook through the running service: executions, approval, pause, reload, on both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.app import create_app
from tests.conftest import ADMIN_TOKEN, AUTH, TOKEN, make_settings
from tests.helpers import post_alert, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

RULES = """
rules:
  - name: note-errors
    match: {alertname: LangGraphHighErrorRate, severity: "=~critical|page"}
    playbook: note
    guards: {approval: false}
  - name: careful
    match: {alertname: NeedsApproval}
    playbook: note
    guards: {approval: true}
playbooks:
  - name: note
    steps:
      - id: noted
        action: incident.annotate
        with: {text: "graph {{ alert.labels.graph_name }} is failing"}
      - action: notify.log
        with: {text: "{{ steps.noted.value }}"}
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "test.yaml").write_text(RULES)
    return directory


@pytest.fixture
def app_client(database_url: str, rules_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(database_url, rules_dir=rules_dir, worker_poll_seconds=0.05)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def execution_in(client: TestClient, status: str) -> dict[str, Any] | None:
    items = client.get("/api/v1/executions", params={"status": status}).json()["items"]
    return items[0] if items else None


def test_an_alert_runs_its_playbook_and_the_incident_shows_it(app_client: TestClient) -> None:
    post_alert(app_client)
    done = wait_for("an execution succeeds", lambda: execution_in(app_client, "succeeded"), 10)
    detail = app_client.get(f"/api/v1/executions/{done['id']}").json()
    assert [s["action"] for s in detail["steps"]] == ["incident.annotate", "notify.log"]
    assert detail["steps"][1]["output"]["value"] == "graph support_bot is failing"
    incident = app_client.get(f"/api/v1/incidents/{done['incident_id']}").json()
    notes = [e for e in incident["timeline"] if e["action"] == "incident.note"]
    assert notes[0]["detail"]["text"] == "graph support_bot is failing"
    post_alert(app_client)  # delivered again: no second execution
    assert len(app_client.get("/api/v1/executions").json()["items"]) == 1


def test_approval_through_the_api(app_client: TestClient) -> None:
    post_alert(app_client, alertname="NeedsApproval")
    waiting = wait_for("an execution awaits approval", lambda: execution_in(app_client, "awaiting_approval"), 10)
    refused = app_client.post(f"/api/v1/executions/{waiting['id']}/approve")
    assert refused.status_code == 401  # the webhook token is not the admin token
    approved = app_client.post(f"/api/v1/executions/{waiting['id']}/approve", headers=ADMIN, json={"reason": "ok"})
    assert approved.status_code == 200 and approved.json()["decided_by"] == "admin"
    wait_for("an execution succeeds", lambda: execution_in(app_client, "succeeded"), 10)
    again = app_client.post(f"/api/v1/executions/{waiting['id']}/approve", headers=ADMIN)
    assert again.status_code == 409 and "cannot be approved" in again.json()["error"]


def test_pause_and_resume(app_client: TestClient) -> None:
    paused = app_client.post("/api/v1/automation/pause", headers=ADMIN, json={"reason": "incident review"})
    assert paused.json()["paused"] is True
    post_alert(app_client)
    suppressed = wait_for("an execution is suppressed", lambda: execution_in(app_client, "suppressed"), 10)
    assert "incident review" in suppressed["reason"]
    app_client.post("/api/v1/automation/resume", headers=ADMIN)
    assert app_client.get("/api/v1/automation").json()["paused"] is False
    post_alert(app_client, namespace="other")
    wait_for("an execution succeeds", lambda: execution_in(app_client, "succeeded"), 10)


def test_reload_keeps_the_rules_in_force_when_a_file_is_bad(app_client: TestClient, rules_dir: Path) -> None:
    assert [r["name"] for r in app_client.get("/api/v1/rules").json()["rules"]] == ["note-errors", "careful"]
    (rules_dir / "broken.yaml").write_text("rules:\n  - name: x\n    match: {a: b}\n    playbook: missing\n")
    response = app_client.post("/api/v1/rules/reload", headers=ADMIN)
    assert response.status_code == 422
    assert "broken.yaml:" in json.dumps(response.json())
    rules = app_client.get("/api/v1/rules").json()
    assert [r["name"] for r in rules["rules"]] == ["note-errors", "careful"]
    broken = rules_dir / "broken.yaml"
    assert rules["last_reload_errors"] == [f"{broken}:4: rule \"x\": playbook: no playbook named 'missing'"]
    (rules_dir / "broken.yaml").unlink()
    assert app_client.post("/api/v1/rules/reload", headers=ADMIN).status_code == 200


def connection_refused() -> None:
    raise ConnectionError("connection refused")


def test_actions_breakers_and_admin_refusal(app_client: TestClient, database_url: str, rules_dir: Path) -> None:
    names = {a["name"] for a in app_client.get("/api/v1/actions").json()}
    assert {"notify.log", "wait", "verify.resolved", "incident.annotate", "http.request", "prometheus.top"} <= names
    # A target's breaker is listed, with what the calls through it did.
    breaker = app_client.app.state.services.breakers.get("http:graph-admin")  # type: ignore[attr-defined]
    assert breaker.call(lambda: "ok") == "ok"
    with pytest.raises(ConnectionError):
        breaker.call(connection_refused)
    assert app_client.get("/api/v1/circuit-breakers").json() == [
        {
            "name": "http:graph-admin",
            "state": "closed",
            "consecutive_failures": 1,
            "consecutive_successes": 0,
            "in_flight": 0,
            "total": 2,
            "succeeded": 1,
            "failed": 1,
            "rejected": 0,
            "opened_at": None,
            "retry_in": None,
        }
    ]
    without_admin = make_settings(database_url, rules_dir=rules_dir, admin_token=None)
    with TestClient(create_app(without_admin), headers=AUTH) as client:
        refused = client.post("/api/v1/automation/pause")
        assert refused.status_code == 403 and "CONTROLPLANE_ADMIN_TOKEN" in refused.json()["error"]
