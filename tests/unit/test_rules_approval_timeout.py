"""The approval_timeout guard in rule files: a duration, 1h unless given, never 0; mistakes at their line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from controlplane.rules.loader import load_rules
from tests.unit.test_rules_loader import PLAYBOOK, make_registry, only_error, write


def rule(guards: str) -> str:
    return f"rules:\n  - name: x\n    match: {{a: b}}\n    playbook: p\n    guards:\n{guards}" + PLAYBOOK


@pytest.mark.parametrize(
    ("guards", "expected"),
    [
        ("      approval: true\n", timedelta(hours=1)),
        ("      approval: true\n      approval_timeout: 20m\n", timedelta(minutes=20)),
        ("      approval: true\n      approval_timeout: 90\n", timedelta(seconds=90)),
    ],
    ids=["default", "minutes", "seconds"],
)
def test_approval_timeout_loads(tmp_path: Path, guards: str, expected: timedelta) -> None:
    rules = load_rules(write(tmp_path, {"a.yaml": rule(guards)}), make_registry())
    assert rules.rules[0].guards.approval_timeout == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", "guards.approval_timeout: must be longer than 0s: an execution waits this long for approval"),
        ("0", "guards.approval_timeout: must be longer than 0s"),
        ("soon", "guards.approval_timeout: invalid duration 'soon'"),
        ("-5m", "guards.approval_timeout: invalid duration '-5m'"),
    ],
)
def test_a_bad_approval_timeout_is_reported_at_its_line(tmp_path: Path, value: str, message: str) -> None:
    error = only_error(tmp_path, rule(f"      approval: true\n      approval_timeout: {value}\n"))
    assert error.startswith(f'a.yaml:7: rule "x": {message}'), error
