"""Many executions in flight at once, on SQLite and PostgreSQL: the worker pool (playbooks/worker.py).

Two services share one database, each with a pool of worker threads, and run 200 executions at
once whose steps wait on the "network" (a sleep). Each step runs exactly once, no execution is run
by both, many run at the same time (not a handful), and a cancelled execution calls no further step.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, func, select

from controlplane.actions.base import ActionContext, ActionRegistry, ActionResult, Params, action
from controlplane.actions.builtin import build_registry
from controlplane.db.engine import make_engine
from controlplane.db.tables import audit_t, executions_t, steps_t
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import ingest_notification
from controlplane.playbooks import service
from controlplane.playbooks.contexts import build_ports
from controlplane.playbooks.executor import Executor
from controlplane.playbooks.trigger import trigger_for_alerts
from controlplane.playbooks.worker import Worker
from controlplane.resilience.bulkhead import Bulkheads
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.telemetry import Metrics
from tests.conftest import make_settings
from tests.helpers import sample_notification, wait_for
from tests.integration.test_playbooks import GROUP_BY, rules

EXECUTIONS = 200
THREADS = 16  # per service
NETWORK_WAIT = 0.05  # each call "waits on the network" this long


class Net(Params):
    text: str = ""


@dataclass
class Calls:
    """Every call made, by (execution's idempotency key, action), and how many were in flight at most."""

    made: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_service: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def registry(self, service_name: str) -> ActionRegistry:
        registry = ActionRegistry()
        for spec in build_registry().specs():
            registry.register(spec)
        for name in ("test.net", "test.after"):
            self._register(registry, name, service_name)
        return registry

    def _register(self, registry: ActionRegistry, name: str, service_name: str) -> None:
        @action(name, params=Net, into=registry)
        def call(ctx: ActionContext, params: Net) -> ActionResult:
            """Wait on the 'network', counting the calls in flight."""
            with self.lock:
                self.made[(ctx.idempotency_key, name)] += 1
                self.by_service[service_name] += 1
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                time.sleep(NETWORK_WAIT)
            finally:
                with self.lock:
                    self.in_flight -= 1
            return ActionResult(value=params.text)


@contextmanager
def service_worker(database_url: str, calls: Calls, name: str) -> Iterator[Worker]:
    """One service's worker: its own engine (as a replica has), a pool of THREADS, started."""
    engine = make_engine(database_url, pool_size=THREADS, max_overflow=THREADS)
    settings = make_settings(database_url, worker_lease_seconds=30, max_claims=3)
    executor = Executor(
        engine=engine,
        registry=calls.registry(name),
        settings=settings,
        breakers=CircuitBreakers(registry=CollectorRegistry()),
        metrics=Metrics(CollectorRegistry()),
        bulkheads=Bulkheads(slots=2 * THREADS),  # the targets' slots are not what this test bounds
        ports=build_ports(settings, engine),
    )
    worker = Worker(
        engine=engine,
        executor=executor,
        instance_id=name,
        threads=THREADS,
        lease_seconds=30,
        poll_seconds=0.05,
        max_claims=3,
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        engine.dispose()


def fire(engine: Engine, count: int, steps: str) -> list[int]:
    """`count` alerts, each of its own group, each starting its own execution; their ids."""
    ruleset = rules(steps)
    alerts = [
        {"labels": {"namespace": f"ns-{i}"}, "fingerprint": f"pool{i:05d}", "startsAt": "2026-12-06T08:00:00Z"}
        for i in range(count)
    ]
    ids: list[int] = []
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        for alert in alerts:
            now = datetime.now(UTC)
            payload = AlertmanagerNotification.model_validate(sample_notification(alert))
            result = ingest_notification(conn, payload, group_by=GROUP_BY, now=now)
            triggered = trigger_for_alerts(
                conn, alert_ids=result.new_alert_ids, rules=ruleset, default_group_by=GROUP_BY, now=now
            )
            ids += [t.execution_id for t in triggered]
    return ids


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.execute(select(executions_t.c.status)).scalars())


TWO_NETWORK_STEPS = """
      - action: test.net
        with: {text: "first"}
      - action: test.after
        with: {text: "second"}
"""


@pytest.mark.parametrize("services", [1, 2])
def test_many_executions_at_once_each_step_runs_exactly_once(engine: Engine, database_url: str, services: int) -> None:
    calls = Calls()
    ids = fire(engine, EXECUTIONS, TWO_NETWORK_STEPS)
    assert len(ids) == EXECUTIONS
    began = time.monotonic()
    with ExitStack() as stack:
        workers = [stack.enter_context(service_worker(database_url, calls, f"svc{n}")) for n in range(services)]
        for worker in workers:
            worker.notify()
        wait_for(
            "every execution to finish",
            lambda: statuses(engine)["succeeded"] == EXECUTIONS or None,
            60,
            interval=0.2,
            details=lambda: str(statuses(engine)),
        )
    elapsed = time.monotonic() - began

    # Each step of each execution was called exactly once, by one service.
    assert sorted(calls.made.values()) == [1] * (2 * EXECUTIONS)
    assert {action for _, action in calls.made} == {"test.net", "test.after"}
    with engine.connect() as conn:
        claims = Counter(conn.execute(select(executions_t.c.claims)).scalars())
        step_rows = conn.execute(select(steps_t.c.status, func.count()).group_by(steps_t.c.status)).all()
        started = conn.execute(
            select(func.count()).select_from(audit_t).where(audit_t.c.action == "step.running")
        ).scalar_one()
    assert claims == {1: EXECUTIONS}, "an execution was claimed twice"
    assert dict(step_rows) == {"succeeded": 2 * EXECUTIONS}
    assert started == 2 * EXECUTIONS
    # Not a handful of threads: many calls waited on the network at once, never more than the pools hold.
    assert THREADS // 2 <= calls.most_in_flight <= services * THREADS
    # 400 calls of 50 ms on 2 threads would take 10 s; the pool overlaps their waits.
    assert elapsed < 2 * EXECUTIONS * NETWORK_WAIT / 2
    if services == 2:
        assert all(calls.by_service[f"svc{n}"] > 0 for n in range(services)), calls.by_service


def test_a_cancelled_execution_calls_no_further_step_while_others_run_on(engine: Engine, database_url: str) -> None:
    calls = Calls()
    ids = fire(engine, EXECUTIONS // 2, TWO_NETWORK_STEPS)
    cancelled = set(ids[::10])
    with service_worker(database_url, calls, "svc0") as worker:
        worker.notify()
        # Cancelled while running (or before being claimed): either way, no step after the cancel.
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            for execution_id in cancelled:
                service.cancel(
                    conn=conn, execution_id=execution_id, actor="carol", reason="wrong fix", now=datetime.now(UTC)
                )
        wait_for(
            "every execution to end",
            lambda: statuses(engine)["succeeded"] == len(ids) - len(cancelled) or None,
            60,
            interval=0.2,
            details=lambda: str(statuses(engine)),
        )
    assert statuses(engine)["cancelled"] == len(cancelled)
    for execution_id in cancelled:
        assert (f"{execution_id}:forward:1", "test.after") not in calls.made
    assert sorted(calls.made.values()) == [1] * len(calls.made)


def test_stopping_lets_the_claimed_executions_finish_and_claims_no_more(engine: Engine, database_url: str) -> None:
    """A rolling restart: what the pool claimed ends (none is left `running` for a takeover); the rest waits."""
    calls = Calls()
    ids = fire(engine, 3 * THREADS, TWO_NETWORK_STEPS)
    with service_worker(database_url, calls, "svc0") as worker:
        worker.notify()
        wait_for("the pool to fill", lambda: calls.most_in_flight >= THREADS // 2 or None, 10)
    # service_worker's exit stopped the worker: every execution it claimed ended, the others were never claimed.
    counted = statuses(engine)
    assert counted["running"] == 0, counted
    assert 0 < counted["succeeded"] < len(ids) and counted["succeeded"] + counted["pending"] == len(ids), counted
    assert sorted(calls.made.values()) == [1] * (2 * counted["succeeded"])
