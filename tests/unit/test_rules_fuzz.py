"""Whatever a rule file contains, loading it either works or raises RuleLoadError: never another exception."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.rules.loader import RuleLoadError, RuleSet, load_rules
from tests.unit.test_rules_loader import VALID, make_registry

REGISTRY = make_registry()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Words the schema knows, so random documents often get past the first check.
WORDS = [
    "rules",
    "playbooks",
    "name",
    "match",
    "when",
    "playbook",
    "steps",
    "action",
    "with",
    "rollback",
    "id",
    "guards",
    "cooldown",
    "max_runs",
    "count",
    "per",
    "query",
    "above",
    "for",
    "text",
    "test.echo",
    "graph.disable",
    "alertname",
    "=~(",
    "{{ x }",
    "{{ steps.a.value }}",
    "5m",
    "p",
    "x",
    "on_failure",
    "params",
    "labels",
    "group_by",
    "retry",
    "timeout",
    "enabled",
]

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from(WORDS)
    | st.text(max_size=12)
    | st.sampled_from([10**40, -1, 0, float("inf"), "1e400d", "99999999999999999d"])
)
documents = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6) | st.none() | st.integers(), inner, max_size=5)
    ),
    max_leaves=30,
)


def load_text(text: str) -> RuleSet | RuleLoadError:
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "fuzz.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            return load_rules(Path(directory), REGISTRY)
        except RuleLoadError as exc:
            for error in exc.errors:
                assert error.line >= 1 and error.message, error
            return exc


@FUZZ
@given(st.text(max_size=200))
def test_any_text(text: str) -> None:
    load_text(text)


@FUZZ
@given(documents)
def test_any_document(document: Any) -> None:
    load_text(yaml.safe_dump(document))


def paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*at, i))
    return found


@FUZZ
@given(st.data())
def test_mutated_valid_document(data: st.DataObject) -> None:
    document = yaml.safe_load(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        candidates = paths(document)[1:]
        if not candidates:
            break
        path = data.draw(st.sampled_from(candidates))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(documents)
        else:
            del parent[path[-1]]
    load_text(yaml.safe_dump(document))


def test_the_unmutated_document_loads() -> None:
    loaded = load_text(textwrap.dedent(VALID))
    assert isinstance(loaded, RuleSet), loaded
    rules = ["disable-failing-graph", "any-critical", "switched-off", "scale-on-latency"]
    assert [r.name for r in loaded.rules] == rules
    assert [s.action for s in loaded.playbooks["disable-graph"].steps] == ["test.echo", "graph.disable", "test.wait"]
