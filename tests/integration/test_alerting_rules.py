"""The Prometheus alerting rules in alerting/: promtool accepts them and their unit tests pass, every alert
carries what on-call needs and has a firing and a quiet test, and `controlplane check` catches bad files."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.actions.builtin import build_registry
from controlplane.checks import REQUIRED_ANNOTATIONS, check_alert_rules
from controlplane.cli import main
from controlplane.rules.loader import load_rules
from tests.conftest import RULES, require_binary

ALERTING = RULES.parent / "alerting"
RULE_FILES = sorted(ALERTING.glob("*.rules.yaml"))
TEST_FILES = sorted((ALERTING / "tests").glob("*.yaml"))
# LangGraphNoExecutions has no remediation: nothing to restart when traffic stops arriving.
REMEDIATED = [
    "LangGraphHighErrorRate",
    "LangGraphHighLatency",
    "LangGraphCheckpointFailures",
    "LangGraphDatabaseConnectionsHigh",
    "LangGraphResourceExhaustion",
    "LLMProviderErrors",
    "LLMQuotaExhausted",
    "LLMTokenSpike",
    "LangGraphAgentLoop",
    "LangGraphDependencyDown",
    "LangGraphDependenciesDown",
]
# The dead man's switch: always firing by design (severity none), so it has no quiet case.
WATCHDOG = "Watchdog"


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
def test_promtool_accepts_the_rule_files() -> None:
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    for count in (6, 7, 14, 2):  # langgraph, llm, controlplane, degradation
        assert f"SUCCESS: {count} rules found" in result.stdout


@pytest.mark.slow
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *TEST_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)


def test_every_alert_has_severity_and_the_three_annotations() -> None:
    found = alerts()
    assert {rule["alert"] for rule in found} >= {*REMEDIATED, "LangGraphNoExecutions"}
    for rule in found:
        allowed = {"none"} if rule["alert"] == WATCHDOG else {"critical", "warning"}
        assert rule["labels"]["severity"] in allowed, rule["alert"]
        for key in REQUIRED_ANNOTATIONS:
            assert str(rule.get("annotations", {}).get(key, "")).strip(), f"{rule['alert']}: no {key}"
        anchor = rule["alert"].lower()
        # The section of the runbook the control plane serves, under its public URL (controlplane/runbooks.py).
        assert rule["annotations"]["runbook_url"] == f"${{CONTROLPLANE_PUBLIC_URL}}/runbooks/RUNBOOKS.md#{anchor}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts no unit test sees firing"
    assert names - quiet == {WATCHDOG}, "alerts no unit test sees staying quiet"


def test_the_default_remediation_rules_match_the_langgraph_alerts() -> None:
    """The default rules key on these alertnames and severities: renaming one would silently stop remediation.
    (LangGraphRunBacklog's rule ships disabled: it acts on the Kubernetes target.)"""
    rules = load_rules(RULES, build_registry())
    by_name = {rule["alert"]: rule for rule in alerts()}
    for name in REMEDIATED:
        labels = {"alertname": name, "namespace": "agents", **by_name[name]["labels"]}
        assert rules.match(labels), f"no rule in {RULES} matches {name}"


def test_controlplane_check_passes_on_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(RULES)]) == 0
    out = capsys.readouterr().out
    assert "ok: controlplane/defaults/alerting: 28 alerts in 4 files" in out
    assert "ok: controlplane/defaults/dashboards: " in out


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


GOOD_ALERT = """\
  - alert: Fine
    expr: up == 0
    labels: {severity: warning}
    annotations: {summary: s, description: d, runbook_url: "https://runbooks.example/fine"}
"""


def check(tmp_path: Path) -> list[str]:
    (tmp_path / "rules").mkdir(exist_ok=True)
    return check_alert_rules(argparse.Namespace(directory=tmp_path / "rules")).errors


def test_check_reports_missing_fields_at_the_rules_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    alerting = tmp_path / "alerting"
    alerting.mkdir()
    (tmp_path / "RUNBOOK.md").write_text("# Runbook\n## Known alert\n")
    write(
        alerting,
        "a.yaml",
        "groups:\n- name: g\n  rules:\n"
        + GOOD_ALERT
        + "  - alert: Bare\n    expr: up == 0\n"
        + "  - alert: Lost\n    expr: up\n    labels: {severity: critical}\n"
        + "    annotations: {summary: s, description: d, runbook_url: 'RUNBOOK.md#gone'}\n"
        + "  - record: job:up:sum\n    expr: sum by (job) (up)\n",
    )
    write(alerting, "b.yml", "groups:\n- name: g\n  rules: []\n")
    write(alerting, "a_test.yaml", "rule_files: [a.yaml]\ntests: []\n")  # a promtool test file: skipped
    assert check(tmp_path) == [
        "alerting/a.yaml:8: alert Bare: no labels.severity",
        "alerting/a.yaml:8: alert Bare: no annotations.summary",
        "alerting/a.yaml:8: alert Bare: no annotations.description",
        "alerting/a.yaml:8: alert Bare: no annotations.runbook_url",
        "alerting/a.yaml:10: alert Lost: runbook_url RUNBOOK.md#gone: RUNBOOK.md has no heading #gone",
        "alerting/b.yml:2: group 'g' is already defined in alerting/a.yaml",
    ]


def test_check_follows_runbook_urls_to_the_served_runbooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    alerting = tmp_path / "alerting"
    alerting.mkdir()
    (alerting / "RUNBOOKS.md").write_text("# Runbooks\n## Known alert\n```\n# not a heading\n```\n")
    urls = [
        "${CONTROLPLANE_PUBLIC_URL}/runbooks/RUNBOOKS.md#known-alert",  # fine
        "${CONTROLPLANE_PUBLIC_URL}/runbooks/RUNBOOKS.md#not-a-heading",  # in a code block
        "${CONTROLPLANE_PUBLIC_URL}/runbooks/OTHER.md#known-alert",
        "${CONTROLPLANE_PUBLIC_URL}/incidents",  # another page: not checked
        "/runbooks/RUNBOOKS.md#gone",  # a path on the control plane, as the console links it
        "alerting/RUNBOOKS.md#known-alert",  # fine: in the configuration directory
        "javascript:alert(1)",
        "https://wiki.example/runbooks#anything",  # fine, not fetched
    ]
    rules = "".join(
        f"  - alert: A{i}\n    expr: up == 0\n    labels: {{severity: warning}}\n"
        f"    annotations: {{summary: s, description: d, runbook_url: '{url}'}}\n"
        for i, url in enumerate(urls)
    )
    write(alerting, "a.yaml", "groups:\n- name: g\n  rules:\n" + rules)
    assert check(tmp_path) == [
        f"alerting/a.yaml:8: alert A1: runbook_url {urls[1]}: RUNBOOKS.md has no heading #not-a-heading",
        f"alerting/a.yaml:12: alert A2: runbook_url {urls[2]}: no runbook OTHER.md in alerting",
        f"alerting/a.yaml:20: alert A4: runbook_url {urls[4]}: RUNBOOKS.md has no heading #gone",
        f"alerting/a.yaml:28: alert A6: runbook_url {urls[6]}: only http and https links are followed",
    ]


def test_check_reports_yaml_errors_and_non_rule_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    alerting = tmp_path / "alerting"
    alerting.mkdir()
    write(alerting, "broken.yaml", "groups:\n- name: [\n")
    write(alerting, "other.yaml", "receivers: []\n")
    errors = check(tmp_path)
    assert errors[0].startswith("alerting/broken.yaml:3: invalid YAML")
    assert "alerting/other.yaml:1: not a Prometheus rule file: no `groups:` list" in errors


@pytest.mark.slow
def test_check_reports_promtools_errors_at_their_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_binary("promtool")
    monkeypatch.chdir(tmp_path)
    alerting = tmp_path / "alerting"
    alerting.mkdir()
    write(alerting, "a.yaml", "groups:\n- name: g\n  rules:\n" + GOOD_ALERT.replace("up == 0", "sum(rate(up[5m])"))
    [error] = check(tmp_path)
    assert error.startswith('alerting/a.yaml:5: promtool: group "g", rule 1, "Fine": could not parse expression')
    assert "unclosed left parenthesis" in error
