"""Rule matchers behave like Alertmanager's: operators, anchoring, and absent labels as ""."""

from __future__ import annotations

import pytest

from controlplane.rules.matchers import Matcher, parse_matcher, parse_matchers

ALERT = {"alertname": "HighErrorRate", "severity": "critical", "namespace": "prod-eu", "weird": "!x"}


@pytest.mark.parametrize(
    ("label", "raw", "expected"),
    [
        # plain equality
        ("severity", "critical", True),
        ("severity", "crit", False),
        ("severity", "Critical", False),
        # regexes are anchored at both ends
        ("severity", "=~crit", False),
        ("severity", "=~crit.*", True),
        ("severity", "=~.*tical", True),
        ("severity", "=~itic", False),
        ("severity", "=~critical|warning", True),
        ("severity", "=~warning|crit", False),
        ("severity", "=~(?i)CRITICAL", True),
        # negative regex
        ("severity", "!~crit", True),
        ("severity", "!~crit.*", False),
        ("severity", "!~info|warning", True),
        # inequality
        ("severity", "!=info", True),
        ("severity", "!=critical", False),
        # `=` forces literal equality, so a value may start with an operator character
        ("weird", "=!x", True),
        ("weird", "!x", True),
        ("namespace", "=prod-eu", True),
        ("namespace", "==prod-eu", False),
        # whitespace after an operator is dropped, as amtool/Alertmanager's parser does
        ("severity", "=~ crit.* ", True),
        ("severity", "!= info", True),
        # a missing label counts as the empty string
        ("team", "!=payments", True),
        ("team", "", True),
        ("team", "=", True),
        ("team", "=~", True),
        ("team", "=~.*", True),
        ("team", "=~.+", False),
        ("team", "!~.+", True),
        ("team", "payments", False),
        # an empty equality does not match a label that is present
        ("severity", "", False),
    ],
)
def test_matcher_semantics(label: str, raw: str, expected: bool) -> None:
    assert parse_matcher(label, raw).matches(ALERT) is expected


@pytest.mark.parametrize(
    ("raw", "op", "value"),
    [
        ("critical", "=", "critical"),
        ("=~crit.*", "=~", "crit.*"),
        ("!~crit.*", "!~", "crit.*"),
        ("!=info", "!=", "info"),
        ("=!weird", "=", "!weird"),
        ("==x", "=", "=x"),
        ("=~", "=~", ""),
        ("", "=", ""),
    ],
)
def test_parse_reads_the_operator_prefix(raw: str, op: str, value: str) -> None:
    assert parse_matcher("l", raw) == Matcher("l", op, value)  # type: ignore[arg-type]


def test_severity_not_info_matches_an_alert_without_severity() -> None:
    matchers = parse_matchers({"alertname": "X", "severity": "!=info"})
    assert all(m.matches({"alertname": "X"}) for m in matchers)


def test_regex_anchoring_survives_newlines_and_alternation() -> None:
    # `^(?:a)$` in Python would accept "a\n"; Alertmanager (Go) does not.
    assert not parse_matcher("l", "=~a").matches({"l": "a\n"})
    assert not parse_matcher("l", "=~a|b").matches({"l": "ab"})


@pytest.mark.parametrize("raw", ["=~crit(", "!~[a-", "=~*x", "=~a)|(b"])
def test_invalid_regex_names_label_and_error(raw: str) -> None:
    with pytest.raises(ValueError, match=r"label 'severity': invalid regex") as info:
        parse_matcher("severity", raw)
    assert raw[2:] in str(info.value)


@pytest.mark.parametrize("name", ["bad-label", "9lives", "", "a b"])
def test_invalid_label_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid label name"):
        parse_matcher(name, "x")


def test_str_is_alertmanager_notation() -> None:
    assert str(parse_matcher("severity", '=~crit"al')) == 'severity=~"crit\\"al"'
    assert [str(m) for m in parse_matchers({"a": "b", "c": "!=d"})] == ['a="b"', 'c!="d"']
