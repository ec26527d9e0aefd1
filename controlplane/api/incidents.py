"""Read API: incidents (with alerts and timeline) and alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from controlplane.api.deps import MAX_ID, ConnDep, IdPath, ReaderDep, ServicesDep
from controlplane.api.errors import error_responses
from controlplane.api.monitoring import attachment
from controlplane.incidents import postmortem, postmortem_md, service
from controlplane.incidents.schemas import AlertPage, IncidentDetail, IncidentPage, IncidentStatus, TimelinePage

router = APIRouter(prefix="/api/v1", tags=["incidents"], responses=error_responses(401, 503), dependencies=[ReaderDep])

Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]
Before = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="Cursor: return items with a smaller id (next_cursor)")
]
After = Annotated[int | None, Query(ge=1, le=MAX_ID, description="Cursor: return items with a larger id (next_cursor)")]


@router.get("/incidents", summary="Incidents, newest first")
def list_incidents(
    conn: ConnDep,
    status: Annotated[list[IncidentStatus] | None, Query(description="Repeat to match any of several")] = None,
    severity: str | None = None,
    automation: Annotated[
        Literal["failed"] | None, Query(description="`failed`: only incidents whose latest run failed or rolled back")
    ] = None,
    limit: Limit = 50,
    before: Before = None,
) -> IncidentPage:
    return service.list_incidents(
        conn=conn,
        statuses=status or (),
        severity=severity,
        automation_failed=automation == "failed",
        limit=limit,
        before=before,
    )


@router.get(
    "/incidents/{incident_id}",
    summary="One incident with its alerts and audit timeline",
    responses=error_responses(404),
)
def get_incident(
    conn: ConnDep,
    incident_id: IdPath,
    alerts_limit: Annotated[int, Query(ge=1, le=500, description="Alerts in the first page")] = service.DETAIL_ALERTS,
    timeline_limit: Annotated[int, Query(ge=1, le=500, description="Events in the first page")] = service.DETAIL_EVENTS,
) -> IncidentDetail:
    return service.get_incident(
        conn=conn, incident_id=incident_id, alerts_limit=alerts_limit, events_limit=timeline_limit
    )


@router.get(
    "/incidents/{incident_id}/alerts",
    summary="An incident's alerts, oldest first",
    responses=error_responses(404),
)
def get_incident_alerts(conn: ConnDep, incident_id: IdPath, limit: Limit = 100, after: After = None) -> AlertPage:
    service.incident_row(conn=conn, incident_id=incident_id)
    return service.incident_alerts(conn=conn, incident_id=incident_id, limit=limit, after=after)


@router.get(
    "/incidents/{incident_id}/timeline",
    summary="An incident's audit events, oldest first",
    responses=error_responses(404),
)
def get_incident_timeline(conn: ConnDep, incident_id: IdPath, limit: Limit = 200, after: After = None) -> TimelinePage:
    service.incident_row(conn=conn, incident_id=incident_id)
    return service.incident_timeline(conn=conn, incident_id=incident_id, limit=limit, after=after)


@router.get(
    "/incidents/{incident_id}/postmortem",
    summary="An incident's postmortem: summary, impact, alerts, timeline, rule runs, PromQL snapshots, outcome",
    response_class=Response,
    responses={
        **error_responses(404),
        200: {
            "description": "Markdown (`format=md`, a download) or the PostmortemOut JSON document (`format=json`)",
            "model": postmortem.PostmortemOut,
            "content": {"text/markdown": {"schema": {"type": "string"}}},
        },
    },
)
def get_incident_postmortem(
    conn: ConnDep,
    services: ServicesDep,
    incident_id: IdPath,
    format: Annotated[Literal["md", "json"], Query(description="`md` (default) or `json`")] = "md",
) -> Response:
    """Built from the incident's record, bounded: counts and the first alerts, events and runs (README, Postmortems).

    `md` is a download (Content-Disposition: attachment); `json` follows docs/postmortem.schema.json."""
    doc = postmortem.build(conn=conn, incident_id=incident_id, now=datetime.now(UTC), registry=services.registry)
    if format == "json":
        return JSONResponse(doc.model_dump(mode="json"))
    return Response(
        postmortem_md.render(doc),
        media_type="text/markdown; charset=utf-8",
        headers=attachment(f"incident-{incident_id}-postmortem.md"),
    )


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
