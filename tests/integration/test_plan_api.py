"""`POST /api/v1/rules/{rule}/plan` on SQLite and PostgreSQL: the plan of a rule for an alert or an incident,
read from the sample service, with nothing written and no request that changes it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from controlplane.actions.builtin import build_registry
from controlplane.app import create_app
from controlplane.cli import main
from controlplane.db.engine import make_engine
from controlplane.rules.loader import load_rules
from tests.conftest import ADMIN_TOKEN, TOKEN, count_rows, make_settings
from tests.helpers import post_alert
from tests.sample_fixture import SampleApp

RULES = """\
targets:
  - {{name: default, kind: http, url: "{url}"}}
rules:
  - name: graph-failing
    enabled: false  # planned before it is armed
    match: {{alertname: GraphFailing}}
    playbook: disable-graph
playbooks:
  - name: disable-graph
    steps:
      - id: storage
        action: storage.check
      - action: graph.disable
        with: {{graph: "{{{{ alert.labels.graph }}}}"}}
      - action: notify.log
        with: {{text: "disabled {{{{ alert.labels.graph }}}} while {{{{ steps.storage.value }}}} is active"}}
"""
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def service(database_url: str, sample_app: SampleApp, tmp_path: Path) -> Iterator[TestClient]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "sample.yaml").write_text(RULES.format(url=f"{sample_app.url}/admin"))
    load_rules(rules_dir, build_registry())
    settings = make_settings(database_url, rules_dir=rules_dir)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_plan_for_an_alert_and_for_an_incident(service: TestClient, sample_app: SampleApp, database_url: str) -> None:
    body = {"labels": {"alertname": "GraphFailing", "graph": "a"}}
    answer = service.post("/api/v1/rules/graph-failing/plan", json=body, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    planned = answer.json()
    assert (planned["rule"], planned["playbook"], planned["refused"], planned["stopped"]) == (
        "graph-failing",
        "disable-graph",
        False,
        None,
    )
    assert planned["matches"] is False  # disabled: it would not act until enabled
    assert [s["sentence"] for s in planned["steps"]] == [
        "step 1: check checkpoint storage on default: primary active, unhealthy: none",
        "step 2: disable graph a on default (3 of 3 enabled; at most 1 disabled)",
        "step 3: write to the service log (info): disabled a while primary is active",
    ]
    assert planned["steps"][1]["plan"]["change"]["disabled_after"] == ["a"]
    assert sample_app.client.graphs() == {"a": True, "b": True, "c": True}
    assert sample_app.client.idempotency() == {}

    [incident_id] = post_alert(service, alertname="GraphFailing", graph="b")
    engine: Engine = make_engine(database_url)
    try:
        audit_rows = count_rows(engine, "audit_events")
        by_incident = service.post("/api/v1/rules/graph-failing/plan", json={"incident_id": incident_id}, headers=ADMIN)
        assert by_incident.status_code == 200, by_incident.text
        assert by_incident.json()["steps"][1]["sentence"] == (
            "step 2: disable graph b on default (3 of 3 enabled; at most 1 disabled)"
        )
        # The plan wrote nothing: no execution, no step, no audit row.
        assert count_rows(engine, "executions") == 0 and count_rows(engine, "execution_steps") == 0
        assert count_rows(engine, "audit_events") == audit_rows
    finally:
        engine.dispose()
    assert sample_app.client.graphs() == {"a": True, "b": True, "c": True}


def test_plan_needs_the_admin_token_a_known_rule_and_one_subject(service: TestClient) -> None:
    body = {"labels": {"alertname": "GraphFailing", "graph": "a"}}
    assert service.post("/api/v1/rules/graph-failing/plan", json=body).status_code == 401  # the read token
    missing = service.post("/api/v1/rules/nope/plan", json=body, headers=ADMIN)
    assert missing.status_code == 404 and "no rule 'nope'" in missing.text
    both = {**body, "incident_id": 1}
    assert service.post("/api/v1/rules/graph-failing/plan", json=both, headers=ADMIN).status_code == 422
    assert service.post("/api/v1/rules/graph-failing/plan", json={}, headers=ADMIN).status_code == 422
    gone = service.post("/api/v1/rules/graph-failing/plan", json={"incident_id": 999}, headers=ADMIN)
    assert gone.status_code == 404


def test_the_plan_command_prints_the_steps_and_fails_on_a_refusal(
    sample_app: SampleApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "sample.yaml").write_text(RULES.format(url=f"{sample_app.url}/admin"))
    monkeypatch.setenv("CONTROLPLANE_DATABASE_URL", f"sqlite:///{tmp_path}/cp.db")
    monkeypatch.setenv("CONTROLPLANE_RULES_DIR", str(rules_dir))
    assert main(["plan", "graph-failing", "--labels", "alertname=GraphFailing", "graph=a"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "rule graph-failing, playbook disable-graph:",
        "  (the rule in force would not act on these labels: it does not match them or is disabled)",
        "  step 1: check checkpoint storage on default: primary active, unhealthy: none",
        "  step 2: disable graph a on default (3 of 3 enabled; at most 1 disabled)",
        "  step 3: write to the service log (info): disabled a while primary is active",
    ]
    # With graph a disabled already, disabling b would exceed max_disabled_graphs 1: exit 1, and why.
    sample_app.client.admin("POST", "/graphs/a/disable")
    assert main(["plan", "graph-failing", "--json", "--labels", "alertname=GraphFailing", "graph=b"]) == 1
    planned = json.loads(capsys.readouterr().out)
    assert planned["refused"] and planned["steps"][1]["status"] == "refused"
    assert "max_disabled_graphs of 1" in planned["stopped"]
    assert sample_app.client.graphs() == {"a": False, "b": True, "c": True}
    assert main(["plan", "nope", "--labels", "a=b"]) == 2
    assert "no rule 'nope'" in capsys.readouterr().err
