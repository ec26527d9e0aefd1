"""Leader election on SQLite and PostgreSQL: one leader, a new term on every takeover, stale leaders fenced."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from controlplane.db.tables import audit_t
from controlplane.leader import LeaderElector, StaleLeader
from tests.helpers import Clock


def elector(
    engine: Engine, clock: Clock, name: str, changes: list[tuple[str, bool, int]] | None = None
) -> LeaderElector:
    def changed(leader: bool, term: int) -> None:
        if changes is not None:
            changes.append((name, leader, term))

    return LeaderElector(engine, instance_id=name, lease_seconds=15, clock=clock, on_change=changed)


def test_one_leader_then_a_takeover_with_a_new_term(engine: Engine) -> None:
    clock = Clock()
    changes: list[tuple[str, bool, int]] = []
    a, b = elector(engine, clock, "a", changes), elector(engine, clock, "b", changes)
    assert a.tick() and a.term == 1
    assert not b.tick() and b.term is None
    assert b.leader is not None and b.leader.holder == "a"
    clock.advance(5)
    assert a.tick() and not b.tick()  # renewed: still term 1
    clock.advance(16)  # a is paused (no renewals) past its lease
    assert not a.is_leader  # it steps down on its own clock first
    assert b.tick() and b.term == 2
    assert not a.tick()
    assert changes == [("a", True, 1), ("b", True, 2), ("a", False, 2)]
    with engine.connect() as conn:
        elected = [
            d["term"] for a_, d in conn.execute(select(audit_t.c.action, audit_t.c.detail)) if a_ == "leader.elected"
        ]
    assert elected == [1, 2]


def test_a_paused_leader_waking_late_is_fenced(engine: Engine) -> None:
    clock = Clock()
    old, new = elector(engine, clock, "old"), elector(engine, clock, "new")
    old.tick()
    term = old.term
    assert term == 1
    clock.advance(20)
    new.tick()
    # The old leader resumes mid-write, still believing in term 1: the fence refuses it.
    from controlplane.leader import fence

    with pytest.raises(StaleLeader), engine.connect().execution_options(write=True) as conn, conn.begin():
        fence(conn, name="controlplane", term=term)
    with pytest.raises(StaleLeader), engine.connect().execution_options(write=True) as conn, conn.begin():
        old.fence(conn)
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        assert new.fence(conn) == 2


def test_release_on_stop_hands_over_at_once(engine: Engine) -> None:
    clock = Clock()
    a, b = elector(engine, clock, "a"), elector(engine, clock, "b")
    a.tick()
    a.stop(release=True)
    assert not a.is_leader
    clock.advance(0.001)
    assert b.tick() and b.term == 2


def test_concurrent_campaigns_elect_exactly_one(engine: Engine) -> None:
    clock = Clock()
    electors = [elector(engine, clock, f"r{i}") for i in range(6)]
    barrier = threading.Barrier(len(electors))
    results: dict[str, bool] = {}

    def campaign(e: LeaderElector) -> None:
        barrier.wait(10)
        results[e.instance_id] = e.tick()

    threads = [threading.Thread(target=campaign, args=(e,)) for e in electors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(results.values()) == 1
    leader = next(e for e in electors if e.is_leader)
    assert leader.term == 1


def test_a_stale_leader_evaluates_no_metric_rule(engine: Engine) -> None:
    """Leader-only writes carry the term: a replaced leader's evaluation records nothing."""
    import yaml

    from controlplane.db.tables import metric_states_t
    from controlplane.metricrules.evaluator import evaluate_rule
    from controlplane.rules.schema import Rule

    class Prometheus:
        def query_scalar(self, _query: str, reduce: str = "single") -> float:
            return 500.0

        def query_vector(self, _query: str) -> list[object]:
            return []

    clock = Clock()
    old, new = elector(engine, clock, "old"), elector(engine, clock, "new")
    old.tick()
    rule = Rule.model_validate(yaml.safe_load("{name: deep, when: {query: q, above: 1}, playbook: p}"))
    evaluate_rule(rule, client=Prometheus(), engine=engine, now=clock(), fence=old.fence)  # type: ignore[arg-type]
    states = metric_states_t
    with engine.connect() as conn:
        assert conn.execute(select(states.c.state)).scalar() == "firing"
    clock.advance(20)
    new.tick()
    old._valid_until = clock() + timedelta(seconds=60)  # the old leader, paused, still believes it leads
    rule2 = Rule.model_validate(yaml.safe_load("{name: other, when: {query: q, above: 1}, playbook: p}"))
    with pytest.raises(StaleLeader):
        evaluate_rule(rule2, client=Prometheus(), engine=engine, now=clock(), fence=old.fence)  # type: ignore[arg-type]
    with engine.connect() as conn:
        assert list(conn.execute(select(states.c.rule_name)).scalars()) == ["deep"]
