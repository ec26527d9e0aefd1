"""Actions that shape a playbook's flow in time: `wait` and `verify.resolved`, both durable."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.durations import Duration, format_duration, spoken


class WaitParams(Params):
    duration: Duration = Field(description="How long to wait, e.g. 30s or 5m")


def _waited(params: WaitParams, _output: dict[str, Any]) -> str:
    return f"Waited {spoken(params.duration)}"


def _plan_wait(_ctx: ActionContext, params: WaitParams) -> Plan:
    # A plan does not wait: it says how long the run would pause.
    duration = format_duration(params.duration)
    return Plan(action="wait", change={"duration": duration}, sentence=f"wait {spoken(params.duration)}", noop=True)


@action("wait", params=WaitParams, describe_effect=_waited, reads_only=True, plan=_plan_wait)
def wait(ctx: ActionContext, params: WaitParams) -> ActionResult:
    """Pause the playbook without holding a worker: the execution is released and resumed later."""
    until = ctx.step_started_at + params.duration
    if ctx.now() < until:
        return ActionResult(output={"until": until.isoformat()}, recheck_at=until)
    return ActionResult(value=format_duration(params.duration), output={"waited": format_duration(params.duration)})


class VerifyResolvedParams(Params):
    within: Duration = Field(default=timedelta(minutes=10), description="Deadline from the step's first start")
    poll: Duration = Field(default=timedelta(seconds=15), description="How often to look again")


def _verified(_params: VerifyResolvedParams, output: dict[str, Any]) -> str:
    return f"Verified the incident resolved after {spoken(timedelta(seconds=output.get('resolved_after_s', 0)))}"


def _plan_verify(ctx: ActionContext, params: VerifyResolvedParams) -> Plan:
    # A plan does not poll: it reads the incident's status once and says what the run would wait for.
    within = spoken(params.within)
    if ctx.incident is None:
        refused = "verify.resolved needs an incident; this execution has none"
        return Plan(action="verify.resolved", sentence=f"verify the incident resolves: {refused}", refused=refused)
    state = ctx.ports.incidents.current(ctx.incident.id)
    status = state.status if state is not None else None
    change = {"incident": ctx.incident.id, "status": status, "within": format_duration(params.within)}
    sentence = f"verify incident #{ctx.incident.id} resolves within {within} (now {status or 'unknown'})"
    return Plan(action="verify.resolved", change=change, sentence=sentence, noop=True)


@action(
    "verify.resolved",
    params=VerifyResolvedParams,
    describe_effect=_verified,
    reads_only=True,
    plan=_plan_verify,
)
def verify_resolved(ctx: ActionContext, params: VerifyResolvedParams) -> ActionResult:
    """Succeed once the incident has resolved; fail (then on_failure: escalate) if it has not by the deadline."""
    if ctx.incident is None:
        raise ActionError("verify.resolved needs an incident; this execution has none")
    state = ctx.ports.incidents.current(ctx.incident.id)
    status = state.status if state is not None else None
    now = ctx.now()
    deadline = ctx.step_started_at + params.within
    if status == "resolved":
        return ActionResult(value=True, output={"resolved_after_s": round((now - ctx.step_started_at).total_seconds())})
    if now >= deadline:
        raise ActionError(
            f"incident {ctx.incident.id} not resolved within {format_duration(params.within)}",
            output={"status": status},
        )
    return ActionResult(
        output={"status": status, "deadline": deadline.isoformat()}, recheck_at=min(now + params.poll, deadline)
    )
