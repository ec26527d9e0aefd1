"""Dashboards and alerting rules served over HTTP, and `controlplane provision grafana` against the stand-in.

Each test builds its own rules dir with sibling `dashboards/` and `alerting/`, so nothing here
depends on the files the repository ships.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from controlplane import grafana
from controlplane.app import create_app
from controlplane.cli import main
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR
from tests.conftest import AUTH, make_settings, require_binary
from tests.prometheus_server import free_port
from tests.standins.grafana import GrafanaStandIn

GRAFANA_TOKEN = "glsa_test-service-account-token"


def dashboard(uid: str, title: str, tags: list[str]) -> dict[str, Any]:
    """A dashboard as Grafana exports it, picking its datasource through the `${datasource}` variable."""
    return {
        "id": 7,  # an id from the Grafana it was exported from: provisioning must not send it
        "uid": uid,
        "title": title,
        "tags": tags,
        "schemaVersion": 39,
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": [
            {
                "id": 1,
                "type": "timeseries",
                "title": "Execution rate",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "targets": [{"expr": "sum(rate(langgraph_executions_total[5m]))", "refId": "A"}],
            }
        ],
    }


FLEET_RULES = """\
groups:
  - name: langgraph
    rules:
      - alert: LangGraphHighErrorRate
        expr: |
          sum by (namespace) (rate(langgraph_executions_total{status="error"}[5m]))
            / sum by (namespace) (rate(langgraph_executions_total[5m])) > 0.05
        for: 2m
        labels: {severity: critical}
        annotations: {summary: "Error rate above 5%"}
"""
SELF_RULES = """\
groups:
  - name: controlplane
    rules:
      - alert: ControlPlaneDown
        expr: up{job="controlplane"} == 0
        for: 1m
        labels: {severity: critical}
"""
PROMTOOL_TEST = """\
rule_files: [langgraph.yaml]
tests:
  - interval: 1m
    input_series: []
    alert_rule_test: []
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """tmp/rules with tmp/dashboards (two dashboards, one broken file) and tmp/alerting beside it."""
    (tmp_path / "rules").mkdir()
    boards = tmp_path / "dashboards"
    boards.mkdir()
    (boards / "langgraph-fleet.json").write_text(
        json.dumps(dashboard("langgraph-fleet", "LangGraph Production Monitoring", ["langgraph"]), indent=2)
    )
    (boards / "controlplane.json").write_text(json.dumps(dashboard("controlplane", "Control plane", [])))
    (boards / "broken.json").write_text('{"title": "no uid"}')
    alerting = tmp_path / "alerting"
    alerting.mkdir()
    (alerting / "langgraph.yaml").write_text(FLEET_RULES)
    (alerting / "controlplane.yml").write_text(SELF_RULES)
    (alerting / "langgraph_test.yaml").write_text(PROMTOOL_TEST)
    return tmp_path / "rules"


@pytest.fixture
def client(rules_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(f"sqlite:///{tmp_path}/cp.db", rules_dir=rules_dir)
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


# -- serving ------------------------------------------------------------------------------------


def test_dashboards_are_listed_from_beside_the_rules_dir(client: TestClient) -> None:
    answer = client.get("/api/v1/dashboards")
    assert answer.status_code == 200
    # Sorted by file; broken.json (no uid) is left out rather than failing the list.
    assert answer.json() == [
        {"uid": "controlplane", "title": "Control plane", "file": "controlplane.json", "tags": []},
        {
            "uid": "langgraph-fleet",
            "title": "LangGraph Production Monitoring",
            "file": "langgraph-fleet.json",
            "tags": ["langgraph"],
        },
    ]


def test_a_dashboard_is_served_byte_for_byte(client: TestClient, rules_dir: Path) -> None:
    answer = client.get("/api/v1/dashboards/langgraph-fleet")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.content == (rules_dir.parent / "dashboards" / "langgraph-fleet.json").read_bytes()
    # Saved under its file's name by a browser's download and `curl -OJ`, not as "langgraph-fleet".
    assert answer.headers["content-disposition"] == 'attachment; filename="langgraph-fleet.json"'


def test_a_dashboard_file_name_cannot_break_the_header(client: TestClient, rules_dir: Path) -> None:
    name = 'ops "q3"\nX-Injected: 1 ü.json'
    (rules_dir.parent / "dashboards" / name).write_text(json.dumps(dashboard("odd", "Odd name", [])))
    answer = client.get("/api/v1/dashboards/odd")
    assert answer.status_code == 200 and "x-injected" not in answer.headers
    assert answer.headers["content-disposition"] == (
        'attachment; filename="ops__q3__X-Injected__1__.json"; '
        "filename*=UTF-8''ops%20%22q3%22%0AX-Injected%3A%201%20%C3%BC.json"
    )


def test_an_unknown_dashboard_is_404(client: TestClient) -> None:
    answer = client.get("/api/v1/dashboards/nope")
    assert answer.status_code == 404
    assert answer.json() == {"error": "no dashboard with uid 'nope'"}


def test_without_dashboards_or_alerting_the_lists_are_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing beside the rules dir and no packaged copy: nothing to serve, and no error.
    monkeypatch.setattr(grafana, "DEFAULTS_DIR", tmp_path / "no-defaults")
    (tmp_path / "rules").mkdir()
    settings = make_settings(f"sqlite:///{tmp_path}/cp.db", rules_dir=tmp_path / "rules")
    with TestClient(create_app(settings), headers=AUTH) as client:
        assert client.get("/api/v1/dashboards").json() == []
        assert client.get("/api/v1/dashboards/langgraph-fleet").status_code == 404
        rules = client.get("/api/v1/alerting/rules")
        assert rules.status_code == 200
        assert yaml.safe_load(rules.text) == {"groups": []}


def test_the_packaged_copy_is_the_fallback(tmp_path: Path) -> None:
    rules = tmp_path / "etc" / "rules"
    assert grafana.shipped_dir(rules, "dashboards") == DEFAULTS_DIR / "dashboards"
    (rules.parent / "dashboards").mkdir(parents=True)
    assert grafana.shipped_dir(rules, "dashboards") == rules.parent / "dashboards"  # beside the rules wins


def test_alerting_rules_are_merged_into_one_file_prometheus_loads(client: TestClient, tmp_path: Path) -> None:
    answer = client.get("/api/v1/alerting/rules")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/yaml"
    assert answer.headers["content-disposition"] == 'attachment; filename="controlplane.rules.yaml"'
    merged = yaml.safe_load(answer.text)
    # Files in name order; the promtool test file beside them is not a rule file.
    assert [g["name"] for g in merged["groups"]] == ["controlplane", "langgraph"]
    assert merged["groups"][1] == yaml.safe_load(FLEET_RULES)["groups"][0]
    assert "expr: |" in answer.text  # multi-line PromQL stays readable
    out = tmp_path / "merged.yaml"
    out.write_text(answer.text)
    checked = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(out)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 2 rules found" in checked.stdout


RUNBOOK_RULES = """\
groups:
  - name: runbooks
    rules:
      - alert: Shipped
        expr: up == 0
        annotations:
          runbook_url: '${CONTROLPLANE_PUBLIC_URL}/runbooks/RUNBOOKS.md#shipped'
          description: 'see ${CONTROLPLANE_PUBLIC_URL}/incidents'
      - alert: Own
        expr: up == 0
        annotations: {runbook_url: 'https://wiki.example/runbooks/own'}
"""


def runbook_annotations(text: str) -> dict[str, dict[str, str]]:
    groups = yaml.safe_load(text)["groups"]
    return {r["alert"]: r["annotations"] for g in groups if g["name"] == "runbooks" for r in g["rules"]}


def test_the_rules_link_the_runbooks_under_the_public_url(rules_dir: Path, tmp_path: Path) -> None:
    (rules_dir.parent / "alerting" / "runbooks.yaml").write_text(RUNBOOK_RULES)
    settings = make_settings(f"sqlite:///{tmp_path}/cp.db", rules_dir=rules_dir, public_url="https://ops.example/cp/")
    with TestClient(create_app(settings), headers=AUTH) as client:
        answer = client.get("/api/v1/alerting/rules")
    assert answer.status_code == 200
    assert runbook_annotations(answer.text) == {
        "Shipped": {
            "runbook_url": "https://ops.example/cp/runbooks/RUNBOOKS.md#shipped",
            "description": "see https://ops.example/cp/incidents",
        },
        "Own": {"runbook_url": "https://wiki.example/runbooks/own"},  # a team's own link, as it is
    }
    assert "CONTROLPLANE_PUBLIC_URL" not in answer.text


def test_without_a_public_url_the_placeholder_stays_and_the_file_says_so(client: TestClient, rules_dir: Path) -> None:
    (rules_dir.parent / "alerting" / "runbooks.yaml").write_text(RUNBOOK_RULES)
    answer = client.get("/api/v1/alerting/rules")
    assert answer.status_code == 200
    shipped = runbook_annotations(answer.text)["Shipped"]
    assert shipped["runbook_url"] == "${CONTROLPLANE_PUBLIC_URL}/runbooks/RUNBOOKS.md#shipped"
    assert "# 2 annotations keep ${CONTROLPLANE_PUBLIC_URL}: set CONTROLPLANE_PUBLIC_URL" in answer.text


def test_a_group_defined_twice_is_refused_naming_the_file(client: TestClient, rules_dir: Path) -> None:
    (rules_dir.parent / "alerting" / "more.yaml").write_text(SELF_RULES)
    answer = client.get("/api/v1/alerting/rules")
    assert answer.status_code == 500
    assert answer.json() == {"error": "alerting/more.yaml: group 'controlplane' is already defined in controlplane.yml"}


# -- provision grafana ----------------------------------------------------------------------------


@pytest.fixture
def grafana_standin() -> Iterator[GrafanaStandIn]:
    standin = GrafanaStandIn(GRAFANA_TOKEN).start()
    yield standin
    standin.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "grafana-token"
    path.write_text(GRAFANA_TOKEN + "\n")
    return path


@pytest.fixture
def good_dashboards(rules_dir: Path) -> Path:
    directory = rules_dir.parent / "dashboards"
    (directory / "broken.json").unlink()
    return directory


def provision(url: str, token_file: Path, directory: Path, *extra: str) -> int:
    args = ["provision", "grafana", "--url", url, "--token-file", str(token_file), "--dir", str(directory)]
    return main([*args, *extra])


def test_provision_creates_then_updates_in_place(
    grafana_standin: GrafanaStandIn, token_file: Path, good_dashboards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert provision(grafana_standin.url, token_file, good_dashboards, "--folder-uid", "langgraph") == 0
    out = capsys.readouterr().out
    assert f"ok     langgraph-fleet.json (langgraph-fleet): {grafana_standin.url}/d/langgraph-fleet/" in out
    assert "(version 1)" in out
    first = grafana_standin.requests[0]
    assert first.authorization == f"Bearer {GRAFANA_TOKEN}"
    assert first.body["dashboard"]["id"] is None  # the exported id 7 is not sent
    assert first.body["dashboard"]["uid"] == "controlplane"
    assert {k: v for k, v in first.body.items() if k != "dashboard"} == {
        "overwrite": True,
        "folderUid": "langgraph",
        "message": "provisioned by controlplane",
    }
    fleet = grafana_standin.dashboards["langgraph-fleet"]
    assert fleet.dashboard["templating"] == dashboard("x", "x", [])["templating"]

    # A second run updates the same dashboards (same uid, same Grafana id), not copies.
    assert provision(grafana_standin.url, token_file, good_dashboards) == 0
    assert sorted(grafana_standin.dashboards) == ["controlplane", "langgraph-fleet"]
    assert grafana_standin.dashboards["langgraph-fleet"].version == 2
    assert grafana_standin.dashboards["langgraph-fleet"].id == fleet.id
    assert "(version 2)" in capsys.readouterr().out


def test_a_wrong_token_fails_with_grafanas_message(
    grafana_standin: GrafanaStandIn, tmp_path: Path, good_dashboards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("glsa_not-the-token")
    assert provision(grafana_standin.url, wrong, good_dashboards) == 1
    err = capsys.readouterr().err
    assert "FAILED controlplane.json (controlplane): HTTP 401: Unauthorized" in err
    assert len(grafana_standin.requests) == 2  # a 401 is not retried
    assert grafana_standin.dashboards == {}


def test_a_5xx_is_retried(
    grafana_standin: GrafanaStandIn, token_file: Path, good_dashboards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana_standin.fail_next(2, 503)
    assert provision(grafana_standin.url, token_file, good_dashboards) == 0
    assert [r.status for r in grafana_standin.requests] == [503, 503, 200, 200]
    assert capsys.readouterr().err == ""


def test_a_5xx_that_persists_fails_after_a_few_tries(
    grafana_standin: GrafanaStandIn, token_file: Path, good_dashboards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana_standin.fail_next(4, 500)
    assert provision(grafana_standin.url, token_file, good_dashboards) == 1
    # The first dashboard used up its four tries; the next one still went through.
    assert [r.status for r in grafana_standin.requests] == [500, 500, 500, 500, 200]
    assert "FAILED controlplane.json (controlplane): HTTP 500: Internal Server Error" in capsys.readouterr().err
    assert list(grafana_standin.dashboards) == ["langgraph-fleet"]


def test_a_broken_file_fails_the_run_but_not_the_others(
    grafana_standin: GrafanaStandIn, token_file: Path, rules_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert provision(grafana_standin.url, token_file, rules_dir.parent / "dashboards") == 1
    assert "FAILED broken.json: dashboard has no uid" in capsys.readouterr().err
    assert sorted(grafana_standin.dashboards) == ["controlplane", "langgraph-fleet"]


def test_unreachable_grafana_missing_token_and_empty_dir(
    token_file: Path, good_dashboards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (good_dashboards / "controlplane.json").unlink()  # one dashboard: its retries take ~2 s
    assert provision(f"http://127.0.0.1:{free_port()}", token_file, good_dashboards) == 1
    assert "FAILED langgraph-fleet.json (langgraph-fleet): Grafana unreachable" in capsys.readouterr().err
    assert provision("http://127.0.0.1:9", tmp_path / "missing", good_dashboards) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert provision("http://127.0.0.1:9", token_file, empty) == 1
    assert "no dashboards (*.json) in" in capsys.readouterr().err


def test_the_stand_in_refuses_a_stale_save_as_grafana_does(grafana_standin: GrafanaStandIn) -> None:
    """Without overwrite, a save over an existing uid is a version mismatch (412); the client relays its words."""
    headers = {"Authorization": f"Bearer {GRAFANA_TOKEN}"}
    body = {"dashboard": {"uid": "a", "title": "A", "id": None}, "overwrite": False}
    assert httpx.post(f"{grafana_standin.url}/api/dashboards/db", json=body, headers=headers).status_code == 200
    again = httpx.post(f"{grafana_standin.url}/api/dashboards/db", json=body, headers=headers)
    assert again.status_code == 412
    assert grafana._grafana_message(again) == (
        "HTTP 412: The dashboard has been changed by someone else (version-mismatch)"
    )


def test_the_console_script_exits_non_zero_on_failure(
    grafana_standin: GrafanaStandIn, token_file: Path, good_dashboards: Path
) -> None:
    command = [sys.executable, "-m", "controlplane", "provision", "grafana", "--token-file", str(token_file)]
    command += ["--url", grafana_standin.url, "--dir", str(good_dashboards)]
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    grafana_standin.token = "rotated"
    assert subprocess.run(command, capture_output=True, check=False).returncode == 1
