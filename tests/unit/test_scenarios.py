"""`controlplane test`: scenario files run the service's own ingest, guards and plans on a fake clock, offline.

The shipped scenarios (`rules/tests/`) cover every default rule and must pass; a failing scenario
names `file:line` and shows a diff; a broken scenario file is exit 2 with `file:line`; nothing
touches the network; `controlplane check` runs the scenarios beside the rules.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from controlplane.cli import main
from controlplane.defaults import RULES_DIR
from controlplane.rules.loader import load_rules
from controlplane.scenarios.schema import read_scenarios

SHIPPED = RULES_DIR / "tests"
ERROR_QUERY = 'sum by (graph_name) (rate(langgraph_executions_total{status="error"}[5m]))'


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A copy of the default rules (with their scenarios) to change."""
    directory = tmp_path / "rules"
    shutil.copytree(RULES_DIR, directory)
    return directory


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_shipped_scenarios_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(SHIPPED)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.strip() == "19 of 19 scenarios passed"


def test_every_default_rule_has_a_scenario() -> None:
    from controlplane.actions.builtin import build_registry

    tested: set[str] = set()
    for path in SHIPPED.glob("*.yaml"):
        parsed, problems = read_scenarios(path)
        assert parsed is not None, problems
        for _, scenario in parsed.scenarios:
            tested |= {item["rule"] for item in scenario.expect.executions or [] if "rule" in item}
    shipped = {rule.name for rule in load_rules(RULES_DIR, build_registry()).rules}
    assert shipped <= tested, f"default rules without a scenario: {sorted(shipped - tested)}"


def test_scenarios_never_touch_the_network(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("no network in a scenario")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    assert main(["test", str(SHIPPED)]) == 0
    assert attempts == []


FAILING = f"""\
name: expectations that do not hold
targets:
  langgraph: {{graphs: [chat, search]}}
prometheus:
  - query: '{ERROR_QUERY}'
    result: [{{labels: {{graph_name: search}}, value: 0.5}}]
alerts:
  - {{at: 0s, labels: {{alertname: LangGraphHighErrorRate, severity: critical, namespace: agents}}}}
  - {{at: 5m, labels: {{alertname: LangGraphHighErrorRate, severity: critical, namespace: agents}}, status: resolved}}
expect:
  executions:
    - at: 0s
      rule: high-error-rate
      decision: run
      steps:
        - '=~query Prometheus .*'
        - disable graph chat on langgraph (2 of 2 enabled; at most 1 disabled)
  pages: []
"""


def test_a_failing_scenario_names_file_and_line_and_shows_a_diff(
    rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(rules / "tests" / "failing.yaml", FAILING)
    assert main(["test", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"FAILED {path}:1: scenario 'expectations that do not hold'",
        f"  {path}:17: expect.executions[0].steps[1]: expected 'disable graph chat on langgraph (2 of 2 enabled; at "
        "most 1 disabled)', got 'disable graph search on langgraph (2 of 2 enabled; at most 1 disabled)'",
        f"  {path}:15: expect.executions[0].steps: expected 2 steps, got 5; unexpected: status=planned "
        "sentence=note on incident #1's timeline: Disabled graph search: highest error rate. LangGraphHighErrorRate; "
        "status=planned sentence=page PagerDuty (critical) with dedup key controlplane-incident-1; status=planned "
        "sentence=verify incident #1 resolves within 15 min (now open)",
        "      --- expected executions",
        "      +++ actual executions",
        "      @@ -3,4 +3,7 @@",
        "         decision: run",
        "         steps:",
        "         - =~query Prometheus .*",
        "      -  - disable graph chat on langgraph (2 of 2 enabled; at most 1 disabled)",
        "      +  - disable graph search on langgraph (2 of 2 enabled; at most 1 disabled)",
        "      +  - 'note on incident #1''s timeline: Disabled graph search: highest error rate. "
        "LangGraphHighErrorRate'",
        "      +  - page PagerDuty (critical) with dedup key controlplane-incident-1",
        "      +  - 'verify incident #1 resolves within 15 min (now open)'",
        f"  {path}:18: expect.pages: expected 0 pages, got 1; unexpected: at=0s rule=high-error-rate "
        "kind=notify.oncall to=pagerduty",
        "      --- expected pages",
        "      +++ actual pages",
        "      @@ -1 +1,5 @@",
        "      -[]",
        "      +- at: 0s",
        "      +  rule: high-error-rate",
        "      +  kind: notify.oncall",
        "      +  to: pagerduty",
        "      +  text: page PagerDuty (critical) with dedup key controlplane-incident-1",
        "0 of 1 scenarios passed",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alerts: [\n", ":2: invalid YAML: expected the node content, but found '<stream end>'"),
        (
            "alerts:\n  - {at: soon, labels: {alertname: X}}\nexpect: {}\n",
            ":2: alerts[0].at: invalid duration 'soon': use a number of seconds or e.g. 30s, 5m, 1h30m, 2d",
        ),
        ("alerts:\n  - {at: 0s, labels: {alertname: X}}\nexpect: {}\nextra: 1\n", ":4: extra: unknown key"),
        ("alerts:\n  - {at: 0s, labels: {severity: x}}\nexpect: {}\n", ":2: alerts[0].labels: an alert needs"),
        (
            "targets:\n  nowhere: {graphs: [a]}\nalerts:\n  - {at: 0s, labels: {alertname: X}}\nexpect: {}\n",
            ":2: targets.nowhere: no such target in the rules (they define: langgraph, langgraph-k8s)",
        ),
        (
            "targets:\n  langgraph-k8s: {graphs: [a]}\nalerts:\n  - {at: 0s, labels: {alertname: X}}\nexpect: {}\n",
            ":2: targets.langgraph-k8s.replicas: Field required",
        ),
        (
            "targets:\n  langgraph: {graphs: [a], unhealthy: {openai/gpt-5: overloaded}}\nalerts:\n"
            "  - {at: 0s, labels: {alertname: X}}\nexpect: {}\n",
            ":2: targets.langgraph: models of `unhealthy` ['openai/gpt-5'] are not in `models`",
        ),
        (
            "targets:\n  langgraph: {graphs: [a], models: [gpt-4o]}\nalerts:\n  - {at: 0s, labels: {alertname: X}}\n"
            "expect: {}\n",
            ":2: targets.langgraph.models[0]: 'gpt-4o' is not `provider/model`",
        ),
        (
            "enable: [no-such-rule]\nalerts:\n  - {at: 0s, labels: {alertname: X}}\nexpect: {}\n",
            ":1: enable[0]: no rule 'no-such-rule' in the rules",
        ),
        ("alerts:\n  - {at: 8d, labels: {alertname: X}}\nexpect: {}\n", ":1: a scenario runs at most 7 days"),
    ],
)
def test_a_broken_scenario_file_is_exit_2_with_file_and_line(
    rules: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(rules / "tests" / "broken.yaml", text)
    assert main(["test", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}{message}" in err, err


def test_a_shadow_rule_plans_but_changes_nothing_and_pages_nobody(
    rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    langgraph = rules / "langgraph.yaml"
    text = langgraph.read_text()
    rule = "playbook: disable-problem-graph\n"
    langgraph.write_text(text.replace(rule, rule + "    mode: shadow\n"))
    path = write(
        rules / "tests" / "shadow.yaml",
        f"""\
targets:
  langgraph: {{graphs: [chat, search]}}
prometheus:
  - {{query: '{ERROR_QUERY}', result: [{{labels: {{graph_name: chat}}, value: 0.5}}]}}
alerts:
  - {{at: 0s, labels: {{alertname: LangGraphHighErrorRate, severity: critical, namespace: agents}}}}
  - {{at: 11m, labels: {{alertname: LangGraphHighErrorRate, severity: critical, namespace: agents, pod: b}}}}
expect:
  executions:
    - {{at: 0s, rule: high-error-rate, decision: dry_run, status: dry_run,
       steps: ['=~query Prometheus .*', disable graph chat on langgraph (2 of 2 enabled; at most 1 disabled),
               {{action: incident.annotate}}, {{action: notify.oncall}}, {{action: verify.resolved}}]}}
    - {{at: 11m, rule: high-error-rate, decision: dry_run,
       steps: ['=~query Prometheus .*', disable graph chat on langgraph (2 of 2 enabled; at most 1 disabled),
               {{}}, {{}}, {{}}]}}
  pages: []
""",
    )
    assert main(["test", str(path)]) == 0, capsys.readouterr().err


def test_a_metric_rule_fires_after_its_for_and_runs_its_playbook(
    rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        rules / "metric.yaml",
        """\
rules:
  - name: queue-backlog
    when: {query: 'sum(langgraph_pending_runs)', above: 100, for: 2m, interval: 1m, labels: {severity: warning}}
    playbook: page-resource-exhaustion
""",
    )
    path = write(
        rules / "tests" / "metric.yaml",
        """\
prometheus:
  - {query: 'sum(langgraph_pending_runs)', at: 0s, result: [{value: 20}]}
  - {query: 'sum(langgraph_pending_runs)', at: 3m, result: [{value: 250}]}
  - {query: 'sum(langgraph_pending_runs)', at: 9m, result: [{value: 10}]}
alerts:
  - {at: 0s, labels: {alertname: Unrelated}}
until: 12m
expect:
  incidents:
    - {title: Unrelated, status: open}
    - {status: resolved, opened_at: 5m, resolved_at: 9m}
  executions:
    - {at: 5m, rule: queue-backlog, decision: run, status: succeeded, ended_at: 9m}
""",
    )
    assert main(["test", str(path)]) == 0, capsys.readouterr().err


def test_a_query_the_scenario_does_not_answer_fails_the_plan_and_says_which(
    rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        rules / "tests" / "noanswer.yaml",
        """\
targets:
  langgraph: {graphs: [chat]}
alerts:
  - {at: 0s, labels: {alertname: LangGraphHighErrorRate, severity: critical, namespace: agents}}
expect:
  executions:
    - {rule: high-error-rate, status: failed, reason: '=~.*the scenario gives no answer to query .*prometheus:.*'}
""",
    )
    assert main(["test", str(path)]) == 0, capsys.readouterr().err


def test_check_runs_the_scenarios_beside_the_rules(rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(rules)]) == 0
    assert f"ok: {rules}/tests: 19 scenarios passed (controlplane test)" in capsys.readouterr().out
    langgraph = rules / "langgraph.yaml"
    guards = "cooldown: 10m, max_runs: {count: 3"
    langgraph.write_text(langgraph.read_text().replace(guards, guards.replace("10m", "3m")))
    assert main(["check", str(rules)]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {rules}/tests/high-error-rate.yaml:3: scenario" in err
    assert f"{rules}/tests/high-error-rate.yaml:37: expect.executions[1].guard: expected 'cooldown', got None" in err


LLM_RULES = """\
targets:
  - name: llm-under-test
    kind: http
    url: http://127.0.0.1:8000/admin
    llm_models: [anthropic/claude-sonnet-4, openai/gpt-4o, google/gemini-2.5-pro]
rules:
  - name: test-model-failover
    match: {alertname: TestModelErrors}
    group_by: [alertname, gen_ai_provider_name, gen_ai_request_model]
    playbook: test-model-failover
    guards: {cooldown: 15m}
  - name: test-agent-loop
    match: {alertname: TestAgentLoop}
    playbook: test-break-tool
playbooks:
  - name: test-model-failover
    steps:
      - id: moved
        action: llm.failover
        with: {target: llm-under-test, graph: "{{ alert.labels.graph_name }}"}
        rollback:
          action: llm.failover
          with:
            target: llm-under-test
            graph: "{{ alert.labels.graph_name }}"
            to: "{{ steps.moved.output.previous }}"
      - action: llm.limit
        with: {target: llm-under-test, graph: "{{ alert.labels.graph_name }}", concurrency: 4}
      - action: graph.canary
        with: {target: llm-under-test, graph: "{{ alert.labels.graph_name }}", runs: 5, max_latency: 10s}
  - name: test-break-tool
    steps:
      - action: tool.disable
        with: {target: llm-under-test, tool: "{{ alert.labels.tool_name }}"}
"""

LLM_SCENARIO = """\
name: a provider outage fails the graph over, the world remembers where it went
targets:
  llm-under-test: {graphs: [chat, summarize], unhealthy: {anthropic/claude-sonnet-4: overloaded}}
alerts:
  - {at: 0s, labels: {alertname: TestModelErrors, graph_name: chat, gen_ai_provider_name: anthropic,
                      gen_ai_request_model: claude-sonnet-4}}
  - {at: 2m, labels: {alertname: TestModelErrors, graph_name: summarize, gen_ai_provider_name: anthropic,
                      gen_ai_request_model: claude-sonnet-4}}
  - {at: 5m, labels: {alertname: TestModelErrors, graph_name: chat, gen_ai_provider_name: openai,
                      gen_ai_request_model: gpt-4o}}
  - {at: 6m, labels: {alertname: TestAgentLoop, tool_name: search}}
  - {at: 7m, labels: {alertname: TestAgentLoop, tool_name: calculator}}
expect:
  executions:
    - at: 0s
      rule: test-model-failover
      decision: run
      status: succeeded
      steps:
        - move graph chat on llm-under-test anthropic/claude-sonnet-4 → openai/gpt-4o (2 of 3 models healthy)
        - 'cap graph chat on llm-under-test: concurrency no cap, token budget none → concurrency 4, token budget none
          (floors: concurrency 1, token budget 1000)'
        # planned before the run: the model chat is on before step 1 moves it
        - send 5 canary runs through graph chat on llm-under-test (anthropic/claude-sonnet-4, overloaded now); pass
          when 5 succeed within 10 s
    - {at: 2m, rule: test-model-failover, decision: suppressed, guard: cooldown}
    - at: 5m
      rule: test-model-failover
      decision: run
      status: succeeded
      steps:
        - move graph chat on llm-under-test openai/gpt-4o → google/gemini-2.5-pro (2 of 3 models healthy)
        - 'leave graph chat on llm-under-test at concurrency 4, token budget none: already as wanted (floors:
          concurrency 1, token budget 1000)'
        - '=~send 5 canary runs through graph chat on llm-under-test \\(openai/gpt-4o, healthy now\\).*'
    - {at: 6m, rule: test-agent-loop, status: succeeded,
       steps: [disable tool search on llm-under-test (0 of 2 disabled; at most 1 disabled)]}
    - at: 7m
      rule: test-agent-loop
      status: failed
      steps:
        - status: refused
          refused: "disabling tool 'calculator' would make 2 disabled tools on target 'llm-under-test', over its
            max_disabled_tools of 1 (already disabled: search)"
"""


def test_llm_plans_read_the_worlds_llm_side_and_a_live_run_moves_it(
    rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GET /llm answers from the scenario's target state; each run's failover, limit and tool change is made in
    the world, so the next plan starts from there (chat is on gpt-4o at 5m, search is off at 7m)."""
    write(rules / "llm-under-test.yaml", LLM_RULES)
    path = write(rules / "tests" / "llm-under-test.yaml", LLM_SCENARIO)
    assert main(["test", str(path)]) == 0, capsys.readouterr().err


def test_the_steps_after_verify_resolved_are_planned_and_made_when_the_incident_resolves(
    rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run restores only after its incident resolved: until then the world keeps its change (a second
    plan at 5m sees the feature still off), and a step refused at the resolve fails the run then."""
    write(
        rules / "after-verify.yaml",
        """\
rules:
  - {name: off-then-on, match: {alertname: FeatureProbe}, playbook: off-then-on}
  - {name: off-then-tool, match: {alertname: ToolProbe}, playbook: off-then-tool}
playbooks:
  - name: off-then-on
    steps:
      - {action: service.degrade, with: {target: langgraph, level: degraded, features: [retrieval]}}
      - {action: verify.resolved, with: {within: 1h}}
      - {action: service.restore, with: {target: langgraph, features: [retrieval]}}
  - name: off-then-tool
    steps:
      - {action: service.degrade, with: {target: langgraph, level: degraded, features: [external_api]}}
      - {action: verify.resolved, with: {within: 1h}}
      - {action: tool.disable, with: {target: langgraph, tool: search}}
""",
    )
    path = write(
        rules / "tests" / "after-verify.yaml",
        """\
targets:
  langgraph: {graphs: [chat], disabled_tools: [calculator]}
alerts:
  - {at: 0s, labels: {alertname: FeatureProbe, namespace: agents}}
  - {at: 5m, labels: {alertname: ToolProbe, namespace: agents}}
  - {at: 10m, labels: {alertname: FeatureProbe, namespace: agents}, status: resolved}
  - {at: 20m, labels: {alertname: ToolProbe, namespace: agents}, status: resolved}
expect:
  executions:
    - {at: 0s, rule: off-then-on, status: succeeded, ended_at: 10m,
       steps: [{change: {to: {level: degraded, features: [retrieval]}}}, {},
               {action: service.restore, status: planned,
                change: {from: {level: degraded, features: [external_api, retrieval]},
                         to: {level: degraded, features: [external_api]}}}]}
    - {at: 5m, rule: off-then-tool, status: failed, ended_at: 20m, reason: '=~.*max_disabled_tools of 1.*',
       steps: [{change: {from: {level: degraded, features: [retrieval]}}}, {},
               {action: tool.disable, status: refused}]}
""",
    )
    assert main(["test", str(path)]) == 0, capsys.readouterr().err
