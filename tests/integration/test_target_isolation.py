"""A hung action target cannot delay a call to another target, and no call is made after its step failed.

Through the running service (webhook -> worker -> `http.request`) on SQLite and PostgreSQL,
against two loopback stand-ins (tests/standins/http_target.py): one on 127.0.0.2 accepts every
request and never answers, one on 127.0.0.1 answers at once. Both record when each request
arrives; the database records when each step was recorded failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from controlplane.actions.base import ActionContext, ActionError
from controlplane.actions.builtin import build_registry
from controlplane.app import create_app
from controlplane.db.tables import executions_t, steps_t
from controlplane.rules.schema import Target
from tests.conftest import WEBHOOK, make_settings
from tests.helpers import action_context, wait_for
from tests.integration.serverproc import AUTH, alert_named
from tests.standins.http_target import Arrival, HttpTarget

HUNG_STEPS = 4  # as many as the old shared action pool had threads (worker_threads 2 x 2)
HUNG_STEP_TIMEOUT = 1.0
HEALTHY_STEP_TIMEOUT = 3.0
CLIENT_TIMEOUT = 60  # the request's own timeout: a hung call would hold its thread this long
PROMPT_SECONDS = 2.0  # from the healthy alert's webhook to its request arriving, on a loaded machine
CLOCK_GRANULARITY = timedelta(milliseconds=5)


def finished_steps(engine: Engine, rule: str) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            select(steps_t.c.status, steps_t.c.error, steps_t.c.finished_at, steps_t.c.inputs)
            .join(executions_t, executions_t.c.id == steps_t.c.execution_id)
            .where(executions_t.c.rule_name == rule, steps_t.c.finished_at.is_not(None))
            .order_by(steps_t.c.id)
        ).all()


def bulkhead_threads() -> list[threading.Thread]:
    """Threads still running an action call (they carry the call's target in their name)."""
    return [t for t in threading.enumerate() if t.name.startswith("action:")]


@pytest.fixture
def hung() -> Iterator[HttpTarget]:
    target = HttpTarget("127.0.0.2", hang=True)
    yield target
    target.close()


@pytest.fixture
def healthy() -> Iterator[HttpTarget]:
    target = HttpTarget("127.0.0.1")
    yield target
    target.close()


def test_a_hung_target_neither_delays_a_healthy_one_nor_gets_calls_after_its_steps_failed(
    engine: Engine, database_url: str, tmp_path: Path, hung: HttpTarget, healthy: HttpTarget
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(f"""
rules:
  - {{name: call-hung, match: {{alertname: CallHung}}, group_by: [alertname, index], playbook: call-hung}}
  - {{name: call-healthy, match: {{alertname: CallHealthy}}, playbook: call-healthy}}
playbooks:
  - name: call-hung
    steps:
      - action: http.request
        with: {{url: "{hung.url}/hung/{{{{ alert.labels.index }}}}", timeout: {CLIENT_TIMEOUT}}}
        timeout: {HUNG_STEP_TIMEOUT}
  - name: call-healthy
    steps:
      - action: http.request
        with: {{url: "{healthy.url}/healthy", timeout: {CLIENT_TIMEOUT}}}
        timeout: {HEALTHY_STEP_TIMEOUT}
""")
    settings = make_settings(
        database_url,
        rules_dir=rules,
        http_allowed_hosts=["127.0.0.1", "127.0.0.2"],
        worker_threads=2,
        worker_poll_seconds=0.05,
    )
    app = create_app(settings)
    with TestClient(app, headers=AUTH) as client:
        for index in range(HUNG_STEPS):
            assert client.post(WEBHOOK, json=alert_named("CallHung", index)).status_code == 200
        hung_steps = wait_for(
            "every step against the hung target is recorded failed",
            lambda: (rows := finished_steps(engine, "call-hung")) and len(rows) == HUNG_STEPS and rows,
            30,
        )
        assert all(s.status == "failed" and "timed out" in (s.error or "") for s in hung_steps)

        posted = datetime.now(UTC)
        assert client.post(WEBHOOK, json=alert_named("CallHealthy", HUNG_STEPS)).status_code == 200
        [healthy_step] = wait_for(
            "the step against the healthy target is recorded", lambda: finished_steps(engine, "call-healthy"), 30
        )
        # Stand down: the hung target answers now; any call still queued or running goes out now.
        hung.release()
        wait_for("no action call is still running", lambda: not bulkhead_threads(), 30)
        wait_for("the healthy target got its request", healthy.received, 5 if healthy_step.status != "failed" else 2)
        breakers = {b["name"]: b for b in app.state.services.breakers.snapshot()}

    [healthy_call] = healthy.received()
    assert healthy_step.status == "succeeded", healthy_step.error
    assert healthy_call.at - posted < timedelta(seconds=PROMPT_SECONDS)

    failed_at = {s.inputs["url"].removeprefix(hung.url): s.finished_at for s in hung_steps}
    failed_at["/healthy"] = healthy_step.finished_at if healthy_step.status == "failed" else None
    late = [a for a in [*hung.received(), healthy_call] if _after(a, failed_at.get(a.path))]
    assert not late, f"calls made after their step was recorded failed: {late}"
    assert len(hung.received()) == HUNG_STEPS

    # The hung target's failures count against its own circuit only.
    assert breakers["http.request:127.0.0.2"]["failed"] == HUNG_STEPS
    assert (breakers["http.request:127.0.0.1"]["failed"], breakers["http.request:127.0.0.1"]["succeeded"]) == (0, 1)


def _after(arrival: Arrival, failed_at: datetime | None) -> bool:
    if failed_at is None:
        return False
    if failed_at.tzinfo is None:  # SQLite gives back naive datetimes; the service stores UTC
        failed_at = failed_at.replace(tzinfo=UTC)
    return arrival.at > failed_at + CLOCK_GRANULARITY


# -- the deadline reaches the actions' own HTTP clients ------------------------------------------

DEADLINE_SECONDS = 0.5


def direct_context(engine: Engine, hung: HttpTarget, deadline: float) -> ActionContext:
    settings = make_settings(str(engine.url), http_allowed_hosts=[hung.host])
    target = Target(name="default", kind="http", url=f"{hung.url}/admin")
    return action_context(settings, engine, target, deadline=deadline)


CALLS = [
    ("http.request", {"url": "{hung}/restart", "method": "POST", "timeout": CLIENT_TIMEOUT}),
    ("notify.webhook", {"url": "{hung}/hook", "timeout": CLIENT_TIMEOUT}),
    ("graph.disable", {"graph": "a"}),
    ("storage.switch", {"backend": "backup"}),
]


@pytest.mark.parametrize(("name", "params"), CALLS, ids=[c[0] for c in CALLS])
def test_an_action_ends_its_call_by_the_steps_deadline_and_starts_none_after_it(
    engine: Engine, hung: HttpTarget, name: str, params: dict[str, Any]
) -> None:
    spec = build_registry().get(name)
    values = spec.params.model_validate({k: v.format(hung=hung.url) if k == "url" else v for k, v in params.items()})

    began = time.monotonic()
    ctx = direct_context(engine, hung, began + DEADLINE_SECONDS)
    outcome = _outcome(lambda: spec.func(ctx, values))
    assert time.monotonic() - began < DEADLINE_SECONDS + 1.5, outcome
    assert hung.received(), "the target was called"
    assert "timed out" in outcome.lower() or "timeout" in outcome.lower() or "deadline" in outcome, outcome

    before = len(hung.received())
    late = direct_context(engine, hung, time.monotonic() - 0.01)
    outcome = _outcome(lambda: spec.func(late, values))
    assert "deadline has passed" in outcome, outcome
    assert len(hung.received()) == before  # no call started once the deadline had passed


def _outcome(call: Callable[[], Any]) -> str:
    """The action's error, or for notify.* (which never raise) the error it reported."""
    try:
        result = call()
    except ActionError as exc:
        return str(exc)
    return str(result.output.get("error", result.output))
