"""The postmortem export: GET /api/v1/incidents/{id}/postmortem as Markdown and JSON, and the console's button."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from controlplane.audit import audit
from controlplane.db.engine import write_transaction
from controlplane.db.tables import steps_t
from controlplane.incidents import postmortem
from controlplane.playbooks import ledger
from tests.conftest import ADMIN_TOKEN, AUTH
from tests.helpers import console_app, console_users, log_in, post_alerts, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SCHEMA_FILE = Path(__file__).parents[2] / "docs" / "postmortem.schema.json"

RULES = """
rules:
  - name: careful-restart
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
def app(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    users = console_users(viewer="viewer")
    with console_app(database_url, RULES, tmp_path, users=users, worker_poll_seconds=0.05) as client:
        yield client


def executions(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/api/v1/executions", params=params).json()["items"]
    return items


def firing(fingerprint: str, **labels: str) -> dict[str, Any]:
    return {"fingerprint": fingerprint, "labels": {"alertname": "NeedsApproval", **labels}}


def test_an_incident_with_a_rule_run_exports_its_whole_story(app: TestClient, engine: Engine) -> None:
    (incident_id,) = set(post_alerts(app, firing("fp-a")))
    waiting = wait_for("an execution awaits approval", lambda: executions(app, status="awaiting_approval"), 10)[0]
    post_alerts(app, firing("fp-b", instance="langgraph-9:8000"))  # the same key while one waits: suppressed
    suppressed = wait_for("a suppressed run", lambda: executions(app, status="suppressed"), 10)[0]
    approved = app.post(f"/api/v1/executions/{waiting['id']}/approve", headers=ADMIN, json={"reason": "go"})
    assert approved.status_code == 200, approved.text
    wait_for("the run succeeds", lambda: executions(app, status="succeeded"), 10)
    resolved = {"status": "resolved", "endsAt": "2026-11-24T08:20:00Z"}
    post_alerts(app, {**firing("fp-a"), **resolved}, {**firing("fp-b", instance="langgraph-9:8000"), **resolved})
    with write_transaction(engine) as conn:  # the ledger's sweep, now rather than in 30 s
        assert ledger.settle_due(conn, now=datetime.now(UTC)) == [("careful-restart", "resolved")]
    with write_transaction(engine) as conn:  # a PromQL snapshot, as a prometheus.query step records it
        now = datetime.now(UTC)
        conn.execute(
            insert(steps_t).values(
                execution_id=waiting["id"], phase="forward", index=2, step_id="errors", action="prometheus.query",
                status="succeeded", inputs={"query": "sum(rate(errors_total[5m]))", "reduce": "single"},
                output={"query": "sum(rate(errors_total[5m]))", "reduce": "single", "value": 0.125}, error=None,
                attempts=1, idempotency_key=f"{waiting['id']}:2", started_at=now, finished_at=now, duration_ms=3.0,
            )
        )  # fmt: skip

    md = app.get(f"/api/v1/incidents/{incident_id}/postmortem", params={"format": "md"})
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert f'filename="incident-{incident_id}-postmortem.md"' in md.headers["content-disposition"]
    text = md.text
    assert "## Summary" in text and "## Impact window" in text and "## Root cause" in text and "## Follow-ups" in text
    assert "### Execution 1: rule careful-restart, playbook note — succeeded" in text  # the rule and its run
    assert "incident.annotate" in text and "notify.log" in text and "graph support\\_bot is failing" in text
    assert "| NeedsApproval | resolved | 2026-11-24T08:00:00.123456Z | 2026-11-24T08:20:00Z |" in text  # its times
    assert "| ledger outcome | resolved (" in text
    assert f"suppressed by guard {suppressed['guard']}" in text  # the decision that did not run, and why
    assert "1 of 1: admin" in text  # who approved
    assert "`sum(rate(errors_total[5m]))`" in text and '"value": 0.125' in text  # the PromQL snapshot

    doc = app.get(f"/api/v1/incidents/{incident_id}/postmortem", params={"format": "json"}).json()
    jsonschema_rs.validate(json.loads(SCHEMA_FILE.read_text()), doc)  # the documented schema
    runs = {run["id"]: run for run in doc["executions"]}
    assert runs[suppressed["id"]]["decision"] == "suppressed" and runs[suppressed["id"]]["guard"]
    ran = runs[waiting["id"]]
    assert ran["rule"] == "careful-restart" and ran["approved_by"] == ["admin"]
    assert [s["action"] for s in ran["steps"]] == ["incident.annotate", "notify.log", "prometheus.query"]
    assert doc["promql_snapshots"][0]["query"] == "sum(rate(errors_total[5m]))"
    assert doc["alert_summary"] == {"total": 2, "firing": 0, "resolved": 2, "listed": 2, "truncated": False}
    assert doc["incident"]["status"] == "resolved" and doc["impact"]["duration_seconds"] > 0
    assert ran["outcome"] == "resolved" and doc["outcome"]["counts"] == {"resolved": 1}
    times = [item["at"] for item in doc["timeline"]]
    assert times == sorted(times)
    kinds = {item["kind"] for item in doc["timeline"]}
    assert {"alert_fired", "alert_resolved", "rule_decision", "execution", "event"} <= kinds
    assert doc["root_cause"] == "" and doc["follow_ups"] == []


def test_a_storm_incident_is_bounded(app: TestClient) -> None:
    (incident_id,) = set(post_alerts(app, *({"fingerprint": f"fp-storm-{n}"} for n in range(500))))
    doc = app.get(f"/api/v1/incidents/{incident_id}/postmortem", params={"format": "json"}).json()
    assert doc["alert_summary"]["total"] == 500 and doc["alert_summary"]["truncated"]
    assert len(doc["alerts"]) == postmortem.ALERTS_LISTED
    text = app.get(f"/api/v1/incidents/{incident_id}/postmortem").text
    assert "500 alerts: 500 firing, 0 resolved." in text
    assert f"The first {postmortem.ALERTS_LISTED} (oldest first) are listed" in text
    assert text.count("| LangGraphHighErrorRate |") == postmortem.ALERTS_LISTED


def test_hostile_label_text_is_escaped(app: TestClient) -> None:
    hostile = "a|b `code` <img src=x onerror=alert(1)>\n| injected | row |\n# heading [link](http://evil)"
    (incident_id,) = set(post_alerts(app, {"fingerprint": "fp-hostile", "labels": {"graph_name": hostile}}))
    text = app.get(f"/api/v1/incidents/{incident_id}/postmortem").text
    alert_rows = [line for line in text.splitlines() if line.startswith("| LangGraphHighErrorRate |")]
    assert len(alert_rows) == 1  # the newline did not start a row of its own
    row = alert_rows[0]
    assert row.count("|") - row.count("\\|") == 6  # five cells: the label's pipes are escaped
    assert "\\`code\\`" in row and "\\<img" in row and "\\[link\\]" in row
    assert "<img" not in text.replace("\\<img", "") and "\n# heading" not in text
    assert "\n| injected" not in text


def test_a_waits_polls_fold_into_one_line(app: TestClient, engine: Engine) -> None:
    (incident_id,) = set(post_alerts(app, {"fingerprint": "fp-one"}))
    with write_transaction(engine) as conn:
        for minute in range(3):
            reason = f"waiting for the incident to resolve until 09:{minute:02d}"
            at = datetime(2026, 11, 24, 9, minute, tzinfo=UTC)
            audit(
                conn,
                actor="rule:r",
                action="execution.waiting",
                incident_id=incident_id,
                detail={"reason": reason},
                now=at,
            )
        audit(conn, actor="bob", action="incident.note", incident_id=incident_id, detail={"text": "looking"}, now=at)
    doc = app.get(f"/api/v1/incidents/{incident_id}/postmortem", params={"format": "json"}).json()
    waits = [item for item in doc["timeline"] if item["action"] == "execution.waiting"]
    assert [(w["count"], w["at"]) for w in waits] == [(3, "2026-11-24T09:00:00Z")]
    text = app.get(f"/api/v1/incidents/{incident_id}/postmortem").text
    assert "| event execution.waiting, 3 times | rule:r |" in text and "| bob | looking |" in text


def test_unknown_incident_bad_format_and_credentials(app: TestClient) -> None:
    (incident_id,) = set(post_alerts(app, {"fingerprint": "fp-one"}))
    missing = app.get("/api/v1/incidents/999999/postmortem")
    assert missing.status_code == 404 and "999999" in missing.json()["error"]
    bad = app.get(f"/api/v1/incidents/{incident_id}/postmortem", params={"format": "pdf"})
    assert bad.status_code == 422 and "'md' or 'json'" in bad.json()["detail"][0]["msg"]
    anonymous = app.get(f"/api/v1/incidents/{incident_id}/postmortem", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert app.get(f"/api/v1/incidents/{incident_id}/postmortem", headers=AUTH).status_code == 200


def test_the_console_incident_page_downloads_the_markdown(app: TestClient) -> None:
    (incident_id,) = set(post_alerts(app, {"fingerprint": "fp-one"}))
    log_in(app, "viewer")
    page = app.get(f"/incidents/{incident_id}", headers={"Authorization": ""}).text
    link = f'href="/api/v1/incidents/{incident_id}/postmortem?format=md"'
    assert link in page and "Download postmortem" in page
    download = app.get(f"/api/v1/incidents/{incident_id}/postmortem?format=md", headers={"Authorization": ""})
    assert download.status_code == 200 and download.text.startswith(f"# Postmortem: incident #{incident_id}")


def test_the_documented_json_schema_is_current() -> None:
    """docs/postmortem.schema.json is what the JSON format validates against: regenerate it when the model moves."""
    written = json.loads(SCHEMA_FILE.read_text())
    assert written == postmortem.json_schema(), "run: python -m controlplane.incidents.postmortem > " + str(SCHEMA_FILE)
