"""Actions on the incident itself: `incident.annotate` adds a note to its timeline."""

from __future__ import annotations

from pydantic import Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, action
from controlplane.audit import audit
from controlplane.db.engine import write_transaction


class AnnotateParams(Params):
    text: str = Field(min_length=1, max_length=4000)


@action("incident.annotate", params=AnnotateParams)
def annotate(ctx: ActionContext, params: AnnotateParams) -> ActionResult:
    """Add a note to the incident's timeline (what the playbook found, for the on-call person)."""
    if ctx.incident is None:
        raise ActionError("incident.annotate needs an incident; this execution has none")
    with write_transaction(ctx.engine) as conn:
        audit(
            conn,
            actor=f"rule:{ctx.rule}",
            action="incident.note",
            incident_id=ctx.incident.id,
            execution_id=ctx.execution_id,
            detail={"text": params.text},
            now=ctx.now(),
        )
    return ActionResult(value=params.text)
