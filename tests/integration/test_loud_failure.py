"""Failure is loud, loops stop, and every run is judged, on SQLite and PostgreSQL: a failed or rolled-back run,
an expired approval, a worker lost too often and a loop breaker that trips each page on-call once (PagerDuty
stand-in); a rule that keeps re-fixing the same key is quarantined until a person lifts it, across a restart;
the ledger settles each run's outcome."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from controlplane.config import Settings
from controlplane.db.engine import write_transaction
from controlplane.db.tables import executions_t, incidents_t, pages_t, quarantines_t
from controlplane.errors import Conflict
from controlplane.playbooks import ledger, quarantine
from controlplane.playbooks.approvals import expire_approvals
from controlplane.playbooks.worker import claim_next
from tests.conftest import make_settings
from tests.helpers import Clock
from tests.integration.test_playbooks import Harness, Rules, engine_harness, rules
from tests.standins.pagerduty import ROUTING_KEY, PagerDutyStandIn

PUBLIC_URL = "https://controlplane.example"


@pytest.fixture
def settings(database_url: str, pagerduty_api: PagerDutyStandIn) -> Settings:
    # The sample alert is critical: notify routes send critical to PagerDuty.
    return make_settings(
        database_url,
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=pagerduty_api.url,
        public_url=PUBLIC_URL,
        notify_routes={"critical": "pagerduty", "*": "log"},
    )


@pytest.fixture
def h(engine: Engine, settings: Settings) -> Iterator[Harness]:
    with engine_harness(engine, settings) as harness:
        yield harness


def summaries(pagerduty_api: PagerDutyStandIn) -> list[str]:
    return [event["payload"]["summary"] for event in pagerduty_api.events]


def pages(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(pages_t).order_by(pages_t.c.id)).mappings()]


FAILING = """
      - action: test.do
        with: {text: a, fail_times: 1, retriable: false}
"""


# -- failure pages -------------------------------------------------------------------------------


def test_a_failed_run_pages_oncall_once_with_the_reason_and_the_incident_link(
    h: Harness, pagerduty_api: PagerDutyStandIn
) -> None:
    h.rules = rules(FAILING)  # on_failure is the default (abort): no escalate step needed
    [t] = h.fire()
    h.run_all()
    h.clock.advance(120)
    h.run_all()  # a later round sends nothing more
    detail = h.execution(t.execution_id)
    assert detail.status == "failed"
    assert detail.summary == "Failed at step 1 (test.do): test.do failed (try 1); paged on-call via PagerDuty"
    [summary] = summaries(pagerduty_api)
    assert f"rule fix-errors, execution #{t.execution_id}" in summary
    assert "(test.do) failed: test.do failed (try 1)" in summary
    assert f"{PUBLIC_URL}/incidents/{detail.incident_id}" in summary
    [page] = pages(h.engine)
    assert (page["kind"], page["outcome"], page["attempts"]) == ("execution_failed", "pagerduty", 1)


def test_a_rule_that_opts_out_is_not_paged(engine: Engine, settings: Settings, pagerduty_api: PagerDutyStandIn) -> None:
    with engine_harness(engine, settings) as h:
        h.rules = Rules(_rules_text(FAILING, rule_extra="    page_on_failure: false"))
        [t] = h.fire()
        h.run_all()
        assert h.execution(t.execution_id).status == "failed"
    assert pagerduty_api.events == [] and pages(engine) == []


def test_a_rolled_back_run_pages_once(h: Harness, pagerduty_api: PagerDutyStandIn) -> None:
    h.rules = rules("""
      - action: test.do
        with: {text: change}
        rollback: test.undo
      - action: test.other
        with: {text: b, fail_times: 1, retriable: false}
""")
    [t] = h.fire()
    h.run_all()
    assert h.execution(t.execution_id).status == "rolled_back"
    assert ("test.undo", "change") in h.calls
    [summary] = summaries(pagerduty_api)
    assert "(test.other) failed" in summary


def test_a_dry_run_that_fails_pages_nobody(h: Harness, pagerduty_api: PagerDutyStandIn) -> None:
    h.rules = rules(FAILING, guards="{dry_run: true}")
    [t] = h.fire()
    h.run_all()
    assert h.execution(t.execution_id).status in {"failed", "dry_run"}
    assert pagerduty_api.events == []


def test_an_expired_approval_pages_once(h: Harness, pagerduty_api: PagerDutyStandIn) -> None:
    h.rules = rules(FAILING, guards="{approval: true, approval_timeout: 10m}")
    [t] = h.fire()
    h.clock.advance(601)
    assert h.rules is not None
    for _ in range(2):  # a second sweep finds nothing more to expire or send
        with write_transaction(h.engine) as conn:
            expire_approvals(conn, now=h.clock(), rules=h.rules.rules)
        h.run_all()
    assert h.execution(t.execution_id).status == "cancelled"
    [summary] = summaries(pagerduty_api)
    assert "approval timed out after 10m: nobody approved or rejected it" in summary


def test_a_run_whose_worker_was_lost_too_often_pages(h: Harness, pagerduty_api: PagerDutyStandIn) -> None:
    h.rules = rules(FAILING)
    [t] = h.fire()
    with write_transaction(h.engine) as conn:  # as if three workers took it and died
        conn.execute(
            update(executions_t)
            .where(executions_t.c.id == t.execution_id)
            .values(status="running", lease_owner="gone", lease_expires_at=h.clock(), claims=3)
        )
    h.clock.advance(1)
    with write_transaction(h.engine) as conn:
        assert claim_next(conn, owner="w", now=h.clock(), lease=timedelta(seconds=30), max_claims=3) is None
    h.run_all()
    assert h.execution(t.execution_id).status == "failed"
    [summary] = summaries(pagerduty_api)
    assert "its worker was lost 3 times" in summary


# -- the loop breaker ---------------------------------------------------------------------------


def _rules_text(steps: str, *, guards: str = "{}", rule_extra: str = "") -> str:
    return f"""
rules:
  - name: fix-errors
    match: {{alertname: LangGraphHighErrorRate}}
    playbook: fix
    guards: {guards}
{rule_extra}
playbooks:
  - name: fix
    steps:
{steps}"""


FIX = """
      - action: test.do
        with: {text: fixed}
"""


def flap(h: Harness, times: int) -> list[Any]:
    """The graph breaks again right after each fix: a new episode of the same alert (same guard key) each time."""
    made = []
    for _ in range(times):
        [t] = h.fire()
        h.run_all()
        h.clock.advance(60)
        made.append(t)
    return made


def test_a_flapping_fix_is_quarantined_after_k_runs_then_lifted(
    engine: Engine, settings: Settings, pagerduty_api: PagerDutyStandIn
) -> None:
    with engine_harness(engine, settings) as h:
        h.rules = Rules(_rules_text(FIX))  # the default loop breaker: 3 runs within 1h
        runs = flap(h, 3)
        assert [h.execution(t.execution_id).status for t in runs] == ["succeeded"] * 3
        [tripped] = flap(h, 1)
        assert (tripped.status, tripped.guard) == ("suppressed", "loop_breaker")
        [again] = flap(h, 1)
        assert (again.status, again.guard) == ("suppressed", "quarantined")
        assert [name for name, _ in h.calls] == ["test.do"] * 3  # nothing ran after the third
        [summary] = summaries(pagerduty_api)  # one page, with the run history
        ids = [t.execution_id for t in runs]
        assert 'loop breaker: 3 runs for {alertname="LangGraphHighErrorRate"' in summary
        assert f"#{ids[0]} succeeded, #{ids[1]} succeeded, #{ids[2]} succeeded" in summary
        with engine.connect() as conn:
            [held] = quarantine.active(conn, rule="fix-errors")
        assert held["runs"] == ids and held["execution_id"] == tripped.execution_id

    # A restart (a new engine harness on the same database): still quarantined.
    with engine_harness(engine, settings, clock=Clock(h.clock())) as h2:
        h2.rules = Rules(_rules_text(FIX))
        h2.counter = itertools.count(100)  # new episodes, not redeliveries of the first harness's
        [after_restart] = flap(h2, 1)
        assert (after_restart.status, after_restart.guard) == ("suppressed", "quarantined")
        with write_transaction(engine) as conn:
            quarantine.lift(conn, int(held["id"]), actor="alice", reason="fixed the flapping graph", now=h2.clock())
            with pytest.raises(Conflict):
                quarantine.lift(conn, int(held["id"]), actor="bob", reason="again", now=h2.clock())
        [lifted] = flap(h2, 1)
        assert lifted.status == "pending" and h2.execution(lifted.execution_id).status == "succeeded"
        timeline = [e.action for e in h2.execution(lifted.execution_id).timeline]
    assert "execution.succeeded" in timeline
    assert len(pagerduty_api.events) == 1
    with engine.connect() as conn:
        row = conn.execute(select(quarantines_t)).mappings().one()
    assert (row["lifted_by"], row["lift_reason"]) == ("alice", "fixed the flapping graph")


def test_a_fix_that_lasts_is_not_counted_and_one_that_recurs_is(h: Harness) -> None:
    """A run whose verification passed and whose alert stays away never trips the breaker; once the alert
    comes back within the window, the run is `recurred` and counts."""
    h.rules = Rules(_rules_text(FIX + "      - action: verify.resolved\n        with: {within: 10m, poll: 1m}\n"))
    first = _run_to_resolved(h)
    with h.engine.connect() as conn:
        assert conn.execute(select(executions_t.c.outcome).where(executions_t.c.id == first)).scalar() == "resolved"
    # The alert comes back twice; each run verifies, then the alert comes back again.
    second = _run_to_resolved(h)
    third = _run_to_resolved(h)
    with h.engine.connect() as conn:
        outcomes = dict(conn.execute(select(executions_t.c.id, executions_t.c.outcome)).all())
    assert (outcomes[first], outcomes[second], outcomes[third]) == ("recurred", "recurred", "resolved")
    [fourth] = h.fire()  # third recurs: three runs without a lasting fix
    assert (fourth.status, fourth.guard) == ("suppressed", "loop_breaker")


def _run_to_resolved(h: Harness) -> int:
    [t] = h.fire()
    h.run_all()
    incident_id = h.execution(t.execution_id).incident_id
    with write_transaction(h.engine) as conn:
        conn.execute(update(incidents_t).where(incidents_t.c.id == incident_id).values(status="resolved"))
    h.clock.advance(61)
    h.run_all()
    assert h.execution(t.execution_id).status == "succeeded"
    h.clock.advance(60)
    return t.execution_id


def test_a_rule_can_turn_the_loop_breaker_off(h: Harness) -> None:
    h.rules = Rules(_rules_text(FIX, guards="{loop_breaker: false}"))
    made = flap(h, 5)
    assert [t.status for t in made] == ["pending"] * 5


# -- the ledger ---------------------------------------------------------------------------------


def test_the_ledger_settles_each_run(h: Harness) -> None:
    h.rules = Rules(_rules_text(FIX, guards="{loop_breaker: false}"))
    [resolves] = h.fire({"namespace": "a"})
    [stays] = h.fire({"namespace": "b"})
    h.run_all()
    h.rules = Rules(_rules_text(FAILING, guards="{loop_breaker: false}"))
    [fails] = h.fire({"namespace": "c"})
    h.run_all()
    with write_transaction(h.engine) as conn:
        assert ledger.settle_due(conn, now=h.clock()) == []  # nothing resolved, no window over yet
        incident_id = h.execution(resolves.execution_id).incident_id
        conn.execute(
            update(incidents_t).where(incidents_t.c.id == incident_id).values(status="resolved", resolved_at=h.clock())
        )
        assert ledger.settle_due(conn, now=h.clock()) == [("fix-errors", "resolved")]
    h.clock.advance(3601)
    with write_transaction(h.engine) as conn:
        assert ledger.settle_due(conn, now=h.clock()) == [("fix-errors", "not_resolved")]
        outcomes = dict(conn.execute(select(executions_t.c.id, executions_t.c.outcome)).all())
        [day, week] = ledger.records(conn, now=h.clock())
        by_key = ledger.records(conn, now=h.clock(), by_key=True)
    assert (outcomes[resolves.execution_id], outcomes[stays.execution_id], outcomes[fails.execution_id]) == (
        "resolved",
        "not_resolved",
        "failed",
    )
    assert (day.period, day.finished, day.counts["resolved"], day.counts["failed"]) == ("24h", 3, 1, 1)
    assert day.success_rate == pytest.approx(1 / 3) and week.counts == day.counts
    assert len([r for r in by_key if r.period == "24h"]) == 3
