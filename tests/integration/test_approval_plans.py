"""Approvals show the change, on SQLite and PostgreSQL: the approval card (console and API) shows the plan of the
execution read from the real sample service; an approval of a plan the world has moved away from is refused with
the new plan, and the new one is approved and runs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_TOKEN, WEBHOOK
from tests.helpers import console_app, console_users, csrf, log_in, sample_notification, wait_for
from tests.sample_fixture import SampleApp

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
RULES = """
targets:
  - {{name: sample, kind: http, url: "{url}/admin", max_disabled_graphs: 2}}
rules:
  - name: disable-failing-graph
    match: {{alertname: GraphBroken}}
    playbook: disable
    guards: {{approval: true}}
playbooks:
  - name: disable
    steps:
      - action: graph.disable
        with: {{target: sample, graph: "{{{{ alert.labels.graph_name }}}}"}}
"""


@pytest.fixture
def app(database_url: str, tmp_path: Path, sample_app: SampleApp) -> Iterator[TestClient]:
    with console_app(
        database_url,
        RULES.format(url=sample_app.url),
        tmp_path,
        users=console_users(olga="operator"),
        worker_poll_seconds=0.05,
        http_allowed_hosts=["127.0.0.1"],
    ) as client:
        yield client


def waiting(app: TestClient) -> dict[str, Any]:
    alert = {"labels": {"alertname": "GraphBroken", "graph_name": "a"}, "fingerprint": "fp-a"}
    assert app.post(WEBHOOK, json=sample_notification(alert)).status_code == 200
    [run] = app.get("/api/v1/executions", params={"status": "awaiting_approval"}).json()["items"]
    return dict(run)


def test_the_api_approves_the_plan_it_showed_and_refuses_one_the_world_moved_away_from(
    app: TestClient, sample_app: SampleApp
) -> None:
    run = waiting(app)
    shown = app.get(f"/api/v1/executions/{run['id']}/plan", headers=ADMIN).json()
    [step] = shown["steps"]
    assert step["sentence"] == "step 1: disable graph a on sample (3 of 3 enabled; at most 2 disabled)"
    # Readers see it too (the approvals page shows it to viewers).
    assert app.get(f"/api/v1/executions/{run['id']}/plan").json()["plan_digest"] == shown["plan_digest"]
    # A trigger the guards suppressed keeps no playbook: nothing to plan, said so (the fuzz test found a 500).
    again = {"labels": {"alertname": "GraphBroken", "graph_name": "a"}, "fingerprint": "fp-a2"}
    assert app.post(WEBHOOK, json=sample_notification(again)).status_code == 200
    [held] = app.get("/api/v1/executions", params={"status": "suppressed"}).json()["items"]
    nothing = app.get(f"/api/v1/executions/{held['id']}/plan")
    assert nothing.status_code == 409 and "no playbook to plan" in nothing.text
    assert (
        app.post(f"/api/v1/executions/{held['id']}/approve", json={"plan_digest": "0" * 16}, headers=ADMIN).status_code
        == 409
    )

    sample_app.client.admin("POST", "/graphs/b/disable")  # the world moves before the approval
    refused = app.post(
        f"/api/v1/executions/{run['id']}/approve", json={"plan_digest": shown["plan_digest"]}, headers=ADMIN
    )
    assert refused.status_code == 409, refused.text
    assert "no longer the one you approved" in refused.text and "2 of 3 enabled" in refused.text
    assert app.get(f"/api/v1/executions/{run['id']}").json()["status"] == "awaiting_approval"

    again = app.get(f"/api/v1/executions/{run['id']}/plan", headers=ADMIN).json()
    assert again["plan_digest"] != shown["plan_digest"]
    approved = app.post(
        f"/api/v1/executions/{run['id']}/approve", json={"plan_digest": again["plan_digest"]}, headers=ADMIN
    )
    assert approved.status_code == 200, approved.text
    wait_for("graph a is disabled", lambda: sample_app.client.graphs()["a"] is False, 15)
    assert app.post(
        f"/api/v1/executions/{run['id']}/approve", json={"plan_digest": "x"}, headers=ADMIN
    ).status_code == (422)


def test_the_console_card_shows_the_change_and_approves_it(app: TestClient, sample_app: SampleApp) -> None:
    run = waiting(app)
    log_in(app, "olga")
    card = app.get("/approvals").text
    assert "The change it would make now" in card
    assert "disable graph a on sample (3 of 3 enabled; at most 2 disabled)" in card
    digest = re.search(r'name="plan_digest" value="([0-9a-f]{16})"', card)
    assert digest, card
    sample_app.client.admin("POST", "/graphs/c/disable")
    token = csrf(app, "/approvals")
    form = {"csrf_token": token, "plan_digest": digest.group(1), "next": "/approvals"}
    refused = app.post(f"/executions/{run['id']}/approve", data=form)
    assert refused.status_code == 409 and "no longer the one you approved" in refused.text
    fresh = re.search(r'name="plan_digest" value="([0-9a-f]{16})"', app.get("/approvals").text)
    assert fresh and fresh.group(1) != digest.group(1)
    form["plan_digest"] = fresh.group(1)
    assert app.post(f"/executions/{run['id']}/approve", data=form).status_code == 200
    wait_for("graph a is disabled", lambda: sample_app.client.graphs()["a"] is False, 15)
