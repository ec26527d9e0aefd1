"""Executions: list, inspect, approve, reject, cancel; and the global automation switches."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from controlplane import flows
from controlplane.api.deps import MAX_ID, AdminDep, ConnDep, IdPath, ReaderDep, ServicesDep, WriteConnDep
from controlplane.api.errors import error_responses
from controlplane.playbooks import approval_plans, service
from controlplane.playbooks.schemas import (
    AutomationChange,
    AutomationOut,
    Decision,
    DryRunChange,
    ExecutionDetail,
    ExecutionPage,
)

router = APIRouter(prefix="/api/v1", tags=["executions"], responses=error_responses(401, 503), dependencies=[ReaderDep])
# Deciding on an execution: a body that is not JSON, no admin token, no such execution, already decided.
DECISION_ERRORS = error_responses(400, 401, 403, 404, 409)
SWITCH_ERRORS = error_responses(400, 401, 403)


@router.get("/executions", summary="Executions, newest first")
def list_executions(
    conn: ConnDep,
    status: Annotated[list[str] | None, Query()] = None,
    rule: str | None = None,
    incident_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> ExecutionPage:
    return service.list_executions(
        conn=conn, statuses=status or (), rule=rule, incident_id=incident_id, limit=limit, before=before
    )


@router.get(
    "/executions/{execution_id}", summary="One execution with its steps and timeline", responses=error_responses(404)
)
def get_execution(conn: ConnDep, services: ServicesDep, execution_id: IdPath) -> ExecutionDetail:
    return service.get_execution(conn=conn, execution_id=execution_id, registry=services.registry)


@router.get(
    "/executions/{execution_id}/plan",
    summary="What the execution would do now, step by step, read from its targets; approve with its plan_digest",
    responses=error_responses(404, 409),
)
def execution_plan(conn: ConnDep, services: ServicesDep, execution_id: IdPath) -> dict[str, Any]:
    plan = approval_plans.plan_of(
        conn, execution_id=execution_id, registry=services.registry, contexts=services.contexts
    )
    return {**plan.as_dict(), "plan_digest": approval_plans.digest(plan)}


@router.post(
    "/executions/{execution_id}/approve", summary="Approve an execution awaiting approval", responses=DECISION_ERRORS
)
def approve(
    actor: AdminDep, services: ServicesDep, execution_id: IdPath, body: Decision | None = None
) -> ExecutionDetail:
    if body is not None and body.plan_digest is not None:
        approval_plans.check_unchanged(
            services.engine,
            execution_id=execution_id,
            seen=body.plan_digest,
            registry=services.registry,
            contexts=services.contexts,
            recent=services.recent_plans,
        )
    return flows.approve_execution(
        engine=services.engine,
        execution_id=execution_id,
        actor=actor,
        reason=body.reason if body else "",
        now=datetime.now(UTC),
        wake=services.wake_workers,
    )


@router.post(
    "/executions/{execution_id}/reject", summary="Reject an execution awaiting approval", responses=DECISION_ERRORS
)
def reject(conn: WriteConnDep, actor: AdminDep, execution_id: IdPath, body: Decision | None = None) -> ExecutionDetail:
    return service.reject(
        conn=conn, execution_id=execution_id, actor=actor, reason=body.reason if body else "", now=datetime.now(UTC)
    )


@router.post(
    "/executions/{execution_id}/cancel", summary="Cancel an execution that has not finished", responses=DECISION_ERRORS
)
def cancel(conn: WriteConnDep, actor: AdminDep, execution_id: IdPath, body: Decision | None = None) -> ExecutionDetail:
    return service.cancel(
        conn=conn, execution_id=execution_id, actor=actor, reason=body.reason if body else "", now=datetime.now(UTC)
    )


@router.get("/automation", summary="The global switches: paused, dry run")
def get_automation(conn: ConnDep) -> AutomationOut:
    return service.get_automation(conn=conn)


@router.post(
    "/automation/pause", summary="Kill switch: new triggers are suppressed until resumed", responses=SWITCH_ERRORS
)
def pause(conn: WriteConnDep, actor: AdminDep, body: AutomationChange | None = None) -> AutomationOut:
    return service.set_automation(
        conn=conn, actor=actor, now=datetime.now(UTC), paused=True, reason=body.reason if body else ""
    )


@router.post("/automation/resume", summary="Resume automation after a pause", responses=SWITCH_ERRORS)
def resume(conn: WriteConnDep, actor: AdminDep, body: AutomationChange | None = None) -> AutomationOut:
    return service.set_automation(
        conn=conn, actor=actor, now=datetime.now(UTC), paused=False, reason=body.reason if body else ""
    )


@router.post(
    "/automation/dry-run", summary="Global dry run: record what would run, call nothing", responses=SWITCH_ERRORS
)
def dry_run(conn: WriteConnDep, actor: AdminDep, body: DryRunChange) -> AutomationOut:
    return service.set_automation(
        conn=conn, actor=actor, now=datetime.now(UTC), dry_run=body.enabled, reason=body.reason
    )
