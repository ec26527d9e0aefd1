"""Owns planning a whole playbook: what a rule would do for an alert or an incident, step by step, with no effect.

`plan_playbook` walks a rule's playbook as a run would: it renders each step's `with` (render.py),
evaluates its `when`, validates its inputs as steps.py does, checks its bounds with the very
check a step runs before its call (`bounds_refusal`), then asks the action for its `Plan`
(actions/base.py). Read-only steps (`prometheus.*`, `storage.check`) run for real, so later
steps' templates render with their values; mutating steps only read their target.

Nothing is written: no execution, no step row, no audit row. The ports a plan's steps get refuse
every write of the control plane's own (audit, Slack threads, silences, failover) with
`PlanWriteRefused`, so a plan function that tried would fail loudly rather than act.

A step a run would fail (a render or validation error, a refusal) ends the plan there unless the
step says `on_failure: continue`, as it would end the run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from controlplane.actions.base import ActionRegistry, AlertView, IncidentView, Plan
from controlplane.actions.ports import ActionPorts
from controlplane.playbooks.contexts import ActionContexts
from controlplane.playbooks.plan_ports import read_only
from controlplane.playbooks.render import RenderError, evaluate_condition, render_value
from controlplane.playbooks.steps import DEFAULT_STEP_TIMEOUT, InvalidStep, bounds_refusal, describe_error, validated
from controlplane.rules.schema import Playbook, Rule, Step


@dataclass(frozen=True, kw_only=True)
class StepPlan:
    """One step of an ExecutionPlan. `index` is 0-based; `number` (1-based) is how sentences count steps.

    `status`: planned (a mutating step, only read), ran (a read-only step, run for real), skipped
    (its `when` is false), refused (its bounds or the action refuse it), error (it could not be
    rendered, validated or planned). `plan` is the action's Plan when there is one.
    """

    index: int
    id: str | None
    action: str
    status: str
    sentence: str
    inputs: dict[str, Any] | None = None
    plan: Plan | None = None
    error: str | None = None

    @property
    def number(self) -> int:
        return self.index + 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.number,
            "id": self.id,
            "action": self.action,
            "status": self.status,
            "sentence": self.sentence,
            "inputs": self.inputs,
            "error": self.error,
            "refused": self.plan.refused if self.plan else None,
            "noop": self.plan.noop if self.plan else False,
        }
        if self.plan is not None:
            out["plan"] = self.plan.as_dict()
        return out


@dataclass(frozen=True, kw_only=True)
class ExecutionPlan:
    """What a rule's playbook would do now, step by step; `stopped` says why it ends early (a run would too)."""

    rule: str
    playbook: str
    planned_at: datetime
    steps: list[StepPlan] = field(default_factory=list)
    stopped: str | None = None

    @property
    def refused(self) -> bool:
        return any(s.status == "refused" for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "playbook": self.playbook,
            "planned_at": self.planned_at.isoformat(),
            "stopped": self.stopped,
            "refused": self.refused,
            "steps": [s.as_dict() for s in self.steps],
        }


def plan_playbook(
    *,
    registry: ActionRegistry,
    contexts: ActionContexts,
    rule: Rule,
    playbook: Playbook,
    alert: AlertView | None = None,
    incident: IncidentView | None = None,
) -> ExecutionPlan:
    """Plan every step of `playbook` for `rule`, as a run for this alert and incident would take them."""
    context = {"alert": asdict(alert) if alert else None, "incident": asdict(incident) if incident else None}
    ports = read_only(contexts.ports)
    planner = _Planner(registry, contexts, ports, rule, context, {**playbook.params, **rule.params})
    result = ExecutionPlan(rule=rule.name, playbook=playbook.name, planned_at=contexts.clock())
    for index, step in enumerate(playbook.steps):
        planned = planner.step(index, step)
        result.steps.append(planned)
        if planned.status in ("refused", "error") and step.on_failure != "continue":
            reason = planned.error or (planned.plan.refused if planned.plan else "")
            stop = f"step {planned.number} would fail ({reason}); on_failure: {step.on_failure}"
            return replace(result, stopped=stop)
    return result


@dataclass
class _Planner:
    registry: ActionRegistry
    contexts: ActionContexts
    ports: ActionPorts
    rule: Rule
    context: dict[str, Any]
    params: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # what templates see as `steps.<id>`
    only_planned: bool = False  # an earlier step that a run would have called was only planned

    def step(self, index: int, step: Step) -> StepPlan:
        def made(
            status: str,
            sentence: str,
            *,
            inputs: dict[str, Any] | None = None,
            plan: Plan | None = None,
            error: str | None = None,
        ) -> StepPlan:
            return StepPlan(
                index=index,
                id=step.id,
                action=step.action,
                status=status,
                sentence=f"step {index + 1}: {sentence}",
                inputs=inputs,
                plan=plan,
                error=error,
            )

        try:
            inputs = self._render(step)
        except RenderError as exc:
            return made("error", f"cannot render: {exc}", error=str(exc))
        if inputs is None:
            return made("skipped", f"skip {step.action} (when: {step.when} is false)")
        try:
            spec, params = validated(self.registry, step.action, inputs)
        except InvalidStep as exc:
            return made("error", str(exc), inputs=inputs, error=str(exc))
        deadline = time.monotonic() + (step.timeout or DEFAULT_STEP_TIMEOUT).total_seconds()
        ctx = self.contexts.for_plan(
            rule=self.rule.name, context=self.context, index=index, ports=self.ports, deadline=deadline
        )
        if spec.plan is None:
            self.only_planned = True
            return made("planned", f"call {step.action} (it cannot plan: its effect is not known)", inputs=inputs)
        refusal = bounds_refusal(spec, ctx, params)  # the check a run makes before the call
        try:
            plan = spec.plan(ctx, params)
        except Exception as exc:
            error = describe_error(exc)
            return made("error", f"cannot plan {step.action}: {error}", inputs=inputs, error=error)
        if refusal and not plan.refused:
            plan = replace(plan, refused=refusal)
        if plan.refused:
            return made("refused", f"{plan.sentence}: refused ({plan.refused})", inputs=inputs, plan=plan)
        if plan.ran is not None:
            if step.id:
                self.steps[step.id] = {"value": plan.ran.value, "output": plan.ran.output, "status": "succeeded"}
            return made("ran", plan.sentence, inputs=inputs, plan=plan)
        self.only_planned = True
        return made("planned", plan.sentence, inputs=inputs, plan=plan)

    def _render(self, step: Step) -> dict[str, Any] | None:
        """The step's inputs, or None when its `when` is false. Strict, as a run renders, unless a template
        names the output of a step that was only planned: then leniently, as a dry run renders."""
        tctx = {**self.context, "params": self.params, "steps": self.steps}
        try:
            if step.when is not None and not evaluate_condition(step.when, tctx):
                return None
            return render_value(step.with_, tctx)
        except RenderError:
            if not self.only_planned:
                raise
        if step.when is not None and not evaluate_condition(step.when, tctx, lenient=True):
            return None
        return render_value(step.with_, tctx, lenient=True)
