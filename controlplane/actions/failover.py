"""`failover.switch`: move a service's traffic to another of its endpoints (failover groups in rule files)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.errors import DomainError
from controlplane.rules.schema import NAME_PATTERN


class SwitchParams(Params):
    service: str = Field(pattern=NAME_PATTERN)
    to: str | None = None  # default: the most preferred healthy endpoint other than the active one


def _target(ctx: ActionContext, params: SwitchParams) -> str | None:
    return params.service if params.service in ctx.failover else None  # an unknown service is refused


def _refuse_unknown(ctx: ActionContext, params: SwitchParams) -> str | None:
    group = ctx.failover.get(params.service)
    if group is None:
        return f"service {params.service!r} has no failover group in the rule files"
    if params.to is not None and all(e.name != params.to for e in group.endpoints):
        return f"{params.to!r} is not an endpoint of service {params.service!r}"
    return None


def _switched(params: SwitchParams, output: dict[str, Any]) -> str:
    service, to = output.get("service", params.service), output.get("to")
    region = f" ({output['to_region']})" if output.get("to_region") else ""
    if output.get("changed") is False:
        return f"{service} was already on {to}{region}; left as it was"
    return f"Failed over {service} from {output.get('from')} to {to}{region}"


def _plan(ctx: ActionContext, params: SwitchParams) -> Plan:
    try:
        preview = ctx.ports.failover.preview(params.service, params.to, groups=ctx.failover)
    except DomainError as exc:  # what the switch would refuse with: unhealthy target, nowhere to go
        return Plan(
            action="failover.switch",
            target=params.service,
            change={"to": params.to},
            sentence=f"fail over {params.service}: refused ({exc.message})",
            refused=exc.message,
        )
    region = f" ({preview.to_region})" if preview.to_region else ""
    change = {
        "from": preview.from_endpoint,
        "to": preview.to_endpoint,
        "from_region": preview.from_region,
        "to_region": preview.to_region,
    }
    noop = preview.from_endpoint == preview.to_endpoint
    if noop:
        sentence = f"leave {params.service} on {preview.to_endpoint}{region}: already active"
    else:
        sentence = f"fail over {params.service} {preview.from_endpoint} → {preview.to_endpoint}{region}"
    return Plan(action="failover.switch", target=params.service, change=change, sentence=sentence, noop=noop)


@action(
    "failover.switch",
    params=SwitchParams,
    blast_radius=_refuse_unknown,
    blast_radius_doc="only to a healthy endpoint of the same service (its failover group in the rule files)",
    target=_target,
    describe_effect=_switched,
    plan=_plan,
)
def switch(ctx: ActionContext, params: SwitchParams) -> ActionResult:
    """Make another endpoint of a service active; refuses an unhealthy target."""
    # The step's idempotency key makes a retried or resumed step return the first switch.
    try:
        result = ctx.ports.failover.switch(
            params.service,
            params.to,
            groups=ctx.failover,
            clock=ctx.now,
            actor=f"rule:{ctx.rule}",
            reason=f"playbook {ctx.step or 'step'} of execution {ctx.execution_id}",
            incident_id=ctx.incident.id if ctx.incident else None,
            execution_id=ctx.execution_id,
            idempotency_key=ctx.idempotency_key,
        )
    except DomainError as exc:  # unhealthy target, nowhere to go: retrying now would not help
        raise ActionError(exc.message) from None
    output = {
        "service": result.service,
        "from": result.from_endpoint,
        "to": result.to_endpoint,
        "from_region": result.from_region,
        "to_region": result.to_region,
        "changed": result.changed,
    }
    return ActionResult(value=result.to_endpoint, output=output)
