"""Actions on the incident itself: `incident.annotate` adds a note to its timeline."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action, clip


class AnnotateParams(Params):
    text: str = Field(min_length=1, max_length=4000)


def _noted(params: AnnotateParams, _output: dict[str, Any]) -> str:
    return f"Noted on the timeline: {clip(params.text)}"


def _plan(ctx: ActionContext, params: AnnotateParams) -> Plan:
    # Planned, not run: the note is an audit row of the control plane's own, and a plan writes nothing.
    if ctx.incident is None:
        refused = "incident.annotate needs an incident; this execution has none"
        return Plan(action="incident.annotate", sentence=f"add a note: {refused}", refused=refused)
    sentence = f"note on incident #{ctx.incident.id}'s timeline: {clip(params.text)}"
    return Plan(action="incident.annotate", change={"text": params.text}, sentence=sentence)


# It changes nothing outside the control plane, and its note is on the timeline already.
@action("incident.annotate", params=AnnotateParams, describe_effect=_noted, reads_only=True, plan=_plan)
def annotate(ctx: ActionContext, params: AnnotateParams) -> ActionResult:
    """Add a note to the incident's timeline (what the playbook found, for the on-call person)."""
    if ctx.incident is None:
        raise ActionError("incident.annotate needs an incident; this execution has none")
    ctx.audit("incident.note", {"text": params.text})
    return ActionResult(value=params.text)
