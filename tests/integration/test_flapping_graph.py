"""A flapping graph of the real sample service, on SQLite and PostgreSQL: each fix (disable the graph) is undone right
after (a deploy re-enables it) and the alert fires again. After three runs the loop breaker quarantines the rule for
that graph: the fourth alert runs nothing, one page with the run history goes out, and lifting the quarantine lets
the rule act again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_TOKEN, WEBHOOK
from tests.helpers import console_app, console_users, sample_notification, wait_for
from tests.sample_fixture import SampleApp
from tests.standins.pagerduty import ROUTING_KEY, PagerDutyStandIn

RULES = """
targets:
  - {{name: sample, kind: http, url: "{url}/admin", max_disabled_graphs: 3}}
rules:
  - name: disable-failing-graph
    match: {{alertname: GraphBroken}}
    group_by: [alertname, graph_name]
    playbook: disable
playbooks:
  - name: disable
    steps:
      - action: graph.disable
        with: {{target: sample, graph: "{{{{ alert.labels.graph_name }}}}"}}
"""


@pytest.fixture
def app(
    database_url: str, tmp_path: Path, sample_app: SampleApp, pagerduty_api: PagerDutyStandIn
) -> Iterator[TestClient]:
    with console_app(
        database_url,
        RULES.format(url=sample_app.url),
        tmp_path,
        users=console_users(),
        worker_poll_seconds=0.05,
        pager_poll_seconds=0.05,
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=pagerduty_api.url,
        http_allowed_hosts=["127.0.0.1"],
    ) as client:
        yield client


def episode(app: TestClient, n: int, status: str = "firing") -> None:
    ended = {"endsAt": "2026-11-24T08:30:00Z"} if status == "resolved" else {}
    alert = {"labels": {"alertname": "GraphBroken", "graph_name": "a"}, "fingerprint": f"fp-{n}", "status": status}
    response = app.post(WEBHOOK, json=sample_notification(alert | ended) | {"status": status})
    assert response.status_code == 200, response.text


def runs(app: TestClient) -> list[dict[str, Any]]:
    items = app.get("/api/v1/executions", params={"rule": "disable-failing-graph"}).json()["items"]
    return sorted(items, key=lambda e: e["id"])


def test_a_graph_that_breaks_again_after_each_fix_quarantines_the_rule(
    app: TestClient, sample_app: SampleApp, pagerduty_api: PagerDutyStandIn
) -> None:
    for n in range(3):
        episode(app, n)
        wait_for(f"fix {n + 1} disabled graph a", lambda: sample_app.client.graphs()["a"] is False, 15)
        wait_for("the run ended", lambda: runs(app)[-1]["status"] == "succeeded", 15)
        sample_app.client.admin("POST", "/graphs/a/enable")  # a deploy undoes the fix: it breaks again
        episode(app, n, "resolved")
    episode(app, 3)
    tripped = runs(app)[-1]
    assert (len(runs(app)), tripped["status"], tripped["guard"]) == (4, "suppressed", "loop_breaker")
    page = wait_for("one page with the history", lambda: pagerduty_api.events, 15)
    ids = [r["id"] for r in runs(app)[:3]]
    assert f"#{ids[0]} succeeded, #{ids[1]} succeeded, #{ids[2]} succeeded" in page[0]["payload"]["summary"]
    episode(app, 4)
    assert runs(app)[-1]["guard"] == "quarantined"
    assert sample_app.client.graphs()["a"] is True  # nothing ran after the third fix
    assert len(pagerduty_api.events) == 1

    [held] = app.get("/api/v1/quarantines").json()
    lifted = app.post(f"/api/v1/quarantines/{held['id']}/lift", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert lifted.status_code == 200, lifted.text
    episode(app, 5)
    wait_for("after the lift the rule acts again", lambda: sample_app.client.graphs()["a"] is False, 15)
