"""Shadow mode through the service, on SQLite and PostgreSQL: a `mode: shadow` rule matches, its guards decide as if
it were live, each run records what it would have done (its plan, read from the real sample service), and nothing
changes: no mutating request reaches the target, no page goes out. Switching it to live is one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_TOKEN, WEBHOOK
from tests.helpers import console_app, console_users, log_in, sample_notification, wait_for
from tests.sample_fixture import SampleApp
from tests.standins.pagerduty import ROUTING_KEY, PagerDutyStandIn

RULES = """
targets:
  - {{name: sample, kind: http, url: "{url}/admin", max_disabled_graphs: 1}}
rules:
  - name: disable-failing-graph
    mode: {mode}
    match: {{alertname: GraphBroken}}
    group_by: [alertname, graph_name]
    playbook: disable
    guards: {{cooldown: 1h}}
playbooks:
  - name: disable
    steps:
      - action: graph.disable
        with: {{target: sample, graph: "{{{{ alert.labels.graph_name }}}}"}}
      - action: notify.oncall
        with: {{text: "disabled {{{{ alert.labels.graph_name }}}}"}}
"""


@pytest.fixture
def app(
    database_url: str, tmp_path: Path, sample_app: SampleApp, pagerduty_api: PagerDutyStandIn
) -> Iterator[TestClient]:
    with console_app(
        database_url,
        RULES.format(url=sample_app.url, mode="shadow"),
        tmp_path,
        users=console_users(vera="viewer"),
        worker_poll_seconds=0.05,
        pager_poll_seconds=0.05,
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=pagerduty_api.url,
        http_allowed_hosts=["127.0.0.1"],
    ) as client:
        yield client


def fire(app: TestClient, graph: str, fingerprint: str) -> int:
    alert = {"labels": {"alertname": "GraphBroken", "graph_name": graph}, "fingerprint": fingerprint}
    response = app.post(WEBHOOK, json=sample_notification(alert))
    assert response.status_code == 200, response.text
    [incident_id] = response.json()["incident_ids"]
    return int(incident_id)


def executions(app: TestClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = app.get("/api/v1/executions", params={"rule": "disable-failing-graph"}).json()[
        "items"
    ]
    return sorted(items, key=lambda e: e["id"])


def test_a_shadow_rule_plans_decides_and_changes_nothing(
    app: TestClient, sample_app: SampleApp, pagerduty_api: PagerDutyStandIn, tmp_path: Path
) -> None:
    keys_before = sample_app.client.idempotency()
    fire(app, "a", "fp-1")
    wait_for("the shadow run finished", lambda: executions(app)[0]["status"] == "dry_run", 15)
    fire(app, "a", "fp-2")  # the same key within the cooldown: a live rule would be suppressed
    first, second = executions(app)
    assert (first["dry_run"], second["status"], second["guard"]) == (True, "suppressed", "cooldown")
    detail = app.get(f"/api/v1/executions/{first['id']}").json()
    disable = detail["steps"][0]
    assert disable["output"]["plan"]["sentence"] == "disable graph a on sample (3 of 3 enabled; at most 1 disabled)"
    assert detail["summary"].startswith("Shadow run, nothing was changed: would disable graph a on sample")
    [created] = [e for e in detail["timeline"] if e["action"] == "execution.created"]
    assert created["detail"]["reason"] == "shadow rule: actions are planned, not called"

    # Nothing changed: no mutating request reached the sample service, no page went out.
    assert sample_app.client.graphs() == {"a": True, "b": True, "c": True}
    assert sample_app.client.idempotency() == keys_before
    assert pagerduty_api.events == []

    log_in(app, "vera")
    rules_page = app.get("/rules").text
    assert "shadow" in rules_page and "2 shadow runs</b> since the last reload: 1 cooldown, 1 would run" in rules_page

    # Live is one line: the same alert now disables the graph.
    rules_file = tmp_path / "rules" / "test.yaml"
    rules_file.write_text(rules_file.read_text().replace("mode: shadow", "mode: live"))
    assert app.post("/api/v1/rules/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    fire(app, "b", "fp-3")
    wait_for("the live run disabled graph b", lambda: sample_app.client.graphs()["b"] is False, 15)
