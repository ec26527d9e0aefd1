"""Two-person approval (`guards.approvals: 2`) through the console and the API, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane import flows
from controlplane.errors import Conflict
from controlplane.rules.schema import Guards
from tests.conftest import ADMIN_TOKEN
from tests.helpers import console_app, console_users, csrf, log_in, post_alerts

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HX = {"HX-Request": "true"}

RULES = """
rules:
  - name: two-keys
    match: {alertname: NeedsTwo}
    playbook: tell
    guards: {approvals: 2}
playbooks:
  - name: tell
    steps:
      - action: notify.log
        with: {text: "approved by two for {{ alert.labels.namespace }}"}
"""


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    users = console_users(alice="operator", bob="operator")
    with console_app(database_url, RULES, tmp_path, users=users, worker_poll_seconds=0.05) as client:
        yield client


def waiting_execution(client: TestClient, namespace: str) -> tuple[int, int]:
    (incident_id,) = post_alerts(
        client, {"fingerprint": f"fp-{namespace}", "labels": {"alertname": "NeedsTwo", "namespace": namespace}}
    )
    items = client.get("/api/v1/executions", params={"status": "awaiting_approval"}).json()["items"]
    return incident_id, next(e["id"] for e in items if e["incident_id"] == incident_id)


def status_of(client: TestClient, execution_id: int) -> str:
    return str(client.get(f"/api/v1/executions/{execution_id}").json()["status"])


def approve_as(client: TestClient, name: str, execution_id: int) -> int:
    log_in(client, name)
    token = csrf(client, "/approvals")
    return client.post(f"/executions/{execution_id}/approve", data={"csrf_token": token}, headers=HX).status_code


def test_approvals_imply_approval_and_refuse_approval_false() -> None:
    assert Guards.model_validate({"approvals": 2}).approval is True
    assert Guards.model_validate({"approval": True}).approvals == 1
    with pytest.raises(ValueError, match="drop `approval: false`"):
        Guards.model_validate({"approvals": 2, "approval": False})


def test_two_people_approve_in_the_console_and_the_same_one_twice_is_refused(app: TestClient) -> None:
    incident_id, execution_id = waiting_execution(app, "ns-two")
    log_in(app, "alice")
    first = app.post(f"/executions/{execution_id}/approve", data={"csrf_token": csrf(app, "/approvals")}, headers=HX)
    assert first.status_code == 200 and "is counted: 1 of 2 approvals (alice)" in first.text  # not "approved"
    assert status_of(app, execution_id) == "awaiting_approval"  # one of two: it still waits
    assert "1 of 2 approvals (alice)" in app.get("/approvals").text
    assert "1 of 2 approvals (alice)" in app.get(f"/incidents/{incident_id}").text

    token = csrf(app, "/approvals")
    again = app.post(f"/executions/{execution_id}/approve", data={"csrf_token": token}, headers=HX)
    assert again.status_code == 409 and "already approved" in again.text and "different people" in again.text
    assert status_of(app, execution_id) == "awaiting_approval"

    assert approve_as(app, "bob", execution_id) == 200
    deadline = time.monotonic() + 10
    while status_of(app, execution_id) != "succeeded":
        assert time.monotonic() < deadline, status_of(app, execution_id)
        time.sleep(0.05)
    detail = app.get(f"/api/v1/executions/{execution_id}").json()
    assert detail["approved_by"] == ["user:alice", "user:bob"]
    actions = [(e["action"], e["actor"]) for e in detail["timeline"]]
    assert ("execution.approval_given", "user:alice") in actions
    assert ("execution.approval_given", "user:bob") in actions
    assert ("execution.approved", "user:bob") in actions
    assert actions.index(("execution.approval_given", "user:bob")) < actions.index(("execution.approved", "user:bob"))


def test_the_api_counts_its_approval_and_shows_the_progress(app: TestClient) -> None:
    _, execution_id = waiting_execution(app, "ns-api")
    first = app.post(f"/api/v1/executions/{execution_id}/approve", headers=ADMIN, json={"reason": "looks right"})
    assert first.status_code == 200
    assert first.json()["status"] == "awaiting_approval"
    assert first.json()["approval_progress"] == "1 of 2 approvals (admin)"
    second = app.post(f"/api/v1/executions/{execution_id}/approve", headers=ADMIN)
    assert second.status_code == 409 and "admin already approved" in second.text
    assert approve_as(app, "alice", execution_id) == 200  # a console user is the second person
    assert app.get(f"/api/v1/executions/{execution_id}").json()["approved_by"] == ["admin", "user:alice"]


def test_a_reject_by_anyone_cancels_after_one_approval(app: TestClient) -> None:
    _, execution_id = waiting_execution(app, "ns-reject")
    assert approve_as(app, "alice", execution_id) == 200
    log_in(app, "bob")
    token = csrf(app, "/approvals")
    assert app.post(f"/executions/{execution_id}/reject", data={"csrf_token": token}, headers=HX).status_code == 200
    assert status_of(app, execution_id) == "cancelled"
    late = app.post(f"/executions/{execution_id}/approve", data={"csrf_token": token}, headers=HX)
    assert late.status_code == 409 and "cancelled" in late.text


def test_two_approvals_at_once_are_both_counted_and_the_same_person_at_once_only_once(app: TestClient) -> None:
    services = app.app.state.services  # type: ignore[attr-defined]
    _, together = waiting_execution(app, "ns-together")
    _, twice = waiting_execution(app, "ns-twice")

    def approve_all(execution_id: int, actors: list[str]) -> list[str]:
        start = threading.Barrier(len(actors))

        def one(actor: str) -> str:
            start.wait()
            try:
                flows.approve_execution(
                    engine=services.engine,
                    execution_id=execution_id,
                    actor=actor,
                    reason="",
                    now=datetime.now(UTC),
                    wake=lambda: None,
                )
            except Conflict as exc:
                return str(exc)
            return "ok"

        with ThreadPoolExecutor(len(actors)) as pool:
            return list(pool.map(one, actors))

    assert approve_all(together, ["user:alice", "user:bob"]) == ["ok", "ok"]
    detail = app.get(f"/api/v1/executions/{together}").json()
    assert detail["status"] != "awaiting_approval" and sorted(detail["approved_by"]) == ["user:alice", "user:bob"]
    assert [e["action"] for e in detail["timeline"]].count("execution.approved") == 1

    outcomes = approve_all(twice, ["user:alice", "user:alice"])
    assert outcomes.count("ok") == 1
    assert "alice already approved" in next(outcome for outcome in outcomes if outcome != "ok")
    assert app.get(f"/api/v1/executions/{twice}").json()["approved_by"] == ["user:alice"]
