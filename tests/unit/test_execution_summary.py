"""An execution's one-line summary: what its steps did, then how it ended, with steps counted from 1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controlplane.playbooks.schemas import ExecutionOut, StepOut
from controlplane.playbooks.summary import step_effect, step_label, summarize

T0 = datetime(2026, 12, 6, 3, 14, 5, tzinfo=UTC)


def execution(status: str, *, reason: str = "", dry_run: bool = False, decided_by: str | None = None) -> ExecutionOut:
    return ExecutionOut(
        id=7,
        rule_name="high-error-rate",
        playbook_name="disable-problem-graph",
        status=status,
        reason=reason,
        dry_run=dry_run,
        incident_id=3,
        alert_id=1,
        trigger_key="k",
        guard_key="g",
        current_step=0,
        claims=1,
        lease_owner=None,
        created_at=T0,
        updated_at=T0,
        started_at=T0 + timedelta(seconds=1),
        finished_at=None,
        wake_at=None,
        decided_by=decided_by,
        decided_at=None,
        guard=None,
        page_on_failure=True,
        outcome=None,
        outcome_at=None,
    )


def step(
    index: int,
    action: str,
    status: str = "succeeded",
    *,
    inputs: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    error: str | None = None,
    phase: str = "forward",
    finished_after: float = 2,
) -> StepOut:
    return StepOut(
        phase=phase,
        index=index,
        step_id=None,
        action=action,
        status=status,
        inputs=inputs or {},
        output=output or {},
        error=error,
        attempts=1,
        idempotency_key=f"7:{index}",
        started_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=finished_after) if status in ("succeeded", "failed", "skipped") else None,
        duration_ms=3.0,
    )


TOP = step(
    0,
    "prometheus.top",
    inputs={"query": "sum by (graph_name) (rate(x[5m]))", "label": "graph_name"},
    output={"value": "chat", "label": "graph_name", "order": "desc", "top_value": 0.42, "series": 3},
)
DISABLE = step(
    1,
    "graph.disable",
    inputs={"target": "langgraph", "graph": "chat"},
    output={"value": "chat", "target": "langgraph", "graph": "chat", "changed": True},
)
NOTE = step(2, "incident.annotate", inputs={"text": "Disabled graph chat"}, output={"value": "Disabled graph chat"})
PAGE = step(
    3,
    "notify.oncall",
    inputs={"text": "Disabled graph chat"},
    output={"value": True, "delivered": True, "via": "pagerduty", "route": "pagerduty", "severity": "critical"},
)


def test_a_resolved_run_says_what_it_changed_and_when_it_resolved() -> None:
    verify = step(4, "verify.resolved", inputs={"within": "15m"}, output={"value": True}, finished_after=181)
    summary = summarize(execution("succeeded"), [TOP, DISABLE, NOTE, PAGE, verify])
    # The query and the note change nothing outside: their steps show them, the summary does not.
    assert summary == "Disabled graph chat on langgraph; paged on-call via PagerDuty (critical); resolved 3 min later"


def test_a_run_without_verification_is_done() -> None:
    assert summarize(execution("succeeded"), [TOP, DISABLE]) == "Disabled graph chat on langgraph; done"


def test_a_failed_step_is_named_by_its_number_from_one_and_its_reason() -> None:
    failed = step(1, "graph.disable", "failed", inputs={"graph": "chat"}, error="admin API answered 503")
    summary = summarize(
        execution("failed", reason="step 2 (graph.disable) failed: admin API answered 503"), [TOP, failed]
    )
    assert summary == "Failed at step 2 (graph.disable): admin API answered 503"


def test_a_rolled_back_run_says_what_was_undone() -> None:
    verify = step(4, "verify.resolved", "failed", inputs={"within": "15m"}, error="incident 3 not resolved within 15m")
    undo = step(
        1,
        "graph.enable",
        phase="rollback",
        inputs={"target": "langgraph", "graph": "chat"},
        output={"value": "chat", "target": "langgraph", "graph": "chat", "changed": True},
    )
    summary = summarize(execution("rolled_back"), [TOP, DISABLE, NOTE, PAGE, verify, undo])
    assert summary == (
        "Disabled graph chat on langgraph; paged on-call via PagerDuty (critical); "
        "failed at step 5 (verify.resolved): incident 3 not resolved within 15m; "
        "rolled back: enabled graph chat on langgraph"
    )


def test_a_rollback_that_failed_is_said() -> None:
    failed = step(2, "storage.cleanup_corrupted", "failed", error="boom")
    undo = step(1, "graph.disable", "failed", phase="rollback", error="admin API down")
    summary = summarize(execution("failed"), [TOP, DISABLE, failed, undo])
    assert summary == (
        "Disabled graph chat on langgraph; failed at step 3 (storage.cleanup_corrupted): boom; "
        "rollback of step 2 (graph.disable) failed: admin API down"
    )


def test_a_run_that_ended_without_a_failed_step_gives_the_executions_reason() -> None:
    lost = execution("failed", reason="its worker was lost 3 times (last: a); not retried again")
    assert summarize(lost, []) == "Failed: its worker was lost 3 times (last: a); not retried again"


def test_where_a_run_stands_while_it_runs() -> None:
    waiting = step(4, "verify.resolved", "waiting", inputs={"within": "15m"}, output={"status": "open"})
    assert summarize(execution("waiting"), [TOP, DISABLE, NOTE, PAGE, waiting]) == (
        "Disabled graph chat on langgraph; paged on-call via PagerDuty (critical); "
        "waiting for the incident to resolve (verify.resolved, step 5)"
    )
    assert summarize(execution("awaiting_approval"), []) == "Waiting for approval"
    assert summarize(execution("pending", decided_by="user:ann"), []) == "Approved, about to start"
    # A wait is claimed again at each recheck: for that moment the run is running, the reader sees no change.
    polling = step(4, "verify.resolved", "running", inputs={"within": "15m"})
    assert summarize(execution("running"), [TOP, DISABLE, NOTE, PAGE, polling]) == (
        "Disabled graph chat on langgraph; paged on-call via PagerDuty (critical); "
        "waiting for the incident to resolve (verify.resolved, step 5)"
    )
    pause = step(1, "wait", "waiting", inputs={"duration": "5m"}, output={"until": "2026-12-06T03:19:05+00:00"})
    assert summarize(execution("running"), [TOP, pause]) == "Waiting at step 2 (wait)"
    running = step(1, "graph.disable", "running", inputs={"graph": "chat"})
    assert summarize(execution("running"), [TOP, running]) == "Running step 2 (graph.disable)"
    assert summarize(execution("running"), [TOP]) == "Running at step 1"


def test_runs_that_did_not_act() -> None:
    assert summarize(execution("suppressed", reason="cooldown: last run 2 min ago"), []) == (
        "Not run: cooldown: last run 2 min ago"
    )
    assert summarize(execution("cancelled", reason="rejected by user:ann"), []) == "Cancelled: rejected by user:ann"
    planned = {"dry_run": True, "would_call": "graph.disable", "plan": {"sentence": "disable graph chat on prod"}}
    ran = {"dry_run": True, "would_call": "prometheus.top", "plan": {"sentence": "query", "result": {"value": "chat"}}}
    would = [
        step(0, "prometheus.top", "skipped", output=ran),  # a read-only step ran: not a change
        step(1, "graph.disable", "skipped", output=planned),
        step(2, "notify.oncall", "skipped", output={"dry_run": True, "would_call": "notify.oncall"}),  # no plan
    ]
    assert summarize(execution("dry_run", dry_run=True), would) == (
        "Shadow run, nothing was changed: would disable graph chat on prod; call notify.oncall"
    )


def test_a_step_of_an_unknown_action_or_with_old_inputs_still_reads() -> None:
    assert step_effect(step(0, "gone.action", output={"value": 1})) == "Ran gone.action"
    # Inputs the action's params no longer accept (a row from an older version): described generically.
    assert step_effect(step(0, "graph.disable", inputs={"name": "chat"})) == "Ran graph.disable"
    assert step_effect(step(0, "graph.disable", "failed", error="x")) is None


def test_step_labels_count_from_one() -> None:
    assert step_label(step(0, "prometheus.top")) == "step 1 (prometheus.top)"
    assert step_label(step(1, "graph.enable", phase="rollback")) == "rollback of step 2 (graph.enable)"
