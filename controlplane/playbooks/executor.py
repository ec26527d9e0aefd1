"""Owns running one claimed execution: its steps in order, then its end: done, or rollback and escalation.

The life of each step is in steps.py, the fenced writes in step_store.py: a worker that lost its
lease (it was paused, another replica took over, or the execution was cancelled) records nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Engine

from controlplane.actions.base import ActionRegistry
from controlplane.actions.ports import ActionPorts
from controlplane.config import Settings
from controlplane.playbooks.contexts import ActionContexts, build_ports
from controlplane.playbooks.render import RenderError, render_value
from controlplane.playbooks.state import Status
from controlplane.playbooks.step_store import LeaseLost, Run, StepStore
from controlplane.playbooks.steps import StepAttempt, StepServices
from controlplane.resilience.bulkhead import Bulkheads
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.telemetry import Metrics

log = structlog.get_logger(__name__)

ESCALATE = "notify.escalate"  # the action that tells on-call a playbook gave up (actions/paging.py)


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
        ports: ActionPorts | None = None,
    ) -> None:
        if ESCALATE not in registry:
            raise ValueError(f"the action registry has no {ESCALATE!r}: an escalation could not page anyone")
        self._registry = registry
        self._metrics = metrics
        self._clock = clock
        self._store = StepStore(engine, clock=clock, lease_seconds=settings.worker_lease_seconds)
        # `rules`: the RuleSet in force, for the targets and failover groups actions act on;
        # `ports`: what actions reach (the service builds them once), else built here from the settings.
        self._contexts = ActionContexts(ports=ports or build_ports(settings, engine), clock=clock, rules=rules)
        self._steps = StepServices(
            registry=registry,
            store=self._store,
            contexts=self._contexts,
            breakers=breakers,
            bulkheads=bulkheads or Bulkheads(),
            metrics=metrics,
            clock=clock,
            sleep=sleep,
        )

    def run(self, execution_id: int, owner: str) -> str:
        """Run a claimed execution as far as it goes now; returns the status it was left in."""
        try:
            run = self._store.load(execution_id, owner)
            index = run.current_step
            while index < len(run.playbook.steps):
                outcome = StepAttempt.forward(self._steps, run, index).perform()
                if outcome.kind == "waiting":
                    return "waiting"
                if outcome.kind == "failed" and run.playbook.steps[index].on_failure != "continue":
                    return self._abort(run, index, outcome.error)
                index += 1
                self._store.advance(run, index)
            final: Status = "dry_run" if run.dry_run else "succeeded"
            self._store.transition(run, final, reason="all steps done")
            self._metrics.executions.labels(run.rule, final).inc()
            return final
        except LeaseLost:
            log.warning("execution.lease_lost", execution_id=execution_id, owner=owner)
            return "lost"

    # -- failure, rollback, escalation ---------------------------------------------------

    def _abort(self, run: Run, failed_index: int, error: str) -> str:
        step = run.playbook.steps[failed_index]
        rolled, rollback_errors = self._rollback(run, failed_index)
        escalate = step.on_failure == "escalate"
        reason = f"step {failed_index + 1} ({step.id or step.action}) failed: {error}"
        if rollback_errors:
            reason += "; rollback failed: " + "; ".join(rollback_errors)
        final: Status = "rolled_back" if rolled and not rollback_errors else "failed"
        if escalate and not run.dry_run:
            # Before the commit: a crash here pages again on resume, and the page's idempotency
            # key (2000 + step) lets it find the earlier page and skip it; after, a page could be lost.
            self._page(run, failed_index, reason)
        self._store.transition(
            run,
            final,
            reason=reason,
            detail={"rolled_back_steps": rolled, "escalate": escalate},
            also_audit=("execution.escalated", {"reason": reason}) if escalate else None,
        )
        if escalate:
            self._metrics.escalations.labels(run.rule).inc()
            log.error("execution.escalated", execution_id=run.id, rule=run.rule, reason=reason)
        self._metrics.executions.labels(run.rule, final).inc()
        return final

    def _rollback(self, run: Run, failed_index: int) -> tuple[int, list[str]]:
        """Undo the steps before `failed_index` that succeeded and declare a rollback, newest first."""
        rolled = 0
        errors: list[str] = []
        for index in reversed(range(failed_index)):
            step = run.playbook.steps[index]
            forward = self._store.step_row(run, "forward", index)
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
                errors.append(f"step {index + 1}: {exc}")
                continue
            attempt = StepAttempt.rollback(self._steps, run, index, inputs)
            if attempt.row is not None and attempt.row.status == "succeeded":
                rolled += 1
                continue
            outcome = attempt.call()
            if outcome.kind == "done":
                rolled += 1
            else:
                errors.append(f"step {index + 1} ({step.rollback.action}): {outcome.error}")
        return rolled, errors

    def _page(self, run: Run, failed_index: int, reason: str) -> None:
        """Tell on-call through the escalation action (it never raises: a page that fails is audited)."""
        spec = self._registry.get(ESCALATE)
        spec.func(self._contexts.for_escalation(run, failed_index), spec.params.model_validate({"reason": reason}))
