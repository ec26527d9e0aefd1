"""Read API: incidents (with alerts and timeline) and alerts."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from controlplane.api.deps import MAX_ID, ConnDep, IdPath
from controlplane.api.errors import error_responses
from controlplane.incidents import service
from controlplane.incidents.schemas import AlertPage, IncidentDetail, IncidentPage, IncidentStatus

router = APIRouter(prefix="/api/v1", tags=["incidents"], responses=error_responses(503))

Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]
Before = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="Cursor: return items with a smaller id (next_cursor)")
]


@router.get("/incidents", summary="Incidents, newest first")
def list_incidents(
    conn: ConnDep,
    status: Annotated[list[IncidentStatus] | None, Query(description="Repeat to match any of several")] = None,
    severity: str | None = None,
    limit: Limit = 50,
    before: Before = None,
) -> IncidentPage:
    return service.list_incidents(conn=conn, statuses=status or (), severity=severity, limit=limit, before=before)


@router.get(
    "/incidents/{incident_id}",
    summary="One incident with its alerts and audit timeline",
    responses=error_responses(404),
)
def get_incident(conn: ConnDep, incident_id: IdPath) -> IncidentDetail:
    return service.get_incident(conn=conn, incident_id=incident_id)


@router.get("/alerts", summary="Alert episodes, newest first")
def list_alerts(
    conn: ConnDep,
    status: Literal["firing", "resolved"] | None = None,
    alertname: str | None = None,
    fingerprint: str | None = None,
    limit: Limit = 50,
    before: Before = None,
) -> AlertPage:
    return service.list_alerts(
        conn=conn, status=status, alertname=alertname, fingerprint=fingerprint, limit=limit, before=before
    )
