"""How far back retention may delete: the policy's ages, moved back by the longest window a guard looks at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controlplane.playbooks import ledger
from controlplane.retention.prune import EPOCH, Cutoffs, Policy, guard_window
from controlplane.rules.schema import Rule

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def rule(name: str, **guards: object) -> Rule:
    return Rule.model_validate({"name": name, "match": {"alertname": "X"}, "playbook": "p", "guards": guards})


def test_the_longest_guard_window_of_the_rules_in_force() -> None:
    assert guard_window([]) == ledger.WINDOW  # the ledger's recurrence window at least
    rules = [
        rule("a", cooldown="2h"),
        rule("b", max_runs={"count": 3, "per": "120d"}),
        rule("c", loop_breaker={"runs": 3, "within": "5d"}),
        rule("d", loop_breaker=False),
    ]
    assert guard_window(rules) == timedelta(days=120)


def test_a_guard_window_longer_than_the_policy_keeps_incidents_longer_not_suppressed_runs() -> None:
    cut = Cutoffs.at(NOW, Policy(), timedelta(days=120))
    assert cut.incidents == NOW - timedelta(days=120)
    assert cut.suppressed == NOW - timedelta(days=14)  # suppressed runs never count for a guard
    assert cut.alert_audit == NOW - timedelta(days=30)
    assert Cutoffs.at(NOW, Policy(), timedelta(hours=1)).incidents == NOW - timedelta(days=90)


def test_a_window_of_centuries_keeps_everything() -> None:
    cut = Cutoffs.at(NOW, Policy(), guard_window([rule("forever", cooldown="99999d")]))
    assert cut.incidents == EPOCH
    assert Cutoffs.at(NOW, Policy(incidents=timedelta(days=10**6)), timedelta(0)).incidents == EPOCH
