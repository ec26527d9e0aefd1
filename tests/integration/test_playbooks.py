"""The playbook engine on SQLite and PostgreSQL: guards, steps, retries, rollback, waits, leases."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, update

from controlplane.actions.base import (
    ActionContext,
    ActionError,
    ActionRegistry,
    ActionResult,
    Params,
    action,
)
from controlplane.actions.builtin import build_registry
from controlplane.config import Settings
from controlplane.db.tables import executions_t, incidents_t
from controlplane.errors import ElsewhereError
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import ingest_notification
from controlplane.playbooks import service
from controlplane.playbooks.contexts import ActionContexts, build_ports
from controlplane.playbooks.executor import Executor
from controlplane.playbooks.page_sender import page_sender
from controlplane.playbooks.pages import Pager
from controlplane.playbooks.schemas import ExecutionDetail
from controlplane.playbooks.trigger import Triggered, trigger_for_alerts
from controlplane.playbooks.worker import Worker, claim_next
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.rules.schema import Playbook, Rule, RuleFile
from controlplane.telemetry import Metrics
from tests.conftest import load_payload, make_settings
from tests.helpers import Clock, sample_notification, wait_for

GROUP_BY = ["alertname", "namespace"]


class Rules:
    """Equality matching over RuleFile data: enough for the engine (the real index is tested with the loader)."""

    def __init__(self, text: str) -> None:
        parsed = RuleFile.model_validate(yaml.safe_load(text))
        self.rules: list[Rule] = parsed.rules
        self.playbooks: dict[str, Playbook] = {p.name: p for p in parsed.playbooks}

    def match(self, labels: dict[str, str]) -> list[Rule]:
        return [r for r in self.rules if r.match and all(labels.get(k) == v for k, v in r.match.items())]


class Recorder(Params):
    text: str = ""
    fail_times: int = 0
    retriable: bool = True
    sleep: float = 0.0
    elsewhere: bool = False  # the failure is another system's (ElsewhereError), not the target's


class Blocker(Params):
    target: str
    text: str = ""


@dataclass
class Harness:
    engine: Engine
    clock: Clock
    worker: Worker
    breakers: CircuitBreakers
    pager: Pager  # sends the pages the executions queue (playbooks/pages.py)
    calls: list[tuple[str, str]] = field(default_factory=list)
    rules: Rules | None = None
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    gate: threading.Event = field(default_factory=threading.Event)  # opens the `hung` target of test.block
    started: list[str] = field(default_factory=list)  # test.block calls made, by their text
    pages_sent: int = 0

    def fire(self, labels: dict[str, str] | None = None, fingerprint: str | None = None) -> list[Triggered]:
        alert = {"labels": labels or {}, "fingerprint": fingerprint or f"fp{next(self.counter)}"}
        return self.deliver(sample_notification(alert))

    def deliver(self, payload: dict[str, Any]) -> list[Triggered]:
        assert self.rules is not None
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            result = ingest_notification(
                conn, AlertmanagerNotification.model_validate(payload), group_by=GROUP_BY, now=self.clock()
            )
            return trigger_for_alerts(
                conn, alert_ids=result.new_alert_ids, rules=self.rules, default_group_by=GROUP_BY, now=self.clock()
            )

    def run_all(self) -> int:
        """Run every runnable execution, then send the pages they queued; how many executions ran."""
        ran = 0
        while self.worker.run_once() is not None:
            ran += 1
        self.pages_sent += self.pager.run_once()
        return ran

    def execution(self, execution_id: int) -> ExecutionDetail:
        with self.engine.connect() as conn:
            return service.get_execution(conn=conn, execution_id=execution_id)


def make_registry(
    h_calls: list[tuple[str, str]], gate: threading.Event | None = None, started: list[str] | None = None
) -> ActionRegistry:
    registry = ActionRegistry()
    gate = gate or threading.Event()
    started = started if started is not None else []
    for spec in build_registry().specs():
        registry.register(spec)
    failures: dict[str, int] = {}

    def make(name: str) -> None:
        @action(name, params=Recorder, into=registry)
        def record(ctx: ActionContext, params: Recorder) -> ActionResult:
            """Record the call; fail the first `fail_times` calls of this step."""
            key = f"{ctx.idempotency_key}:{name}"
            failures[key] = failures.get(key, 0) + 1
            if params.sleep:
                time.sleep(params.sleep)
            if failures[key] <= params.fail_times:
                error = ElsewhereError if params.elsewhere else ActionError
                raise error(f"{name} failed (try {failures[key]})", retriable=params.retriable)
            h_calls.append((name, params.text))
            return ActionResult(value=params.text.upper(), output={"echo": params.text})

    for name in ("test.do", "test.undo", "test.other"):
        make(name)

    @action("test.block", params=Blocker, target=lambda _ctx, params: params.target, into=registry)
    def block(ctx: ActionContext, params: Blocker) -> ActionResult:
        """Record that the call was made; on target `hung`, then wait for the harness's gate."""
        started.append(params.text)
        if params.target == "hung":
            gate.wait(60)
        return ActionResult(value=params.text)

    return registry


@contextmanager
def engine_harness(engine: Engine, settings: Settings, clock: Clock | None = None) -> Iterator[Harness]:
    """The engine with the actions of make_registry, one worker and a hand-moved clock, on the test's settings.

    On leaving, the `hung` target of test.block answers, so no call stays blocked.
    """
    clock = clock or Clock()
    calls: list[tuple[str, str]] = []
    gate, started = threading.Event(), []
    breakers = CircuitBreakers(failure_threshold=3, open_timeout=60, clock=clock.monotonic)
    registry = make_registry(calls, gate, started)
    ports = build_ports(settings, engine)
    executor = Executor(
        engine=engine,
        registry=registry,
        settings=settings,
        breakers=breakers,
        metrics=Metrics(CollectorRegistry()),
        clock=clock,
        sleep=lambda _s: None,
        ports=ports,
    )
    sender = page_sender(engine, ActionContexts(ports=ports, clock=clock), registry)
    pager = Pager(engine, send=sender, clock=clock)
    worker = Worker(
        engine=engine,
        executor=executor,
        instance_id="test",
        threads=1,
        lease_seconds=30,
        poll_seconds=0.05,
        max_claims=3,
        clock=clock,
    )
    try:
        yield Harness(
            engine=engine,
            clock=clock,
            worker=worker,
            breakers=breakers,
            calls=calls,
            gate=gate,
            started=started,
            pager=pager,
        )
    finally:
        gate.set()


@pytest.fixture
def harness(engine: Engine, database_url: str) -> Iterator[Harness]:
    with engine_harness(engine, make_settings(database_url, worker_lease_seconds=30, max_claims=3)) as harness:
        yield harness


def rules(steps: str, guards: str = "{}", extra_rule: str = "") -> Rules:
    return Rules(f"""
rules:
  - name: fix-errors
    match: {{alertname: LangGraphHighErrorRate}}
    playbook: fix
    params: {{team: agents}}
    guards: {guards}
{extra_rule}
playbooks:
  - name: fix
    steps:
{steps}
""")


TWO_STEPS = """
      - id: first
        action: test.do
        with: {text: "{{ alert.labels.graph_name }} for {{ params.team }}"}
      - action: test.other
        with: {text: "after {{ steps.first.value }}"}
"""


def test_an_alert_runs_its_playbook_with_rendered_inputs(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS)
    [triggered] = harness.fire()
    assert triggered.status == "pending"
    assert harness.run_all() == 1
    assert harness.calls == [("test.do", "support_bot for agents"), ("test.other", "after SUPPORT_BOT FOR AGENTS")]
    detail = harness.execution(triggered.execution_id)
    assert detail.status == "succeeded" and detail.finished_at is not None
    assert [(s.index, s.status, s.attempts) for s in detail.steps] == [(0, "succeeded", 1), (1, "succeeded", 1)]
    assert detail.steps[0].inputs == {"text": "support_bot for agents"}
    assert detail.steps[0].idempotency_key == f"{triggered.execution_id}:forward:0"
    actions = [e.action for e in detail.timeline]
    assert actions[0] == "execution.created" and actions[-1] == "execution.succeeded"
    assert actions.count("step.succeeded") == 2


def test_a_redelivered_alert_runs_once(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS)
    payload = load_payload("alertmanager_firing.json")
    first = harness.deliver(payload)
    again = harness.deliver(copy.deepcopy(payload))
    assert len(first) == 2 and again == []  # two alerts of one incident; the 2nd is suppressed (in progress)
    assert [t.status for t in first] == ["pending", "suppressed"]
    harness.run_all()
    assert len(harness.calls) == 2


def test_retriable_errors_are_retried_then_succeed(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.do
        with: {text: x, fail_times: 2}
        retry: {attempts: 3, initial: 1s}
""")
    [t] = harness.fire()
    harness.run_all()
    detail = harness.execution(t.execution_id)
    assert detail.status == "succeeded"
    assert detail.steps[0].attempts == 3


def test_non_retriable_errors_fail_at_once_and_roll_back_in_reverse(harness: Harness) -> None:
    harness.rules = rules("""
      - id: a
        action: test.do
        with: {text: a}
        rollback: {action: test.undo, with: {text: "undo {{ steps.a.value }}"}}
      - id: b
        action: test.do
        with: {text: b}
        rollback: test.undo
      - id: c
        action: test.other
        with: {text: c, fail_times: 5, retriable: false}
        retry: {attempts: 3}
""")
    [t] = harness.fire()
    harness.run_all()
    assert harness.calls == [("test.do", "a"), ("test.do", "b"), ("test.undo", "b"), ("test.undo", "undo A")]
    detail = harness.execution(t.execution_id)
    assert detail.status == "rolled_back"
    assert "step 3 (c) failed" in detail.reason  # counted from 1, as people count; s.index stays 2
    failed = [s for s in detail.steps if s.status == "failed"]
    assert [(s.index, s.attempts) for s in failed] == [(2, 1)]
    assert [(s.phase, s.index) for s in detail.steps if s.phase == "rollback"] == [("rollback", 1), ("rollback", 0)]


def test_on_failure_continue_and_escalate(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.do
        with: {text: a, fail_times: 1, retriable: false}
        on_failure: continue
      - action: test.do
        with: {text: b}
      - action: test.other
        with: {text: c, fail_times: 1, retriable: false}
        on_failure: escalate
""")
    [t] = harness.fire()
    harness.run_all()
    detail = harness.execution(t.execution_id)
    assert detail.status == "failed"  # nothing to roll back
    assert harness.calls == [("test.do", "b")]
    assert "execution.escalated" in [e.action for e in detail.timeline]


@pytest.mark.parametrize(
    "label",
    ["{{ ''.__class__.__mro__ }}", "{% for x in range(10**9) %}{% endfor %}", "{{ config }}", "<script>x</script>"],
)
def test_label_values_are_data_never_templates(harness: Harness, label: str) -> None:
    harness.rules = rules("""
      - action: test.do
        with: {text: "graph={{ alert.labels.graph_name }}"}
""")
    [t] = harness.fire({"graph_name": label})
    harness.run_all()
    assert harness.calls == [("test.do", f"graph={label}")]
    assert harness.execution(t.execution_id).status == "succeeded"


def test_sandbox_refuses_unsafe_templates_in_rule_files(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.do
        with: {text: "{{ ''.__class__.__mro__[1].__subclasses__() }}"}
""")
    [t] = harness.fire()
    harness.run_all()
    detail = harness.execution(t.execution_id)
    assert detail.status == "failed" and harness.calls == []
    assert "unsafe" in (detail.steps[0].error or "")


def test_pause_suppresses_with_an_audited_reason(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS)
    with harness.engine.connect().execution_options(write=True) as conn, conn.begin():
        service.set_automation(conn=conn, actor="alice", now=harness.clock(), paused=True, reason="deploy freeze")
    [t] = harness.fire()
    assert t.status == "suppressed" and "deploy freeze" in t.reason
    assert harness.run_all() == 0 and harness.calls == []
    detail = harness.execution(t.execution_id)
    assert detail.timeline[0].action == "execution.suppressed"
    assert detail.timeline[0].detail["guard"] == "paused"


@pytest.mark.parametrize("where", ["rule", "global"])
def test_dry_run_records_and_calls_nothing(harness: Harness, where: str) -> None:
    harness.rules = rules(TWO_STEPS, guards="{dry_run: true}" if where == "rule" else "{}")
    if where == "global":
        with harness.engine.connect().execution_options(write=True) as conn, conn.begin():
            service.set_automation(conn=conn, actor="alice", now=harness.clock(), dry_run=True, reason="trial")
    [t] = harness.fire()
    harness.run_all()
    detail = harness.execution(t.execution_id)
    assert detail.status == "dry_run" and detail.dry_run
    assert harness.calls == []
    assert [s.status for s in detail.steps] == ["skipped", "skipped"]
    assert detail.steps[0].output == {"dry_run": True, "would_call": "test.do"}


def test_cooldown_per_group_key(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS, guards="{cooldown: 10m}")
    harness.fire()
    harness.run_all()
    harness.clock.advance(60)
    [second] = harness.fire()  # same alertname+namespace: same group key
    assert second.status == "suppressed" and second.guard == "cooldown"
    [other] = harness.fire({"namespace": "billing"})  # another group is not cooled down
    assert other.status == "pending"
    harness.clock.advance(600)
    [third] = harness.fire()
    assert third.status == "pending"


def test_a_cooldown_keyed_per_provider_and_model_does_not_block_the_fallback_model(harness: Harness) -> None:
    """Issue 16: failing over off one model cools that model down, not the model the graph moved to."""
    harness.rules = Rules("""
rules:
  - name: provider-failover
    match: {alertname: LLMProviderErrors}
    group_by: [alertname, gen_ai_provider_name, gen_ai_request_model]
    playbook: fix
    guards: {cooldown: 15m}
playbooks:
  - name: fix
    steps:
      - action: test.do
        with: {text: "{{ alert.labels.gen_ai_provider_name }}/{{ alert.labels.gen_ai_request_model }}"}
""")
    claude = {"alertname": "LLMProviderErrors", "gen_ai_provider_name": "anthropic",
              "gen_ai_request_model": "claude-sonnet-4"}  # fmt: skip
    gpt = {**claude, "gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}
    [first] = harness.fire(claude)
    assert first.status == "pending"
    harness.run_all()
    harness.clock.advance(120)
    [again] = harness.fire({**claude, "graph_name": "summarize"})  # the same model failing for another graph
    assert (again.status, again.guard) == ("suppressed", "cooldown")
    [fallback] = harness.fire(gpt)  # the model the graph moved to fails in turn: not cooled down
    assert (fallback.status, fallback.guard) == ("pending", None)
    [other_provider_same_name] = harness.fire({**claude, "gen_ai_provider_name": "bedrock"})
    assert other_provider_same_name.status == "pending"  # keyed on the pair, not the model name alone
    harness.run_all()
    assert harness.calls == [
        ("test.do", "anthropic/claude-sonnet-4"),
        ("test.do", "openai/gpt-4o"),
        ("test.do", "bedrock/claude-sonnet-4"),
    ]


def test_max_runs_per_window(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS, guards="{max_runs: {count: 2, per: 1h}}")
    statuses = []
    for i in range(4):
        [t] = harness.fire({"namespace": f"ns{i}"})
        statuses.append((t.status, t.guard))
        harness.run_all()
    assert statuses == [("pending", None), ("pending", None), ("suppressed", "max_runs"), ("suppressed", "max_runs")]
    harness.clock.advance(3601)
    assert harness.fire({"namespace": "later"})[0].status == "pending"


def test_max_concurrent(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS, guards="{max_concurrent: 1}")
    [a] = harness.fire({"namespace": "a"})
    [b] = harness.fire({"namespace": "b"})
    assert (a.status, b.status, b.guard) == ("pending", "suppressed", "max_concurrent")


def storm(namespaces: list[str]) -> dict[str, Any]:
    """One notification holding a new alert per namespace given (repeats make several per group key)."""
    return sample_notification(
        *({"labels": {"namespace": namespace}, "fingerprint": f"storm{i}"} for i, namespace in enumerate(namespaces))
    )


@pytest.mark.parametrize(
    ("guards", "expected"),
    [
        # One run per group key; the rest of the batch finds it in progress.
        ("{cooldown: 10m}", ["pending", "pending", "active", "active", "active"]),
        # The limits count the runs this very transaction started.
        ("{max_runs: {count: 1, per: 1h}}", ["pending", "max_runs", "active", "max_runs", "active"]),
        ("{max_concurrent: 1}", ["pending", "max_concurrent", "active", "max_concurrent", "active"]),
    ],
)
def test_guards_hold_within_one_storm_batch(harness: Harness, guards: str, expected: list[str]) -> None:
    harness.rules = rules(TWO_STEPS, guards=guards)
    triggered = harness.deliver(storm(["a", "b", "a", "b", "a"]))
    assert [t.guard or t.status for t in triggered] == expected
    with harness.engine.connect() as conn:
        statuses = list(conn.execute(select(executions_t.c.status).order_by(executions_t.c.id)).scalars())
    assert statuses.count("pending") == expected.count("pending")


def test_approval_then_approve_or_reject(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS, guards="{approval: true}")
    [t] = harness.fire()
    assert t.status == "awaiting_approval"
    assert harness.run_all() == 0
    with harness.engine.connect().execution_options(write=True) as conn, conn.begin():
        approved = service.approve(
            conn=conn, execution_id=t.execution_id, actor="bob", reason="go", now=harness.clock()
        )
    assert approved.status == "pending" and approved.decided_by == "bob"
    harness.run_all()
    assert harness.execution(t.execution_id).status == "succeeded"

    [u] = harness.fire({"namespace": "other"})
    with harness.engine.connect().execution_options(write=True) as conn, conn.begin():
        service.reject(conn=conn, execution_id=u.execution_id, actor="bob", reason="not now", now=harness.clock())
    assert harness.execution(u.execution_id).status == "cancelled"
    from controlplane.errors import Conflict

    with pytest.raises(Conflict), harness.engine.connect().execution_options(write=True) as conn, conn.begin():
        service.approve(conn=conn, execution_id=u.execution_id, actor="bob", reason="", now=harness.clock())


def test_wait_releases_the_worker_and_resumes_later(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.do
        with: {text: before}
      - action: wait
        with: {duration: 5m}
      - action: test.other
        with: {text: after}
""")
    [t] = harness.fire()
    harness.run_all()
    detail = harness.execution(t.execution_id)
    assert detail.status == "waiting" and detail.lease_owner is None
    assert detail.wake_at == harness.clock() + timedelta(minutes=5)
    harness.clock.advance(120)
    assert harness.run_all() == 0  # not yet
    harness.clock.advance(181)
    assert harness.run_all() == 1
    assert harness.execution(t.execution_id).status == "succeeded"
    assert harness.calls == [("test.do", "before"), ("test.other", "after")]


def test_verify_resolved_succeeds_or_escalates(harness: Harness) -> None:
    harness.rules = rules("""
      - action: verify.resolved
        with: {within: 10m, poll: 1m}
        on_failure: escalate
""")
    [ok] = harness.fire({"namespace": "a"})
    [late] = harness.fire({"namespace": "b"})
    harness.run_all()
    assert harness.execution(ok.execution_id).status == "waiting"
    with harness.engine.begin() as conn:
        incident_id = harness.execution(ok.execution_id).incident_id
        conn.execute(update(incidents_t).where(incidents_t.c.id == incident_id).values(status="resolved"))
    harness.clock.advance(61)
    harness.run_all()
    assert harness.execution(ok.execution_id).status == "succeeded"
    for _ in range(10):
        harness.clock.advance(61)
        harness.run_all()
    detail = harness.execution(late.execution_id)
    assert detail.status == "failed" and "not resolved within 10m" in detail.reason
    assert "execution.escalated" in [e.action for e in detail.timeline]


def test_step_timeout(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.do
        with: {text: slow, sleep: 2}
        timeout: 0.2
""")
    [t] = harness.fire()
    began = time.monotonic()
    harness.run_all()
    assert time.monotonic() - began < 1.5
    detail = harness.execution(t.execution_id)
    assert detail.status == "failed" and "timed out after 0.2s" in (detail.steps[0].error or "")


def test_a_hung_target_uses_up_its_own_slots_only_and_a_failed_step_never_calls(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.block
        with: {target: "{{ alert.labels.target }}", text: "{{ alert.labels.namespace }}"}
        timeout: 0.5
""")
    harness.breakers.get("test.block:hung", failure_threshold=10)  # keep it closed: this test is about slots
    hung = [harness.fire({"namespace": f"hung{i}", "target": "hung"})[0] for i in range(5)]
    assert harness.run_all() == 5
    errors = [harness.execution(t.execution_id).steps[0].error or "" for t in hung]
    assert all(e.startswith("timed out after 0.5s") for e in errors), errors
    # Four calls hold the hung target's four slots; the fifth found none free and was never made.
    assert errors[4] == "timed out after 0.5s waiting for a free slot on test.block:hung"

    [healthy] = harness.fire({"namespace": "healthy", "target": "healthy"})
    harness.run_all()
    # Within its 0.5 s timeout: not held up behind the hung target's calls.
    assert harness.execution(healthy.execution_id).status == "succeeded"

    harness.gate.set()  # the hung target answers: its abandoned calls return and free their slots
    deadline = time.monotonic() + 10
    while any(t.name.startswith("action:") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(harness.started) == ["healthy", "hung0", "hung1", "hung2", "hung3"]
    assert harness.breakers.get("test.block:hung").snapshot()["failed"] == 5
    assert harness.breakers.get("test.block:healthy").snapshot()["failed"] == 0


def test_an_open_circuit_refuses_calls_with_an_audited_reason(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.do
        with: {text: x, fail_times: 9}
""")
    for i in range(3):
        harness.fire({"namespace": f"n{i}"})
        harness.run_all()
    assert harness.breakers.get("test.do").state == "open"
    [t] = harness.fire({"namespace": "n9"})
    harness.run_all()
    detail = harness.execution(t.execution_id)
    assert "is open" in (detail.steps[0].error or "")
    assert "step.refused" in [e.action for e in detail.timeline]


def test_another_systems_failure_does_not_open_the_targets_circuit(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.do
        with: {text: x, fail_times: 9, elsewhere: true}
""")
    for i in range(4):
        harness.fire({"namespace": f"n{i}"})
        harness.run_all()
    breaker = harness.breakers.get("test.do")
    assert (breaker.state, breaker.snapshot()["failed"]) == ("closed", 0)


def test_expired_lease_is_taken_over_and_resumed(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS)
    [t] = harness.fire()
    from controlplane.db.engine import write_transaction

    with write_transaction(harness.engine) as conn:  # a worker claims it, then dies (kill -9) without a word
        assert claim_next(conn, owner="dead", now=harness.clock(), lease=timedelta(seconds=30), max_claims=3)
    assert harness.run_all() == 0  # its lease still holds
    harness.clock.advance(31)
    assert harness.run_all() == 1
    detail = harness.execution(t.execution_id)
    assert detail.status == "succeeded" and detail.claims == 2
    assert any("taken over from dead" in e.detail.get("reason", "") for e in detail.timeline)


def test_an_execution_whose_worker_keeps_dying_is_failed_not_stuck(harness: Harness) -> None:
    harness.rules = rules(TWO_STEPS)
    [t] = harness.fire()
    from controlplane.db.engine import write_transaction

    for n in range(3):
        with write_transaction(harness.engine) as conn:
            claim_next(conn, owner=f"dead{n}", now=harness.clock(), lease=timedelta(seconds=30), max_claims=3)
        harness.clock.advance(31)
    assert harness.run_all() == 0
    detail = harness.execution(t.execution_id)
    assert detail.status == "failed" and "lost 3 times" in detail.reason


def test_a_worker_that_lost_its_lease_records_nothing(harness: Harness) -> None:
    harness.rules = rules("""
      - action: test.block
        with: {text: slow, target: hung}
        timeout: 30s
      - action: test.other
        with: {text: never}
""")
    [t] = harness.fire()
    runner = threading.Thread(target=harness.worker.run_once)
    runner.start()
    # Cancelled while its first step runs: the step waits on the gate until the cancel is committed (a fixed
    # sleep in the step raced the cancel whenever the test process paused, e.g. for a garbage collection).
    wait_for("the first step started", lambda: harness.started == ["slow"], 5)
    with harness.engine.connect().execution_options(write=True) as conn, conn.begin():
        service.cancel(conn=conn, execution_id=t.execution_id, actor="carol", reason="wrong fix", now=harness.clock())
    harness.gate.set()  # the call returns now, after the cancel: what it brings must not be recorded
    runner.join(5)
    detail = harness.execution(t.execution_id)
    assert detail.status == "cancelled"
    assert ("test.other", "never") not in harness.calls
    assert [s.status for s in detail.steps] == ["cancelled"]


def test_guards_hold_under_concurrent_triggers(harness: Harness, engine: Engine) -> None:
    """Many deliveries at once (two replicas, a storm): max_runs is never exceeded."""
    harness.rules = rules(TWO_STEPS, guards="{max_runs: {count: 3, per: 1h}}")
    errors: list[BaseException] = []

    def storm(offset: int) -> None:
        try:
            for i in range(10):
                harness.fire({"namespace": f"s{offset}-{i}"}, fingerprint=f"storm-{offset}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=storm, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with engine.connect() as conn:
        statuses = list(conn.execute(select(executions_t.c.status)).scalars())
    assert len(statuses) == 40
    assert statuses.count("pending") == 3
