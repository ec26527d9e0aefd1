"""What the automation did, as an on-call person sees it through the API, the console and /metrics, on SQLite and
PostgreSQL: a failed run marks its incident `failed` (and the list filters to it), an alert no rule matched says
so, the ledger and the pages are counted, and a quarantine is shown and lifted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_TOKEN, WEBHOOK
from tests.helpers import console_app, console_users, csrf, log_in, sample_notification, wait_for

# Prometheus is not running: the playbook's first step fails at once, as in the first try.
RULES = """
rules:
  - name: fix-errors
    match: {alertname: LangGraphHighErrorRate}
    playbook: query-first
    guards: {loop_breaker: {runs: 1, within: 1h}}
playbooks:
  - name: query-first
    steps:
      - action: prometheus.query
        with: {query: up}
"""


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    users = console_users(olga="operator", vera="viewer")
    with console_app(database_url, RULES, tmp_path, users=users, pager_poll_seconds=0.05) as client:
        yield client


def fire(client: TestClient, fingerprint: str, **labels: str) -> int:
    response = client.post(WEBHOOK, json=sample_notification({"fingerprint": fingerprint, "labels": labels}))
    assert response.status_code == 200, response.text
    [incident_id] = response.json()["incident_ids"]
    return int(incident_id)


def incident(client: TestClient, incident_id: int) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/incidents/{incident_id}").json()
    return body


def test_a_failed_run_marks_its_incident_and_is_counted(client: TestClient) -> None:
    failed = fire(client, "fp-1")
    unmatched = fire(client, "fp-2", alertname="DiskAlmostFull")
    wait_for("the run failed", lambda: incident(client, failed)["automation"] == "failed", 20)
    assert incident(client, unmatched)["automation"] == "no_rule_matched"

    listed = client.get("/api/v1/incidents", params={"automation": "failed"}).json()["items"]
    assert [i["id"] for i in listed] == [failed]
    assert client.get("/api/v1/incidents", params={"automation": "bogus"}).status_code == 422

    log_in(client, "vera")
    page = client.get("/incidents", params={"automation": "failed"}).text
    assert f'href="/incidents/{failed}"' in page and f'href="/incidents/{unmatched}"' not in page
    assert "automation failed" in page
    assert "no rule matched" in client.get("/incidents").text

    [day, week] = client.get("/api/v1/rules/outcomes").json()
    assert (day["rule"], day["period"], day["counts"]["failed"], day["success_rate"]) == ("fix-errors", "24h", 1, 0.0)
    assert week["period"] == "7d" and week["counts"] == day["counts"]
    rules_page = client.get("/rules").text
    assert "0% resolved" in rules_page and "1 failed" in rules_page

    def metrics() -> str | None:
        text = client.get("/metrics").text
        return text if 'controlplane_pages_total{kind="execution_failed",outcome="log"} 1.0' in text else None

    text = wait_for("the page was sent (to the log: no PagerDuty or Slack here)", metrics, 20)
    assert 'controlplane_remediation_outcomes_total{outcome="failed",rule="fix-errors"} 1.0' in text
    assert "paged nobody: the page went to the service log only" in client.get(f"/incidents/{failed}").text


def test_a_quarantine_is_shown_and_lifted(client: TestClient) -> None:
    first = fire(client, "fp-1")
    wait_for("the first run failed", lambda: incident(client, first)["automation"] == "failed", 20)
    resolved = sample_notification({"fingerprint": "fp-1", "status": "resolved", "endsAt": "2026-11-24T08:10:00Z"})
    assert client.post(WEBHOOK, json=resolved).status_code == 200
    second = fire(client, "fp-3")  # the same key again: one run without a lasting fix is the limit
    assert incident(client, second)["automation"] == "quarantined"
    [held] = client.get("/api/v1/quarantines").json()
    assert (held["rule_name"], held["runs"]) == ("fix-errors", [1])
    assert "loop breaker: 1 run for" in held["reason"]

    log_in(client, "vera")  # a viewer sees it, but has no button
    assert "Rule fix-errors is quarantined" in client.get(f"/incidents/{second}").text
    refused = client.post(f"/quarantines/{held['id']}/lift", data={"csrf_token": csrf(client, "/rules")})
    assert refused.status_code == 403

    log_in(client, "olga")
    assert "Lift quarantine" in client.get(f"/incidents/{second}").text
    lifted = client.post(
        f"/quarantines/{held['id']}/lift",
        data={"csrf_token": csrf(client, "/rules"), "reason": "the graph is fixed", "next": f"/incidents/{second}"},
    )
    assert lifted.status_code == 200 and "lifted" in lifted.text
    assert client.get("/api/v1/quarantines").json() == []
    timeline = [e["action"] for e in incident(client, second)["timeline"]]
    assert "rule.quarantined" in timeline and "rule.quarantine_lifted" in timeline

    again = client.post(f"/api/v1/quarantines/{held['id']}/lift", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert again.status_code == 409 and "lifted already" in again.text
    assert client.post(f"/api/v1/quarantines/{held['id']}/lift").status_code == 401  # the read token may not
