"""Owns running one claimed execution: steps in order, retries, timeouts, waits, rollback, escalation.

Every write is fenced by the claim (`lease_owner`): a worker that lost its lease (it was
paused, another replica took over, or the execution was cancelled) cannot record anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, Table, select, update

from controlplane.actions.base import (
    ActionContext,
    ActionError,
    ActionRegistry,
    ActionResult,
    AlertView,
    BlastRadiusExceeded,
    IncidentView,
    UnknownAction,
)
from controlplane.config import Settings
from controlplane.db.engine import write_transaction
from controlplane.db.models import ExecutionStep
from controlplane.ingest.store import audit, dialect_insert
from controlplane.playbooks.render import RenderError, evaluate_condition, render_value
from controlplane.playbooks.state import executions_t, transition
from controlplane.resilience.bulkhead import Bulkheads, CallTimeout, SlotTimeout
from controlplane.resilience.circuit_breaker import CircuitBreaker, CircuitBreakers, CircuitOpenError
from controlplane.resilience.retry import is_retriable, retrying
from controlplane.rules.schema import Playbook, RetryPolicy, Step
from controlplane.telemetry import Metrics

steps_t: Table = ExecutionStep.__table__  # type: ignore[assignment]
log = structlog.get_logger(__name__)

ESCALATE = "notify.escalate"  # the action that tells on-call a playbook gave up (actions/paging.py)
DEFAULT_STEP_TIMEOUT = timedelta(seconds=300)  # seed 004: node timeout 300 s
NO_RETRY = RetryPolicy(attempts=1)


class LeaseLost(Exception):
    """Another worker owns the execution now, or it was cancelled: stop without writing."""


@dataclass
class StepOutcome:
    kind: str  # done | failed | waiting
    error: str = ""


@dataclass
class _Run:
    """What the executor knows about the execution it runs."""

    id: int
    owner: str
    rule: str
    incident_id: int | None
    dry_run: bool
    playbook: Playbook
    params: dict[str, Any]
    context: dict[str, Any]
    current_step: int
    steps: dict[str, dict[str, Any]]  # step id -> {value, output, status}, for templates

    @property
    def actor(self) -> str:
        return f"rule:{self.rule}"

    def template_context(self) -> dict[str, Any]:
        return {**self.context, "params": self.params, "steps": self.steps}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Executor:
    def __init__(
        self,
        *,
        engine: Engine,
        registry: ActionRegistry,
        settings: Settings,
        breakers: CircuitBreakers,
        metrics: Metrics,
        bulkheads: Bulkheads | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        rules: Callable[[], Any] | None = None,
    ) -> None:
        if ESCALATE not in registry:
            raise ValueError(f"the action registry has no {ESCALATE!r}: an escalation could not page anyone")
        self._engine = engine
        self._registry = registry
        self._settings = settings
        self._breakers = breakers
        self._metrics = metrics
        self._bulkheads = bulkheads or Bulkheads()
        self._clock = clock
        self._sleep = sleep
        self._rules = rules  # the RuleSet in force: targets and failover groups for actions

    # -- the run -------------------------------------------------------------------------

    def run(self, execution_id: int, owner: str) -> str:
        """Run a claimed execution as far as it goes now; returns the status it was left in."""
        try:
            run = self._load(execution_id, owner)
            index = run.current_step
            while index < len(run.playbook.steps):
                step = run.playbook.steps[index]
                outcome = self._run_step(run, index, step)
                if outcome.kind == "waiting":
                    return "waiting"
                if outcome.kind == "failed" and step.on_failure != "continue":
                    return self._abort(run, index, step, outcome.error)
                index += 1
                self._advance(run, index)
            final = "dry_run" if run.dry_run else "succeeded"
            with self._write() as conn:
                self._fenced_transition(conn, run, final, reason="all steps done")
            self._metrics.executions.labels(run.rule, final).inc()
            return final
        except LeaseLost:
            log.warning("execution.lease_lost", execution_id=execution_id, owner=owner)
            return "lost"

    def _load(self, execution_id: int, owner: str) -> _Run:
        with self._engine.connect() as conn:
            row = conn.execute(select(executions_t).where(executions_t.c.id == execution_id)).one()
            done = conn.execute(
                select(steps_t.c.step_id, steps_t.c.output, steps_t.c.status).where(
                    steps_t.c.execution_id == execution_id, steps_t.c.phase == "forward"
                )
            ).all()
        if row.lease_owner != owner or row.status != "running":
            raise LeaseLost()
        steps = {
            r.step_id: {"value": r.output.get("value"), "output": r.output, "status": r.status}
            for r in done
            if r.step_id and r.status in ("succeeded", "failed", "skipped")
        }
        return _Run(
            id=row.id,
            owner=owner,
            rule=row.rule_name,
            incident_id=row.incident_id,
            dry_run=row.dry_run,
            playbook=Playbook.model_validate(row.playbook),
            params=row.params,
            context=row.context,
            current_step=row.current_step,
            steps=steps,
        )

    def _run_step(self, run: _Run, index: int, step: Step, phase: str = "forward") -> StepOutcome:
        existing = self._step_row(run.id, phase, index)
        if existing is not None and existing.status in ("succeeded", "skipped", "failed"):
            # Recorded before a crash, but the execution had not moved on yet.
            return StepOutcome("failed" if existing.status == "failed" else "done", existing.error or "")
        lenient = run.dry_run
        tctx = run.template_context()
        try:
            if step.when is not None and not evaluate_condition(step.when, tctx, lenient=lenient):
                self._record(
                    run,
                    phase,
                    index,
                    step,
                    existing,
                    status="skipped",
                    inputs={},
                    output={"skipped": f"when: {step.when} is false"},
                )
                return StepOutcome("done")
            inputs = render_value(step.with_, tctx, lenient=lenient)
        except RenderError as exc:
            return self._fail_step(run, phase, index, step, existing, {}, str(exc))
        return self._call_step(run, phase, index, step, step.action, inputs, existing)

    def _call_step(
        self, run: _Run, phase: str, index: int, step: Step, action_name: str, inputs: dict[str, Any], existing: Any
    ) -> StepOutcome:
        try:
            spec = self._registry.get(action_name)
        except UnknownAction:
            return self._fail_step(run, phase, index, step, existing, inputs, f"unknown action {action_name!r}")
        try:
            params = spec.params.model_validate(inputs)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return self._fail_step(
                run, phase, index, step, existing, inputs, f"invalid inputs for {action_name}: {errors}"
            )
        if run.dry_run:
            self._record(
                run,
                phase,
                index,
                step,
                existing,
                status="skipped",
                inputs=inputs,
                output={"dry_run": True, "would_call": action_name},
                action=action_name,
            )
            return StepOutcome("done")
        started_at = existing.started_at if existing is not None else self._clock()
        existing = self._record(
            run, phase, index, step, existing, status="running", inputs=inputs, output={}, action=action_name
        )
        timeout = (step.timeout or DEFAULT_STEP_TIMEOUT).total_seconds()
        # The bounds check may call the target too: the step's timeout bounds it (each attempt gets its own).
        ctx = self._context(
            run, index if phase == "forward" else 1000 + index, started_at, deadline=time.monotonic() + timeout
        )
        if spec.blast_radius is not None:
            try:
                refusal = spec.blast_radius(ctx, params)
            except Exception as exc:  # a bounds check that cannot decide must refuse, not crash the run
                refusal = f"could not check the bounds: {_describe(exc)}"
            if refusal:
                self._audit(run, "step.refused", {"step": index, "action": action_name, "reason": refusal})
                return self._fail_step(run, phase, index, step, existing, inputs, f"blast radius: {refusal}")
        target = spec.target_of(ctx, params)
        # No breaker for a target nothing defines (the action refuses it): labels cannot add breakers.
        breaker = self._breakers.get(target) if target is not None else None
        attempts = existing.attempts
        began = time.perf_counter()

        def on_retry(attempt: int, exc: BaseException) -> None:
            self._metrics.retry_attempts.labels(action_name).inc()
            log.info("step.retry", execution_id=run.id, step=index, action=action_name, attempt=attempt, error=str(exc))

        result: ActionResult | None = None
        failure: Exception | None = None
        try:
            for attempt in retrying(step.retry or NO_RETRY, sleep=self._sleep, on_retry=on_retry):
                with attempt:
                    attempts += 1
                    result = self._call(spec.func, ctx, params, timeout, target or action_name, breaker)
        except CircuitOpenError as exc:
            self._audit(run, "step.refused", {"step": index, "action": action_name, "reason": str(exc)})
            failure = exc
        except Exception as exc:
            failure = exc
        elapsed = time.perf_counter() - began
        self._metrics.step_duration.labels(action_name, "failed" if failure else "ok").observe(elapsed)
        if failure is not None or result is None:
            output = failure.output if isinstance(failure, ActionError) else {}
            error = _describe(failure) if failure is not None else "no result"
            return self._fail_step(
                run, phase, index, step, existing, inputs, error, attempts=attempts, duration=elapsed, output=output
            )
        output = {"value": result.value, **result.output}
        if result.recheck_at is not None:
            self._wait(run, phase, index, step, existing, inputs, output, attempts, result.recheck_at)
            return StepOutcome("waiting")
        self._record(
            run,
            phase,
            index,
            step,
            existing,
            status="succeeded",
            inputs=inputs,
            output=output,
            attempts=attempts,
            duration=elapsed,
            finished=True,
            action=action_name,
        )
        if step.id and phase == "forward":
            run.steps[step.id] = {"value": result.value, "output": output, "status": "succeeded"}
        return StepOutcome("done")

    def _call(
        self,
        func: Callable[..., ActionResult],
        ctx: ActionContext,
        params: Any,
        timeout: float,
        target: str,
        breaker: CircuitBreaker | None,
    ) -> ActionResult:
        """One attempt, through the target's circuit breaker and bulkhead; `timeout` covers the wait for a slot too."""
        deadline = time.monotonic() + timeout
        attempt_ctx = replace(ctx, deadline=deadline)
        with breaker.attempt(is_failure=_target_failed) if breaker is not None else nullcontext():
            try:
                result = self._bulkheads.call(target, lambda: func(attempt_ctx, params), deadline=deadline)
            except SlotTimeout:
                raise ActionError(
                    f"timed out after {timeout:g}s waiting for a free slot on {target}", retriable=True
                ) from None
            except CallTimeout:
                raise ActionError(f"timed out after {timeout:g}s", retriable=True) from None
        if not isinstance(result, ActionResult):
            raise ActionError(f"action returned {type(result).__name__}, not ActionResult")
        return result

    # -- failure, rollback, escalation ---------------------------------------------------

    def _abort(self, run: _Run, failed_index: int, step: Step, error: str) -> str:
        rolled, rollback_errors = self._rollback(run, failed_index)
        escalate = step.on_failure == "escalate"
        reason = f"step {failed_index} ({step.id or step.action}) failed: {error}"
        if rollback_errors:
            reason += "; rollback failed: " + "; ".join(rollback_errors)
        final = "rolled_back" if rolled and not rollback_errors else "failed"
        if escalate and not run.dry_run:
            # Before the commit: a crash here pages again on resume, and the page's idempotency
            # key (2000 + step) lets it find the earlier page and skip it; after, a page could be lost.
            self._page(run, failed_index, reason)
        with self._write() as conn:
            self._fenced_transition(
                conn, run, final, reason=reason, detail={"rolled_back_steps": rolled, "escalate": escalate}
            )
            if escalate:
                audit(
                    conn,
                    actor=run.actor,
                    action="execution.escalated",
                    incident_id=run.incident_id,
                    execution_id=run.id,
                    detail={"reason": reason},
                    now=self._clock(),
                )
        if escalate:
            self._metrics.escalations.labels(run.rule).inc()
            log.error("execution.escalated", execution_id=run.id, rule=run.rule, reason=reason)
        self._metrics.executions.labels(run.rule, final).inc()
        return final

    def _page(self, run: _Run, failed_index: int, reason: str) -> None:
        """Tell on-call through the escalation action (it never raises: a page that fails is audited)."""
        spec = self._registry.get(ESCALATE)
        params = spec.params.model_validate({"reason": reason})
        spec.func(self._context(run, 2000 + failed_index, self._clock()), params)

    def _rollback(self, run: _Run, failed_index: int) -> tuple[int, list[str]]:
        """Undo the steps before `failed_index` that succeeded and declare a rollback, newest first."""
        rolled = 0
        errors: list[str] = []
        for index in reversed(range(failed_index)):
            step = run.playbook.steps[index]
            forward = self._step_row(run.id, "forward", index)
            if step.rollback is None or forward is None or forward.status != "succeeded":
                continue
            if forward.output.get("changed") is False:
                # It found things as it wanted them (a person had already done it): undoing
                # would undo that person's change, not ours.
                continue
            try:
                inputs = (
                    render_value(step.rollback.with_, run.template_context())
                    if step.rollback.with_ is not None
                    else dict(forward.inputs)
                )
            except RenderError as exc:
                errors.append(f"step {index}: {exc}")
                continue
            existing = self._step_row(run.id, "rollback", index)
            if existing is not None and existing.status == "succeeded":
                rolled += 1
                continue
            outcome = self._call_step(run, "rollback", index, step, step.rollback.action, inputs, existing)
            if outcome.kind == "done":
                rolled += 1
            else:
                errors.append(f"step {index} ({step.rollback.action}): {outcome.error}")
        return rolled, errors

    # -- persistence ---------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[Connection]:
        # Execution progress skips the fsync on SQLite: a step lost to a power cut is re-run
        # with the same idempotency key, like any step whose worker died.
        return write_transaction(self._engine, sync="normal")

    def _fence(self, conn: Connection, run: _Run, **values: Any) -> None:
        res = conn.execute(
            update(executions_t)
            .where(
                executions_t.c.id == run.id, executions_t.c.lease_owner == run.owner, executions_t.c.status == "running"
            )
            .values(updated_at=self._clock(), **values)
        )
        if res.rowcount != 1:
            raise LeaseLost()

    def _fenced_transition(
        self,
        conn: Connection,
        run: _Run,
        to: Any,
        *,
        reason: str,
        detail: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
    ) -> None:
        ok = transition(
            conn,
            run.id,
            to,
            actor=run.actor,
            now=self._clock(),
            reason=reason,
            owner=run.owner,
            values=values,
            incident_id=run.incident_id,
            detail=detail,
        )
        if not ok:
            raise LeaseLost()

    def _advance(self, run: _Run, index: int) -> None:
        with self._write() as conn:
            self._fence(conn, run, current_step=index, lease_expires_at=self._lease_until())

    def _lease_until(self) -> datetime:
        return self._clock() + timedelta(seconds=self._settings.worker_lease_seconds)

    def _step_row(self, execution_id: int, phase: str, index: int) -> Any:
        with self._engine.connect() as conn:
            return conn.execute(
                select(steps_t).where(
                    steps_t.c.execution_id == execution_id, steps_t.c.phase == phase, steps_t.c.index == index
                )
            ).first()

    def _record(
        self,
        run: _Run,
        phase: str,
        index: int,
        step: Step,
        existing: Any,
        *,
        status: str,
        inputs: dict[str, Any],
        output: dict[str, Any],
        action: str | None = None,
        error: str | None = None,
        attempts: int | None = None,
        duration: float | None = None,
        finished: bool | None = None,
    ) -> Any:
        now = self._clock()
        done = finished if finished is not None else status in ("succeeded", "failed", "skipped")
        values: dict[str, Any] = {
            "status": status,
            "inputs": _jsonable(inputs),
            "output": _jsonable(output),
            "error": error,
            "action": action or step.action,
            "finished_at": now if done else None,
        }
        if attempts is not None:
            values["attempts"] = attempts
        if duration is not None:
            values["duration_ms"] = round(duration * 1000, 3)
        with self._write() as conn:
            self._fence(conn, run, lease_expires_at=self._lease_until())
            if existing is None:
                conn.execute(
                    dialect_insert(conn, steps_t).values(
                        execution_id=run.id,
                        phase=phase,
                        index=index,
                        step_id=step.id,
                        started_at=now,
                        idempotency_key=f"{run.id}:{phase}:{index}",
                        **{"attempts": 0, **values},
                    )
                )
            else:
                conn.execute(update(steps_t).where(steps_t.c.id == existing.id).values(**values))
            if done or (status == "running" and existing is None):
                audit(
                    conn,
                    actor=run.actor,
                    action=f"step.{status}",
                    incident_id=run.incident_id,
                    execution_id=run.id,
                    now=now,
                    detail={
                        "phase": phase,
                        "index": index,
                        "step": step.id,
                        "action": values["action"],
                        "error": error,
                    },
                )
        return self._step_row(run.id, phase, index)

    def _fail_step(
        self,
        run: _Run,
        phase: str,
        index: int,
        step: Step,
        existing: Any,
        inputs: dict[str, Any],
        error: str,
        *,
        attempts: int | None = None,
        duration: float | None = None,
        output: dict[str, Any] | None = None,
    ) -> StepOutcome:
        self._record(
            run,
            phase,
            index,
            step,
            existing,
            status="failed",
            inputs=inputs,
            output=output or {},
            error=error,
            attempts=attempts,
            duration=duration,
        )
        if step.id and phase == "forward":
            run.steps[step.id] = {"value": None, "output": output or {}, "status": "failed"}
        return StepOutcome("failed", error)

    def _wait(
        self,
        run: _Run,
        phase: str,
        index: int,
        step: Step,
        existing: Any,
        inputs: dict[str, Any],
        output: dict[str, Any],
        attempts: int,
        until: datetime,
    ) -> None:
        """Release the execution until `until`: no worker sleeps through a wait."""
        now = self._clock()
        with self._write() as conn:
            self._fence(conn, run)
            conn.execute(
                update(steps_t)
                .where(steps_t.c.id == existing.id)
                .values(status="waiting", inputs=_jsonable(inputs), output=_jsonable(output), attempts=attempts)
            )
            first_wait = existing.status != "waiting"
            ok = transition(
                conn,
                run.id,
                "waiting",
                actor=run.actor,
                now=now,
                owner=run.owner,
                values={"wake_at": until, "lease_owner": None, "lease_expires_at": None},
                incident_id=run.incident_id,
                audit_it=first_wait,
                reason=f"step {index} ({step.id or step.action}) waits until {until.isoformat()}",
            )
            if not ok:
                raise LeaseLost()

    def _context(self, run: _Run, index: int, started_at: datetime, deadline: float | None = None) -> ActionContext:
        rules = self._rules() if self._rules is not None else None
        incident = run.context.get("incident")
        alert = run.context.get("alert")
        return ActionContext(
            execution_id=run.id,
            step_index=index,
            idempotency_key=f"{run.id}:{index}",
            rule=run.rule,
            incident=IncidentView(**incident) if incident else None,
            alert=AlertView(**alert) if alert else None,
            settings=self._settings,
            engine=self._engine,
            now=self._clock,
            step_started_at=started_at,
            dry_run=run.dry_run,
            log=log.bind(execution_id=run.id, step=index),
            targets=rules.targets if rules is not None else {},
            failover=rules.failover if rules is not None else {},
            deadline=deadline,
        )

    def _audit(self, run: _Run, action: str, detail: dict[str, Any]) -> None:
        with self._write() as conn:
            audit(
                conn,
                actor=run.actor,
                action=action,
                incident_id=run.incident_id,
                execution_id=run.id,
                detail=detail,
                now=self._clock(),
            )


def _target_failed(exc: BaseException) -> bool:
    """What counts against a target's circuit: it timed out, refused or failed (5xx); not our own refusals."""
    return not isinstance(exc, BlastRadiusExceeded) and is_retriable(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ActionError) else f"{type(exc).__name__}: {text}"


def _jsonable(value: Any) -> Any:
    """Step inputs and outputs are stored as JSON; anything else is stored as its text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
