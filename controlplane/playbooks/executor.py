"""Owns running one claimed execution: its steps in order, then its end: done, or rollback and a page.

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
from controlplane.playbooks.page_sender import ESCALATE
from controlplane.playbooks.render import RenderError, render_value
from controlplane.playbooks.state import Status
from controlplane.playbooks.step_store import LeaseLost, Run, StepStore
from controlplane.playbooks.steps import StepAttempt, StepServices
from controlplane.resilience.bulkhead import Bulkheads
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.telemetry import Metrics

log = structlog.get_logger(__name__)


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
        paged: Callable[[], None] = lambda: None,
    ) -> None:
        if ESCALATE not in registry:
            raise ValueError(f"the action registry has no {ESCALATE!r}: an escalation could not page anyone")
        self._paged = paged  # a page was queued: wake the sender (playbooks/pages.Pager.wake)
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
                index += 1  # recorded by the next step's first write, or by the transition below
            final: Status = "dry_run" if run.dry_run else "succeeded"
            # A run whose own verify step passed is settled at once; others when their incident
            # resolves or their window runs out (playbooks/ledger.py).
            settled = "resolved" if not run.dry_run and self._store.verified(run) else None
            self._store.transition(
                run, final, reason="all steps done", outcome=settled, current_step=len(run.playbook.steps)
            )
            self._metrics.executions.labels(run.rule, final).inc()
            if settled is not None:
                self._metrics.remediation_outcomes.labels(run.rule, settled).inc()
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
        # Failure is loud: on-call is paged (once, after the commit, playbooks/pages.py) unless the
        # rule opted out; a step's `on_failure: escalate` pages even then. A dry run acted on nothing.
        page = (run.page_on_failure or escalate) and not run.dry_run
        outcome = None if run.dry_run else final
        self._store.transition(
            run,
            final,
            reason=reason,
            detail={"rolled_back_steps": rolled, "escalate": escalate, "page": page},
            also_audit=("execution.escalated", {"reason": reason}) if page else None,
            outcome=outcome,
            page=page,
        )
        if page:
            self._metrics.escalations.labels(run.rule).inc()
            self._paged()
            log.error("execution.escalated", execution_id=run.id, rule=run.rule, reason=reason)
        self._metrics.executions.labels(run.rule, final).inc()
        if outcome is not None:
            self._metrics.remediation_outcomes.labels(run.rule, outcome).inc()
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
