"""The alertname index returns exactly what checking every rule would, in the same order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.rules.index import RuleIndex
from controlplane.rules.matchers import Matcher, parse_matcher

LABELS = ["alertname", "severity", "namespace"]
VALUES = ["A", "B", "C", "", "crit", "critical"]
RAW = [*VALUES, "=~A|B", "=~A|A", "=~.*", "=~crit.*", "=~B|", "!=A", "!~A|B", "=~(?i)a", "=", "=~", "=A", "!=", "!~"]

rule_matchers = st.dictionaries(st.sampled_from(LABELS), st.sampled_from(RAW), min_size=1, max_size=3).map(
    lambda mapping: [parse_matcher(name, raw) for name, raw in mapping.items()]
)
label_sets = st.dictionaries(st.sampled_from(LABELS), st.sampled_from(VALUES), max_size=3)


@settings(max_examples=500, deadline=None)
@given(st.lists(rule_matchers, max_size=12), st.lists(label_sets, min_size=1, max_size=5))
def test_index_equals_brute_force(rules: list[list[Matcher]], alerts: list[dict[str, str]]) -> None:
    index = RuleIndex((i, matchers) for i, matchers in enumerate(rules))
    assert len(index) == len(rules)
    for labels in alerts:
        expected = [i for i, matchers in enumerate(rules) if all(m.matches(labels) for m in matchers)]
        assert index.match(labels) == expected


def test_order_is_kept_across_buckets() -> None:
    rules = [
        ("by-regex", [parse_matcher("severity", "=~crit.*")]),
        ("by-name", [parse_matcher("alertname", "A")]),
        ("by-alternation", [parse_matcher("alertname", "=~B|A")]),
        ("not-b", [parse_matcher("alertname", "!=B")]),
    ]
    index = RuleIndex(rules)
    assert index.match({"alertname": "A", "severity": "critical"}) == ["by-regex", "by-name", "by-alternation", "not-b"]
    assert index.match({"alertname": "B"}) == ["by-alternation"]
    assert index.match({}) == ["not-b"]


def test_an_empty_alertname_rule_matches_alerts_without_one() -> None:
    index = RuleIndex([("empty", [parse_matcher("alertname", "")])])
    assert index.match({"severity": "x"}) == ["empty"]
    assert index.match({"alertname": "A"}) == []
