"""Seed 003's scored choice of the next endpoint, without a database: the score, freshness, the fallback."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.failover.scoring import EndpointMetrics, score
from controlplane.failover.thresholds import GroupState, Health, apply_check, chosen, manual_switch
from controlplane.rules.schema import FailoverGroup, FailoverScore
from tests.unit.test_failover_thresholds import T0, chat

SCORE = FailoverScore(cpu="cpu_share", memory="memory_share")


def scored(**update: object) -> FailoverGroup:
    return chat().model_copy(update={"score": SCORE, **update})


def load(cpu: float, memory: float, seconds: float, age: float = 0) -> EndpointMetrics:
    return EndpointMetrics(cpu, memory, seconds, T0 - timedelta(seconds=age))


# node-2 is preferred by priority (0); node-1 and node-3 tie (1), node-1 first by name.
BUSY_1 = load(0.9, 0.8, 0.1)  # 0.4 x 0.1 + 0.3 x 0.2 + 0.3 / 1.1 = 0.3727
IDLE_3 = load(0.2, 0.3, 0.5)  # 0.4 x 0.8 + 0.3 x 0.7 + 0.3 / 1.5 = 0.73


def health(**metrics: EndpointMetrics | None) -> dict[str, Health]:
    return {name: Health(metrics=metrics.get(name.replace("-", "_"))) for name in ("node-1", "node-2", "node-3")}


def choice(group: FailoverGroup, state: dict[str, Health], exclude: str | None = "node-2") -> str | None:
    target, _ = chosen(group, state, exclude=exclude, now=T0)
    return target.name if target else None


def test_the_seeds_score() -> None:
    assert score(load(0, 0, 0)) == pytest.approx(1.0)
    assert score(BUSY_1) == pytest.approx(0.04 + 0.06 + 0.3 / 1.1)
    assert score(IDLE_3) == pytest.approx(0.73)
    assert score(load(0.5, 0.5, 3)) == pytest.approx(0.2 + 0.15 + 0.075)  # a slow answer costs


def test_the_best_score_is_chosen_over_priority_and_the_scores_are_given() -> None:
    target, why = chosen(scored(), health(node_1=BUSY_1, node_3=IDLE_3), exclude="node-2", now=T0)
    assert target is not None and target.name == "node-3"  # priority alone would say node-1
    assert why == {"chosen_by": "score", "scores": {"node-1": 0.3727, "node-3": 0.73}}


def test_an_endpoint_without_fresh_metrics_is_not_scored() -> None:
    stale_3 = load(0.2, 0.3, 0.5, age=61)
    target, why = chosen(scored(), health(node_1=BUSY_1, node_3=stale_3), exclude="node-2", now=T0)
    assert target is not None and target.name == "node-1"
    assert why["scores"] == {"node-1": 0.3727, "node-3": None}
    # 60 s old is still fresh; the group's max_age decides.
    assert choice(scored(), health(node_3=load(0.2, 0.3, 0.5, age=60))) == "node-3"
    longer = scored(score=SCORE.model_copy(update={"max_age": timedelta(minutes=5)}))
    assert choice(longer, health(node_1=BUSY_1, node_3=stale_3)) == "node-3"


def test_with_no_fresh_metrics_the_choice_falls_back_to_priority() -> None:
    old = {"node_1": load(0, 0, 0, age=120), "node_3": load(0.9, 0.9, 9, age=61)}
    target, why = chosen(scored(), health(**old), exclude=None, now=T0)
    assert target is not None and target.name == "node-2"
    none_fresh = dict.fromkeys(("node-1", "node-2", "node-3"))
    assert why == {"chosen_by": "priority", "scores": none_fresh, "why": "no fresh metrics"}
    # A group without `score` never looks at metrics, and says nothing about them.
    assert chosen(chat(), health(node_3=IDLE_3), exclude="node-2", now=T0) == (chat().endpoints[0], {})


def test_an_unhealthy_endpoint_is_never_chosen_whatever_its_score() -> None:
    state = health(node_1=BUSY_1, node_3=load(0, 0, 0))
    state["node-3"] = Health(healthy=False, failures=3, metrics=load(0, 0, 0))
    target, why = chosen(scored(), state, exclude="node-2", now=T0)
    assert target is not None and target.name == "node-1"
    assert "node-3" not in why["scores"]


def test_a_failover_goes_to_the_best_score_and_its_events_carry_the_scores() -> None:
    group = scored(failure_threshold=1)
    state = GroupState(group, "node-2", health(node_1=BUSY_1, node_3=IDLE_3))
    change = apply_check(state, "node-2", False, "down", T0 + timedelta(seconds=10))
    assert change.after.active == "node-3"
    completed = change.events[-1]
    assert (completed.kind, completed.to_endpoint) == ("failover_completed", "node-3")
    assert completed.detail["chosen_by"] == "score" and completed.detail["scores"]["node-3"] == 0.73
    # A manual switch without `to` chooses the same way; metrics measured with a check replace older ones.
    switched = manual_switch(state, None, actor="me", reason="test", now=T0)
    assert switched.after.active == "node-3"
    measured = apply_check(state, "node-1", True, None, T0, load(0, 0, 0))
    assert measured.after.health["node-1"].metrics == load(0, 0, 0)
    assert apply_check(state, "node-1", False, "x", T0).after.health["node-1"].metrics == BUSY_1  # kept


def test_the_score_block_in_a_rule_file() -> None:
    group = FailoverGroup.model_validate(
        {
            "service": "chat",
            "endpoints": [{"name": "a", "url": "http://a"}],
            "score": {"cpu": "cpu_share", "memory": "memory_share", "max_age": "2m"},
        }
    )
    assert group.score is not None and (group.score.label, group.score.max_age) == ("endpoint", timedelta(minutes=2))
    for bad in ({"cpu": "c"}, {"cpu": "c", "memory": ""}, {"cpu": "c", "memory": "m", "weights": [1]}):
        with pytest.raises(ValueError):
            FailoverGroup.model_validate({"service": "chat", "endpoints": [{"name": "a", "url": "a"}], "score": bad})
