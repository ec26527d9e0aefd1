"""`POST /api/v1/rules/{rule}/plan`: what a rule's playbook would do now, step by step, with no effect."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, Field, model_validator

from controlplane.api.deps import MAX_ID, AdminDep, ServicesDep
from controlplane.api.errors import error_responses
from controlplane.playbooks.plan_request import plan_rule

# 422 is FastAPI's own (an invalid body: PlanIn refuses both subjects or none), documented as FastAPI does.
router = APIRouter(prefix="/api/v1", tags=["rules"], responses=error_responses(401, 403, 404))


class PlanIn(BaseModel):
    """An alert as Alertmanager would send it (`labels`, `annotations`), or an incident to plan for."""

    labels: dict[str, str] | None = Field(default=None, max_length=200)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=200)
    incident_id: int | None = Field(default=None, ge=1, le=MAX_ID)

    @model_validator(mode="after")
    def _one(self) -> PlanIn:
        if (self.labels is None) == (self.incident_id is None):
            raise ValueError("give an alert's `labels` or an `incident_id`, not both")
        return self


class PlanOut(BaseModel):
    """The ExecutionPlan (playbooks/planning.py) and whether the rule matches the alert's labels."""

    rule: str
    playbook: str
    planned_at: str
    matches: bool | None
    stopped: str | None
    refused: bool
    steps: list[dict[str, Any]]


@router.post(
    "/rules/{rule}/plan",
    summary="Plan a rule's playbook for an alert or an incident: each step's change, read from its target, none made",
)
def plan(
    services: ServicesDep,
    _actor: AdminDep,
    rule: Annotated[str, Path(max_length=255)],
    body: Annotated[PlanIn, Body()],
) -> PlanOut:
    # Admin only: a plan reads the targets (cluster, admin APIs, Prometheus) with the service's credentials.
    planned, matches = plan_rule(
        registry=services.registry,
        contexts=services.contexts,
        rules=services.rules.current,
        rule_name=rule,
        engine=services.engine,
        labels=body.labels,
        annotations=body.annotations,
        incident_id=body.incident_id,
    )
    return PlanOut(**planned.as_dict(), matches=matches)
