"""Loading rules/*.yaml: a valid directory becomes a RuleSet; every mistake is one `file:line: message`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import Field

from controlplane.actions.base import ActionContext, ActionRegistry, ActionResult, Params, action
from controlplane.durations import Duration
from controlplane.rules.loader import RuleFileError, RuleLoadError, RuleSet, load_rules


class EchoParams(Params):
    text: str
    count: int = Field(default=1, ge=1)


class WaitParams(Params):
    within: Duration


class GraphParams(Params):
    graph: str
    labels: dict[str, str] = Field(default_factory=dict)


def _noop(ctx: ActionContext, params: Params) -> ActionResult:
    return ActionResult()


def make_registry() -> ActionRegistry:
    """A private registry, so these tests do not depend on the built-in actions."""
    registry = ActionRegistry()
    action("test.echo", params=EchoParams, into=registry)(_noop)
    action("test.wait", params=WaitParams, into=registry)(_noop)
    action("graph.disable", params=GraphParams, inverse="graph.enable", into=registry)(_noop)
    action("graph.enable", params=GraphParams, into=registry)(_noop)
    return registry


VALID = """\
rules:
  - name: disable-failing-graph
    match: {alertname: HighErrorRate, severity: critical}
    group_by: [alertname, namespace]
    playbook: disable-graph
    guards: {cooldown: 10m, max_runs: {count: 3, per: 1h}}
  - name: any-critical
    match: {severity: "=~crit.*"}
    playbook: disable-graph
  - name: switched-off
    enabled: false
    match: {alertname: HighErrorRate}
    playbook: disable-graph
  - name: scale-on-latency
    when: {query: "histogram_quantile(0.95, x)", above: 30, for: 5m}
    playbook: disable-graph
playbooks:
  - name: disable-graph
    steps:
      - id: worst
        action: test.echo
        with: {text: "{{ alert.labels.graph }}"}
      - action: graph.disable
        with: {graph: "{{ steps.worst.value }}", labels: {reason: "error rate"}}
        when: "steps.worst.value != ''"
        rollback: graph.enable
      - action: test.wait
        with: {within: 10m}
        on_failure: escalate
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def errors_of(directory: Path, files: dict[str, str]) -> list[str]:
    """The errors as `name:line: message`, with the directory left out."""
    write(directory, files)
    with pytest.raises(RuleLoadError) as info:
        load_rules(directory, make_registry())
    return [str(e).removeprefix(f"{directory}/") for e in info.value.errors]


def only_error(tmp_path: Path, text: str) -> str:
    errors = errors_of(tmp_path / "rules", {"a.yaml": text})
    assert len(errors) == 1, errors
    return errors[0]


# --- what loads -------------------------------------------------------------------------


def test_valid_directory_loads(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, {"a.yaml": VALID}), make_registry())
    assert [r.name for r in rules.rules] == [
        "disable-failing-graph",
        "any-critical",
        "switched-off",
        "scale-on-latency",
    ]
    assert list(rules.playbooks) == ["disable-graph"]
    assert [r.name for r in rules.metric_rules] == ["scale-on-latency"]
    assert rules.files == [tmp_path / "a.yaml"]
    assert rules.rule("any-critical") is rules.rules[1]
    matched = rules.match({"alertname": "HighErrorRate", "severity": "critical", "namespace": "x"})
    assert [r.name for r in matched] == ["disable-failing-graph", "any-critical"]  # not the disabled one
    assert [r.name for r in rules.match({"alertname": "Other", "severity": "critical"})] == ["any-critical"]
    assert rules.match({"alertname": "HighErrorRate"}) == []


def test_match_keeps_file_order_across_files(tmp_path: Path) -> None:
    second = """\
    rules:
      - name: b-first
        match: {alertname: "=~High.*"}
        playbook: disable-graph
      - name: b-second
        match: {alertname: HighErrorRate}
        playbook: disable-graph
    """
    rules = load_rules(write(tmp_path, {"b.yml": second, "a.yaml": VALID}), make_registry())
    matched = rules.match({"alertname": "HighErrorRate", "severity": "critical"})
    assert [r.name for r in matched] == ["disable-failing-graph", "any-critical", "b-first", "b-second"]
    assert rules.files == [tmp_path / "a.yaml", tmp_path / "b.yml"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n", "---\n"])
def test_empty_file_has_no_rules(tmp_path: Path, text: str) -> None:
    rules = load_rules(write(tmp_path, {"empty.yaml": text}), make_registry())
    assert rules.rules == [] and rules.playbooks == {} and rules.files == [tmp_path / "empty.yaml"]


def test_other_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "not yaml: [", ".hidden.yaml": "[", "notes.txt": "{"})
    (tmp_path / "sub.yaml").mkdir()
    assert load_rules(tmp_path, make_registry()).files == []


def test_empty_ruleset() -> None:
    empty = RuleSet.empty()
    assert empty.rules == [] and empty.match({"alertname": "X"}) == [] and len(empty.index) == 0


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    text = """\
    rules:
      - &base
        name: one
        match: {alertname: A}
        playbook: p
        guards: {cooldown: 5m}
      - <<: *base
        name: two
    playbooks:
      - name: p
        steps: [{action: test.echo, with: {text: hi}}]
    """
    rules = load_rules(write(tmp_path, {"a.yaml": text}), make_registry())
    assert [r.name for r in rules.match({"alertname": "A"})] == ["one", "two"]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RuleLoadError) as info:
        load_rules(tmp_path / "nope", make_registry())
    assert info.value.errors == [RuleFileError(tmp_path / "nope", 0, "rules directory: no such directory")]
    assert str(info.value) == f"{tmp_path / 'nope'}: rules directory: no such directory"


# --- each kind of error, at its line ------------------------------------------------------


PLAYBOOK = """\
playbooks:
  - name: p
    steps:
      - action: test.echo
        with: {text: hi}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b\n    playbook: p\n",
            "a.yaml:4: invalid YAML:",
            id="yaml-syntax",
        ),
        pytest.param("rules: [\n", "a.yaml:2: invalid YAML:", id="yaml-unclosed"),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\n    match: {c: d}\n",
            "a.yaml:5: invalid YAML: duplicate key 'match' (first at line 3)",
            id="yaml-duplicate-key",
        ),
        pytest.param(
            "- name: x\n",
            "a.yaml:1: a rule file is a mapping with `rules:` and `playbooks:` lists, not a list",
            id="top-level-list",
        ),
        pytest.param("42\n", "a.yaml:1: a rule file is a mapping", id="top-level-number"),
        pytest.param(
            "rule:\n  - name: x\n", "a.yaml:1: rule: unknown field 'rule' (did you mean rules?)", id="top-level-typo"
        ),
        pytest.param(
            "rules:\n  - name: x\n    mtach: {a: b}\n    playbook: p\n",
            "a.yaml:3: rule \"x\": mtach: unknown field 'mtach' (did you mean match?)",
            id="unknown-field",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n",
            'a.yaml:2: rule "x": playbook: required field is missing',
            id="missing-field",
        ),
        pytest.param(
            "rules:\n  - name: 123\n    match: {a: b}\n    playbook: p\n",
            "a.yaml:2: rules[0].name: Input should be a valid string",
            id="number-as-name",
        ),
        pytest.param(
            "rules:\n  - name: Not Valid\n    match: {a: b}\n    playbook: p\n",
            "a.yaml:2: rules[0].name: 'Not Valid' is not a valid name",
            id="bad-name",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\n    guards:\n      cooldown: soon\n",
            "a.yaml:6: rule \"x\": guards.cooldown: invalid duration 'soon'",
            id="bad-duration",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\n    guards:\n      cooldown: 99999999999999d\n",
            "a.yaml:6: rule \"x\": guards.cooldown: duration '99999999999999d' is too large",
            id="huge-duration",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\n    guards:\n      loop_breaker: {runs: 0}\n",
            'a.yaml:6: rule "x": guards.loop_breaker.runs: Input should be greater than or equal to 1',
            id="loop-breaker-runs",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\n    guards:\n      loop_breaker: {within: 0s}\n",
            'a.yaml:6: rule "x": guards.loop_breaker.within: must be longer than 0s',
            id="loop-breaker-window",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\n    page_on_failure: sometimes\n",
            'a.yaml:5: rule "x": page_on_failure: Input should be a valid boolean',
            id="page-on-failure",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    when: {query: up, above: 1}\n    playbook: p\n",
            'a.yaml:2: rule "x": give exactly one of `match` (alert rule) or `when` (metric rule)',
            id="match-and-when",
        ),
        pytest.param(
            "rules:\n  - name: x\n    playbook: p\n    match: {}\n",
            'a.yaml:4: rule "x": match: `match` needs at least one label matcher',
            id="empty-match",
        ),
        pytest.param(
            "rules:\n  - name: x\n    playbook: p\n    match:\n      alertname: A\n      severity: '=~crit('\n",
            "a.yaml:6: rule \"x\": match.severity: label 'severity': invalid regex 'crit(': missing ), "
            "unterminated subpattern at position 4",
            id="bad-regex",
        ),
        pytest.param(
            "rules:\n  - name: x\n    playbook: p\n    match:\n      bad-label: A\n",
            "a.yaml:5: rule \"x\": match.bad-label: label 'bad-label': not a valid label name",
            id="bad-label-name",
        ),
        pytest.param(
            "rules:\n  - name: x\n    playbook: p\n    match: {severity: 500}\n",
            'a.yaml:4: rule "x": match.severity: Input should be a valid string',
            id="number-as-match-value",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    playbook: pp\n",
            "a.yaml:4: rule \"x\": playbook: no playbook named 'pp' (did you mean p?)",
            id="missing-playbook",
        ),
        pytest.param(
            "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\n    group_by: [alertname, 9x]\n",
            "a.yaml:5: rule \"x\": group_by[1]: '9x' is not a valid label name",
            id="bad-group-by",
        ),
    ],
)
def test_rule_errors(tmp_path: Path, text: str, expected: str) -> None:
    # Rules get a playbook `p` appended after them, so only the error under test is left.
    error = only_error(tmp_path, text + (PLAYBOOK if text.startswith("rules:\n  - name") else ""))
    assert error.startswith(expected), error


def steps(*lines: str) -> str:
    """A file whose playbook `p` has the given step lines (indented under `steps:`), from line 4 on."""
    return "playbooks:\n  - name: p\n    steps:\n" + "".join(f"      {line}\n" for line in lines)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            steps("- action: test.ecko", "  with: {text: hi}"),
            "a.yaml:4: playbook \"p\": steps[0].action: unknown action 'test.ecko' (did you mean test.echo?)",
            id="unknown-action",
        ),
        pytest.param(
            steps("- action: test.echo", "  with: {text: hi}", "  rollback: graph.enabel"),
            "a.yaml:6: playbook \"p\": steps[0].rollback.action: unknown action 'graph.enabel' "
            "(did you mean graph.enable",
            id="unknown-rollback-action",
        ),
        pytest.param(
            steps("- action: test.echo", "  with:", "    text: hi", "    txt: hello"),
            "a.yaml:7: playbook \"p\": steps[0].with.txt: action test.echo: unknown param 'txt' (did you mean text?)",
            id="unknown-param",
        ),
        pytest.param(
            steps("- action: test.echo", "  with: {text: hi, colour: red}"),
            "a.yaml:5: playbook \"p\": steps[0].with.colour: action test.echo: unknown param 'colour' "
            "(accepted: count, text)",
            id="unknown-param-no-close-match",
        ),
        pytest.param(
            steps("- action: test.echo", "  with:", "    count: 2"),
            "a.yaml:5: playbook \"p\": steps[0].with: action test.echo: missing required param 'text'",
            id="missing-param",
        ),
        pytest.param(
            steps("- action: test.echo"),
            "a.yaml:4: playbook \"p\": steps[0].with: action test.echo: missing required param 'text'",
            id="missing-with",
        ),
        pytest.param(
            steps("- action: test.echo", "  with:", "    text: hi", "    count: many"),
            "a.yaml:7: playbook \"p\": steps[0].with.count: action test.echo: param 'count': Input should be a "
            "valid integer",
            id="param-type",
        ),
        pytest.param(
            steps("- action: test.echo", "  with:", "    text: hi", "    count: 0"),
            "a.yaml:7: playbook \"p\": steps[0].with.count: action test.echo: param 'count': Input should be "
            "greater than or equal to 1",
            id="param-constraint",
        ),
        pytest.param(
            steps("- action: test.wait", "  with: {within: forever}"),
            "a.yaml:5: playbook \"p\": steps[0].with.within: action test.wait: param 'within': invalid duration",
            id="param-duration",
        ),
        pytest.param(
            steps("- action: graph.disable", "  with:", "    graph: g", "    labels: {a: 1}"),
            "a.yaml:7: playbook \"p\": steps[0].with.labels.a: action graph.disable: param 'labels': Input should be "
            "a valid string",
            id="param-nested-type",
        ),
        pytest.param(
            steps("- action: test.echo", "  with:", "    text:", "      - fine", "      - '{{ x }'"),
            "a.yaml:8: playbook \"p\": steps[0].with.text[1]: template syntax error: unexpected '}'",
            id="template-syntax",
        ),
        pytest.param(
            steps("- action: test.echo", "  with: {text: hi}", "  when: 'x >'"),
            'a.yaml:6: playbook "p": steps[0].when: template syntax error:',
            id="when-syntax",
        ),
        pytest.param(
            steps(
                "- action: test.echo",
                "  with: {text: '{{ steps.later.value }}'}",
                "- id: later",
                "  action: test.echo",
                "  with: {text: hi}",
            ),
            "a.yaml:5: playbook \"p\": steps[0].with.text: refers to steps.later, but the step with id 'later' "
            "runs later",
            id="reference-later-step",
        ),
        pytest.param(
            steps("- action: test.echo", "  with: {text: hi}", "  when: steps.nope.value"),
            "a.yaml:6: playbook \"p\": steps[0].when: refers to steps.nope, but the step with id 'nope' does not exist",
            id="reference-missing-step",
        ),
        pytest.param(
            steps(
                "- id: one",
                "  action: test.echo",
                "  with: {text: hi}",
                "- id: one",
                "  action: test.echo",
                "  with: {text: hi}",
            ),
            "a.yaml:7: playbook \"p\": steps[1].id: duplicate step id 'one'",
            id="duplicate-step-id",
        ),
        pytest.param(
            steps("- action: test.echo", "  with: {text: hi}", "  on_failure: retry"),
            "a.yaml:6: playbook \"p\": steps[0].on_failure: Input should be 'continue', 'abort' or 'escalate'",
            id="bad-literal",
        ),
        pytest.param(
            "playbooks:\n  - name: p\n    steps: []\n",
            'a.yaml:3: playbook "p": steps: List should have at least 1 item',
            id="no-steps",
        ),
    ],
)
def test_playbook_errors(tmp_path: Path, text: str, expected: str) -> None:
    error = only_error(tmp_path, text)
    assert error.startswith(expected), error


def test_rollback_without_with_is_checked_against_the_step_inputs(tmp_path: Path) -> None:
    text = steps("- action: test.echo", "  with: {text: hi}", "  rollback: {action: graph.enable}")
    note = "(rollback graph.enable is given the step's own `with`)"
    assert errors_of(tmp_path, {"a.yaml": text}) == [
        f"a.yaml:5: playbook \"p\": steps[0].with.text: action graph.enable: unknown param 'text' (accepted: graph, "
        f"labels) {note}",
        f"a.yaml:5: playbook \"p\": steps[0].with: action graph.enable: missing required param 'graph' {note}",
    ]


def test_templated_values_are_type_checked_at_run_time_not_load_time(tmp_path: Path) -> None:
    text = steps(
        "- id: first",
        "  action: test.echo",
        "  with: {text: hi, count: '{{ params.n }}'}",
        "  rollback: {action: test.echo, with: {text: '{{ steps.first.value }}'}}",
        "- action: graph.disable",
        "  with: {graph: g, labels: {reason: '{{ steps.first.value }}'}}",
    )
    load_rules(write(tmp_path, {"a.yaml": text}), make_registry())


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    one = "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\n" + PLAYBOOK
    two = "\nrules:\n  - name: x\n    match: {a: c}\n    playbook: p\n" + PLAYBOOK
    assert errors_of(tmp_path, {"one.yaml": one, "two.yaml": two}) == [
        f"two.yaml:3: rule \"x\": name: rule name 'x' is already used at {tmp_path}/one.yaml:2",
        f"two.yaml:7: playbook \"p\": name: playbook name 'p' is already used at {tmp_path}/one.yaml:6",
    ]


def test_duplicate_names_in_one_file(tmp_path: Path) -> None:
    text = PLAYBOOK + "  - name: p\n    steps: [{action: test.echo, with: {text: x}}]\n"
    assert only_error(tmp_path, text) == "a.yaml:6: playbook \"p\": name: playbook name 'p' is already used at line 2"


def test_every_error_is_reported_in_one_run(tmp_path: Path) -> None:
    text = """\
    rules:
      - name: broken
        match: {severity: "=~("}
        playbook: p
        guards: {cooldown: soon}
      - name: fine-but-orphan
        match: {a: b}
        playbook: nope
    playbooks:
      - name: p
        steps:
          - {id: a, action: test.echo, with: {text: hi}}
          - {id: a, action: test.echo, with: {txt: hi}}
          - {action: nope.nope}
    """
    errors = errors_of(tmp_path, {"a.yaml": text, "b.yaml": "rules: {"})
    assert [e.split(": ")[0] for e in errors] == [
        "a.yaml:3",  # the regex of a rule that is invalid for another reason too
        "a.yaml:5",
        "a.yaml:8",
        "a.yaml:13",  # duplicate id
        "a.yaml:13",  # and the same step's unknown param: a broken playbook's steps are still checked
        "a.yaml:13",  # ... and its missing one
        "a.yaml:14",
        "b.yaml:1",
    ]


def test_a_rule_naming_a_broken_playbook_is_not_reported_twice(tmp_path: Path) -> None:
    text = "rules:\n  - name: x\n    match: {a: b}\n    playbook: p\nplaybooks:\n  - name: p\n    steps: []\n"
    assert only_error(tmp_path, text).startswith("a.yaml:7:")


def test_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    error = only_error(tmp_path, "\n".join(lines) + "\nrules: *a8\n")
    assert "expands to more than" in error


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"rules:\n  - name: \xff\n")
    with pytest.raises(RuleLoadError) as info:
        load_rules(tmp_path, make_registry())
    assert [str(e) for e in info.value.errors] == [f"{tmp_path}/a.yaml:2: not UTF-8 text"]


def test_control_characters(tmp_path: Path) -> None:
    assert only_error(tmp_path, "rules:\n  - name: \x07\n").startswith("a.yaml:2: invalid YAML:")


def test_unsafe_tags_are_refused(tmp_path: Path) -> None:
    error = only_error(tmp_path, "rules: !!python/object/apply:os.system ['true']\n")
    assert error.startswith("a.yaml:1: invalid YAML:")


def test_odd_keys_and_templates_in_params_are_reported_not_crashed_on(tmp_path: Path) -> None:
    text = """\
    rules:
      - name: x
        match: {a: b}
        playbook: p
        params: {n: "{{ steps.a.value }}", m: "{{ oops }"}
    playbooks:
      - name: p
        params: {k: "{{ steps.b }}"}
        steps:
          - action: graph.disable
            with: {graph: g, labels: {null: "{{ x }", 1: [y]}}
    """
    assert errors_of(tmp_path, {"a.yaml": text}) == [
        "a.yaml:5: rule \"x\": params.m: template syntax error: unexpected '}'",
        "a.yaml:11: playbook \"p\": steps[0].with.labels[None]: template syntax error: unexpected '}'",
    ]


@pytest.mark.parametrize("depth", [50, 5000])
def test_deep_nesting(tmp_path: Path, depth: int) -> None:
    text = steps("- action: test.echo", "  with: {text: " + "[" * depth + "x" + "]" * depth + "}")
    error = only_error(tmp_path, text)
    assert error.startswith("a.yaml:5: " if depth == 50 else "a.yaml:1: invalid YAML: nested too deeply"), error
