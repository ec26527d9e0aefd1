"""Approval timeouts on SQLite and PostgreSQL: a run nobody decided on in time is cancelled, by the leader only."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from controlplane.actions.builtin import build_registry
from controlplane.db.engine import write_transaction
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import ingest_notification
from controlplane.leader import LeaderElector
from controlplane.playbooks import service
from controlplane.playbooks.approvals import ACTOR, ApprovalTimeouts, expire_approvals
from controlplane.playbooks.schemas import ExecutionDetail
from controlplane.playbooks.trigger import Triggered, trigger_for_alerts
from controlplane.rules.loader import RuleSet, load_rules
from controlplane.services import Services
from tests.conftest import make_settings
from tests.helpers import Clock, sample_notification

GROUP_BY = ["alertname", "namespace"]
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
_fingerprints = itertools.count(1)


def ruleset(tmp_path: Path, guards: str) -> RuleSet:
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    (directory / "restart.yaml").write_text(f"""\
rules:
  - name: restart-on-errors
    match: {{alertname: LangGraphHighErrorRate}}
    group_by: [alertname, graph_name]
    playbook: ask
    guards: {guards}
playbooks:
  - name: ask
    steps:
      - {{action: notify.log, with: {{text: "restart {{{{ alert.labels.graph_name }}}}?"}}}}
""")
    return load_rules(directory, build_registry())


def fire(engine: Engine, rules: RuleSet, at: datetime, graph: str | None = None) -> Triggered:
    """One new alert at `at` (of a graph of its own unless named): the execution its rule created."""
    number = next(_fingerprints)
    payload = sample_notification({"fingerprint": f"fp{number}", "labels": {"graph_name": graph or f"graph_{number}"}})
    with write_transaction(engine) as conn:
        result = ingest_notification(conn, AlertmanagerNotification.model_validate(payload), group_by=GROUP_BY, now=at)
        [triggered] = trigger_for_alerts(
            conn, alert_ids=result.new_alert_ids, rules=rules, default_group_by=GROUP_BY, now=at
        )
    return triggered


def awaiting_approval(engine: Engine, rules: RuleSet, at: datetime) -> int:
    triggered = fire(engine, rules, at)
    assert triggered.status == "awaiting_approval"
    return triggered.execution_id


def sweep(engine: Engine, rules: RuleSet, at: datetime) -> list[int]:
    with write_transaction(engine) as conn:
        return expire_approvals(conn, now=at, rules=rules.rules, actor=ACTOR)


def execution(engine: Engine, execution_id: int) -> ExecutionDetail:
    with engine.connect() as conn:
        return service.get_execution(conn=conn, execution_id=execution_id)


def test_a_run_waiting_past_its_timeout_is_cancelled_with_its_reason_and_audited(
    engine: Engine, tmp_path: Path
) -> None:
    rules = ruleset(tmp_path, "{approval: true, approval_timeout: 30m}")
    old = awaiting_approval(engine, rules, T0)
    approved = awaiting_approval(engine, rules, T0 + timedelta(minutes=1))
    young = awaiting_approval(engine, rules, T0 + timedelta(minutes=20))
    with write_transaction(engine) as conn:
        service.approve(conn=conn, execution_id=approved, actor="bob", reason="go", now=T0 + timedelta(minutes=2))

    assert sweep(engine, rules, T0 + timedelta(minutes=29)) == []
    assert sweep(engine, rules, T0 + timedelta(minutes=30)) == [old]

    cancelled = execution(engine, old)
    reason = "approval timed out after 30m: nobody approved or rejected it"
    assert (cancelled.status, cancelled.reason) == ("cancelled", reason)
    assert (cancelled.decided_by, cancelled.finished_at) == (ACTOR, T0 + timedelta(minutes=30))
    last = cancelled.timeline[-1]
    assert (last.action, last.actor, last.detail["reason"]) == ("execution.cancelled", ACTOR, reason)
    assert execution(engine, young).status == "awaiting_approval"
    assert execution(engine, approved).status == "pending"  # decided in time: not the sweep's business

    assert sweep(engine, rules, T0 + timedelta(minutes=50)) == [young]
    assert sweep(engine, rules, T0 + timedelta(hours=5)) == []  # each run is cancelled once


def test_approval_without_a_timeout_waits_one_hour(engine: Engine, tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "{approval: true}")
    run = awaiting_approval(engine, rules, T0)
    assert sweep(engine, rules, T0 + timedelta(minutes=59)) == []
    assert sweep(engine, rules, T0 + timedelta(hours=1)) == [run]
    assert execution(engine, run).reason == "approval timed out after 1h: nobody approved or rejected it"


@pytest.mark.parametrize("now_the_rule", ["is gone", "no longer asks for approval"])
def test_a_run_of_a_rule_gone_or_without_approval_now_waits_one_hour(
    engine: Engine, tmp_path: Path, now_the_rule: str
) -> None:
    run = awaiting_approval(engine, ruleset(tmp_path, "{approval: true, approval_timeout: 5m}"), T0)
    if now_the_rule == "is gone":
        reloaded = RuleSet.empty()
    else:
        reloaded = ruleset(tmp_path, "{approval: false, approval_timeout: 5m}")
    assert sweep(engine, reloaded, T0 + timedelta(minutes=30)) == []
    assert sweep(engine, reloaded, T0 + timedelta(hours=1)) == [run]
    assert execution(engine, run).status == "cancelled"


def test_only_the_current_leader_sweeps(engine: Engine, tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "{approval: true, approval_timeout: 10m}")
    clock = Clock()
    run = awaiting_approval(engine, rules, T0)

    def timeouts(elector: LeaderElector) -> ApprovalTimeouts:
        return ApprovalTimeouts(
            engine, rules=lambda: rules.rules, is_leader=lambda: elector.is_leader, fence=elector.fence, clock=clock
        )

    old = LeaderElector(engine, instance_id="old", lease_seconds=15, clock=clock)
    new = LeaderElector(engine, instance_id="new", lease_seconds=15, clock=clock)
    assert old.tick() and not new.tick()
    assert timeouts(new).sweep_now() == []  # a follower does not sweep
    clock.now = T0 + timedelta(minutes=20)  # the old leader is paused past its lease
    assert new.tick() and new.term == 2
    old._valid_until = clock() + timedelta(seconds=60)  # ... and, waking, still believes it leads
    assert timeouts(old).sweep_now() == []
    assert execution(engine, run).status == "awaiting_approval"

    assert timeouts(new).sweep_now() == [run]
    assert execution(engine, run).status == "cancelled"


def test_the_service_sweeps_when_it_leads(engine: Engine, database_url: str, tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "{approval: true, approval_timeout: 10m}")
    run = awaiting_approval(engine, rules, datetime.now(UTC) - timedelta(minutes=11))
    services = Services.build(make_settings(database_url, rules_dir=tmp_path / "rules"))
    try:
        services.rules.load()
        assert services.approval_timeouts.sweep_now() == []  # not campaigned yet: not the leader
        assert services.elector.tick()
        assert services.approval_timeouts.sweep_now() == [run]
    finally:
        services.engine.dispose()


def test_a_timed_out_approval_no_longer_holds_back_its_group(engine: Engine, tmp_path: Path) -> None:
    """A run waiting for approval suppresses new ones of its group; once timed out, the next alert asks again."""
    rules = ruleset(tmp_path, "{approval: true, approval_timeout: 10m}")
    first = fire(engine, rules, T0, graph="support_bot")
    held_back = fire(engine, rules, T0 + timedelta(minutes=5), graph="support_bot")
    assert (held_back.status, held_back.guard) == ("suppressed", "active")
    assert sweep(engine, rules, T0 + timedelta(minutes=10)) == [first.execution_id]
    again = fire(engine, rules, T0 + timedelta(minutes=11), graph="support_bot")
    assert again.status == "awaiting_approval"
