"""POST /api/v1/alerts/alertmanager: authenticate, bound, validate, commit, then answer."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from pydantic import BaseModel

from controlplane.api.deps import ServicesDep
from controlplane.api.errors import status_for
from controlplane.errors import DomainError, PayloadTooLarge, UnsupportedMediaType
from controlplane.ingest.auth import check_webhook_credentials
from controlplane.ingest.payload import AlertmanagerNotification, parse_notification

router = APIRouter(tags=["ingest"])
log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/api/v1/alerts/alertmanager"


class WebhookAccepted(BaseModel):
    status: str = "accepted"
    alerts: int
    new: int
    resolved: int
    duplicates: int
    incident_ids: list[int]


def body_schemas() -> dict[str, Any]:
    """The OpenAPI schemas of the body (the route reads it raw, to bound its size, and validates it itself)."""
    body = AlertmanagerNotification.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**body.pop("$defs", {}), "AlertmanagerNotification": body}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_OUTCOME = {
    401: "unauthorized",
    400: "malformed",
    413: "too_large",
    415: "unsupported_type",
    422: "invalid",
    503: "unavailable",
}


def check_json(content_type: str | None) -> None:
    """Only application/json: a web page can post a form or text/plain cross-site without a preflight."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"send the notification as application/json (Alertmanager does), not {media or 'no content type'}"
        )


@router.post(
    WEBHOOK_PATH,
    summary="Alertmanager webhook receiver (payload version 4)",
    responses={
        400: {"description": "Empty body or not JSON"},
        401: {"description": "Missing or wrong token"},
        413: {"description": "Body over the limit"},
        415: {"description": "Not application/json"},
        422: {"description": "Not an Alertmanager version 4 payload"},
        503: {"description": "Database unavailable; Alertmanager retries"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AlertmanagerNotification"}}},
        }
    },
)
async def receive_alertmanager(request: Request, services: ServicesDep) -> WebhookAccepted:
    """Stores every alert of the notification durably before answering 2xx."""
    metrics = services.metrics
    try:
        check_webhook_credentials(request.headers.get("authorization"), services.settings.webhook_token)
        check_json(request.headers.get("content-type"))
        body = await read_body(request, services.settings.max_body_bytes)
        notification = parse_notification(body)
        result = await services.writer.submit(notification)
    except DomainError as exc:
        metrics.webhook_requests.labels(_OUTCOME.get(status_for(exc), "error")).inc()
        raise
    except Exception:
        metrics.webhook_requests.labels("error").inc()
        raise
    metrics.webhook_requests.labels("accepted").inc()
    for alert in notification.alerts:
        metrics.alerts_received.labels(alert.status).inc()
    if result.changed:
        log.info(
            "ingest.accepted",
            receiver=notification.receiver,
            new=len(result.new_alert_ids),
            resolved=len(result.resolved_alert_ids),
            opened_incidents=result.opened_incident_ids,
            resolved_incidents=result.resolved_incident_ids,
        )
    return WebhookAccepted(
        alerts=len(notification.alerts),
        new=len(result.new_alert_ids),
        resolved=len(result.resolved_alert_ids),
        duplicates=result.duplicates,
        incident_ids=result.incident_ids,
    )
