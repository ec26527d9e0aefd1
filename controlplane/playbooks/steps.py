"""Owns the life of one step of a run: render, validate, check its bounds, call it, record what happened.

A StepAttempt is a step at its place in a run (phase and index), with its row as last read and
its inputs. Its call goes through the target's circuit breaker and bulkhead, is retried by the
step's policy and bounded by the step's timeout. Every record is fenced by the claim (step_store.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import Row

from controlplane.actions.base import (
    ActionContext,
    ActionError,
    ActionRegistry,
    ActionResult,
    ActionSpec,
    BlastRadiusExceeded,
    UnknownAction,
)
from controlplane.errors import ElsewhereError
from controlplane.playbooks.contexts import ActionContexts
from controlplane.playbooks.plan_ports import read_only
from controlplane.playbooks.render import RenderError, evaluate_condition, render_value
from controlplane.playbooks.step_store import FINISHED, Phase, Run, StepStore
from controlplane.resilience.bulkhead import Bulkheads, CallTimeout, SlotTimeout
from controlplane.resilience.circuit_breaker import CircuitBreaker, CircuitBreakers, CircuitOpenError
from controlplane.resilience.retry import is_retriable, retrying
from controlplane.rules.schema import RetryPolicy, Step
from controlplane.telemetry import Metrics

log = structlog.get_logger(__name__)

DEFAULT_STEP_TIMEOUT = timedelta(seconds=300)  # seed 004: node timeout 300 s
NO_RETRY = RetryPolicy(attempts=1)


@dataclass
class StepOutcome:
    kind: str  # done | failed | waiting
    error: str = ""


class InvalidStep(Exception):
    """The step cannot be called as written (unknown action, invalid inputs): fail it, never retry."""


@dataclass(frozen=True)
class StepServices:
    """What every step of every run uses; the Executor builds it once."""

    registry: ActionRegistry
    store: StepStore
    contexts: ActionContexts
    breakers: CircuitBreakers
    bulkheads: Bulkheads
    metrics: Metrics
    clock: Callable[[], datetime]
    sleep: Callable[[float], None]


@dataclass
class StepAttempt:
    """One step at its place in a run, from where its row left it to its outcome."""

    services: StepServices
    run: Run
    phase: Phase
    index: int
    step: Step
    action: str  # the step's action, or its rollback's
    row: Row[Any] | None  # as last read; None before the step's first record
    inputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def forward(cls, services: StepServices, run: Run, index: int) -> StepAttempt:
        step = run.playbook.steps[index]
        row = services.store.step_row(run, "forward", index)
        return cls(services, run, "forward", index, step, step.action, row)

    @classmethod
    def rollback(cls, services: StepServices, run: Run, index: int, inputs: dict[str, Any]) -> StepAttempt:
        step = run.playbook.steps[index]
        assert step.rollback is not None  # the executor rolls back only steps that declare a rollback
        row = services.store.step_row(run, "rollback", index)
        return cls(services, run, "rollback", index, step, step.rollback.action, row, inputs)

    @property
    def timeout(self) -> float:
        return (self.step.timeout or DEFAULT_STEP_TIMEOUT).total_seconds()

    # -- the life of a step --------------------------------------------------------------

    def perform(self) -> StepOutcome:
        """Take a forward step from where its row left it: skip it, fail it, or render and call it."""
        if self.row is not None and self.row.status in FINISHED:
            # Recorded before a crash, but the execution had not moved on yet.
            return StepOutcome("failed" if self.row.status == "failed" else "done", self.row.error or "")
        try:
            inputs = self.render()
        except RenderError as exc:
            return self.fail(str(exc))
        if inputs is None:
            self.record("skipped", output={"skipped": f"when: {self.step.when} is false"})
            return StepOutcome("done")
        self.inputs = inputs
        return self.call()

    def render(self) -> dict[str, Any] | None:
        """The step's inputs from the run so far; None when its `when:` is false. A dry run renders leniently."""
        tctx = self.run.template_context()
        lenient = self.run.dry_run
        if self.step.when is not None and not evaluate_condition(self.step.when, tctx, lenient=lenient):
            return None
        return render_value(self.step.with_, tctx, lenient=lenient)

    def call(self) -> StepOutcome:
        """Call the action with the inputs: in a dry run only record what would be called."""
        try:
            spec, params = self.validate()
        except InvalidStep as exc:
            return self.fail(str(exc))
        if self.run.dry_run:
            return self.plan_instead(spec, params)
        started_at = self.row.started_at if self.row is not None else self.services.clock()
        self.record("running", output={})
        # The bounds check may call the target too: the step's timeout bounds it (each attempt gets its own).
        deadline = time.monotonic() + self.timeout
        ctx = self.services.contexts.for_step(self.run, self.phase, self.index, started_at, deadline)
        refusal = self.out_of_bounds(spec, ctx, params)
        if refusal:
            self.audit_refusal(refusal)
            return self.fail(f"blast radius: {refusal}")
        return self.call_with_retries(spec, ctx, params)

    def validate(self) -> tuple[ActionSpec[Any], Any]:
        """The action and its typed parameters, or InvalidStep saying what is wrong."""
        return validated(self.services.registry, self.action, self.inputs)

    def out_of_bounds(self, spec: ActionSpec[Any], ctx: ActionContext, params: Any) -> str | None:
        """Why the call would act more widely than its bounds allow, or None."""
        return bounds_refusal(spec, ctx, params)

    def call_with_retries(self, spec: ActionSpec[Any], ctx: ActionContext, params: Any) -> StepOutcome:
        """Call through the target's breaker and bulkhead, retried by the step's policy; record the outcome."""
        target = spec.target_of(ctx, params)
        # No breaker for a target nothing defines (the action refuses it): labels cannot add breakers.
        breaker = self.services.breakers.get(target) if target is not None else None
        assert self.row is not None  # recorded as running before the first call
        attempts = self.row.attempts
        began = time.perf_counter()
        result: ActionResult | None = None
        failure: Exception | None = None
        try:
            for attempt in retrying(self.step.retry or NO_RETRY, sleep=self.services.sleep, on_retry=self._on_retry):
                with attempt:
                    attempts += 1
                    result = self._call_once(spec, ctx, params, target or self.action, breaker)
        except CircuitOpenError as exc:
            self.audit_refusal(str(exc))
            failure = exc
        except Exception as exc:
            failure = exc
        elapsed = time.perf_counter() - began
        self.services.metrics.step_duration.labels(self.action, "failed" if failure else "ok").observe(elapsed)
        if failure is not None or result is None:
            output = failure.output if isinstance(failure, ActionError) else {}
            error = describe_error(failure) if failure is not None else "no result"
            return self.fail(error, attempts=attempts, duration=elapsed, output=output)
        output = {"value": result.value, **result.output}
        if result.recheck_at is not None:
            self.services.store.wait(self, output=output, attempts=attempts, until=result.recheck_at)
            return StepOutcome("waiting")
        self.record("succeeded", output=output, attempts=attempts, duration=elapsed)
        self._remember(result.value, output, "succeeded")
        return StepOutcome("done")

    def _call_once(
        self, spec: ActionSpec[Any], ctx: ActionContext, params: Any, target: str, breaker: CircuitBreaker | None
    ) -> ActionResult:
        """One attempt through the target's circuit breaker and bulkhead; its timeout covers the wait for a slot."""
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        attempt_ctx = replace(ctx, deadline=deadline)
        with breaker.attempt(is_failure=_target_failed) if breaker is not None else nullcontext():
            try:
                result = self.services.bulkheads.call(target, lambda: spec.func(attempt_ctx, params), deadline=deadline)
            except SlotTimeout:
                raise ActionError(
                    f"timed out after {timeout:g}s waiting for a free slot on {target}", retriable=True
                ) from None
            except CallTimeout:
                raise ActionError(f"timed out after {timeout:g}s", retriable=True) from None
        if not isinstance(result, ActionResult):
            raise ActionError(f"action returned {type(result).__name__}, not ActionResult")
        return result

    def _on_retry(self, attempt: int, exc: BaseException) -> None:
        self.services.metrics.retry_attempts.labels(self.action).inc()
        log.info(
            "step.retry", execution_id=self.run.id, step=self.index, action=self.action, attempt=attempt, error=str(exc)
        )

    # -- records -------------------------------------------------------------------------

    def record(
        self,
        status: str,
        *,
        output: dict[str, Any],
        action: str | None = None,
        error: str | None = None,
        attempts: int | None = None,
        duration: float | None = None,
    ) -> None:
        """Write the step's row as `status` (audited when it starts or ends) and keep the row as written."""
        self.row = self.services.store.save_step(
            self,
            status,
            action=action or self.action,
            output=output,
            error=error,
            attempts=attempts,
            duration=duration,
        )

    def fail(
        self,
        error: str,
        *,
        attempts: int | None = None,
        duration: float | None = None,
        output: dict[str, Any] | None = None,
    ) -> StepOutcome:
        # As before the split: the failed row names the step's forward action, in a rollback too.
        self.record(
            "failed",
            output=output or {},
            action=self.step.action,
            error=error,
            attempts=attempts,
            duration=duration,
        )
        self._remember(None, output or {}, "failed")
        return StepOutcome("failed", error)

    def audit_refusal(self, reason: str) -> None:
        detail = {"step": self.index, "action": self.action, "reason": reason}
        self.services.store.audit(self.run, "step.refused", detail)

    def plan_instead(self, spec: ActionSpec[Any], params: Any) -> StepOutcome:
        """A shadow (dry) run's step: the action's plan, read from its target through ports that refuse
        every write, instead of its call. A read-only action runs, so later steps' templates see its
        value; a plan that would be refused fails the step as the call would (a dry run pages nobody)."""
        output: dict[str, Any] = {"dry_run": True, "would_call": self.action}
        if spec.plan is None:
            self.record("skipped", output=output)
            return StepOutcome("done")
        deadline = time.monotonic() + self.timeout
        ctx = self.services.contexts.for_step(self.run, self.phase, self.index, self.services.clock(), deadline)
        ctx = replace(ctx, ports=read_only(ctx.ports), dry_run=True)
        try:
            refusal = bounds_refusal(spec, ctx, params)
            plan = spec.plan(ctx, params)
        except Exception as exc:  # the target could not be read: say so, as the call would have failed
            return self.fail(f"cannot plan {self.action}: {describe_error(exc)}", output=output)
        if refusal and not plan.refused:
            plan = replace(plan, refused=refusal)
        output["plan"] = plan.as_dict()
        if plan.ran is not None:
            output["value"] = plan.ran.value
        if plan.refused:
            return self.fail(f"would be refused: {plan.refused}", output=output)
        self.record("skipped", output=output)
        self._remember(output.get("value"), output, "skipped")
        return StepOutcome("done")

    def _remember(self, value: Any, output: dict[str, Any], status: str) -> None:
        """What later steps' templates see as `steps.<id>`."""
        if self.step.id and self.phase == "forward":
            self.run.steps[self.step.id] = {"value": value, "output": output, "status": status}


def validated(registry: ActionRegistry, action: str, inputs: dict[str, Any]) -> tuple[ActionSpec[Any], Any]:
    """The action and its typed parameters from rendered inputs, or InvalidStep saying what is wrong.

    A run and a plan (planning.py) validate a step alike."""
    try:
        spec = registry.get(action)
    except UnknownAction:
        raise InvalidStep(f"unknown action {action!r}") from None
    try:
        return spec, spec.params.model_validate(inputs)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidStep(f"invalid inputs for {action}: {errors}") from None


def bounds_refusal(spec: ActionSpec[Any], ctx: ActionContext, params: Any) -> str | None:
    """Why the call would act more widely than its bounds allow, or None: checked before a call, and in a plan."""
    if spec.blast_radius is None:
        return None
    try:
        return spec.blast_radius(ctx, params)
    except Exception as exc:  # a bounds check that cannot decide must refuse, not crash the run
        return f"could not check the bounds: {describe_error(exc)}"


def _target_failed(exc: BaseException) -> bool:
    """What counts against a target's circuit: it timed out, refused or failed (5xx); not our own refusals.

    Nor another system's failure (ElsewhereError): the target was not the one that failed.
    """
    return not isinstance(exc, BlastRadiusExceeded | ElsewhereError) and is_retriable(exc)


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ActionError) else f"{type(exc).__name__}: {text}"
