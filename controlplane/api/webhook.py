"""POST /api/v1/alerts/alertmanager: authenticate, bound, validate, commit, then answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.api.errors import CLIENT_GONE, DATABASE_DOWN, INTERNAL_ERROR, Answer, error_answer, status_for
from controlplane.api.middleware import RefuseNulInUrl, RequestContextMiddleware
from controlplane.errors import DomainError, PayloadTooLarge, UnsupportedMediaType
from controlplane.ingest.auth import check_webhook_credentials
from controlplane.ingest.payload import AlertmanagerNotification, parse_notification
from controlplane.services import Services

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


async def read_body(headers: Mapping[bytes, bytes], receive: Receive, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without reading it all."""
    declared = headers.get(b"content-length", b"").decode("latin-1")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
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


_WANTED = (b"authorization", b"content-type", b"content-length")


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers the webhook reads (the first of each, as Starlette's Headers.get)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


async def answer(services: Services, scope: Scope, receive: Receive) -> Answer:
    """Authenticate, bound, validate, commit (every alert durable before the answer), then say what changed.

    Raises what no status covers (a 500)."""
    metrics = services.metrics
    headers = _headers(scope)
    try:
        check_webhook_credentials(_text(headers.get(b"authorization")), services.settings.webhook_token)
        check_json(_text(headers.get(b"content-type")))
        body = await read_body(headers, receive, services.settings.max_body_bytes)
        notification = parse_notification(body)
        result = await services.writer.submit(notification)
    except DomainError as exc:
        metrics.webhook_requests.labels(_OUTCOME.get(status_for(exc), "error")).inc()
        return error_answer(exc)
    except (OperationalError, InterfaceError):
        metrics.webhook_requests.labels("error").inc()
        return DATABASE_DOWN
    except ClientDisconnect:
        metrics.webhook_requests.labels("error").inc()
        return CLIENT_GONE
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
    accepted = {
        "status": "accepted",
        "alerts": len(notification.alerts),
        "new": len(result.new_alert_ids),
        "resolved": len(result.resolved_alert_ids),
        "duplicates": result.duplicates,
        "incident_ids": result.incident_ids,
    }
    return Answer(200, orjson.dumps(accepted))


async def receive_webhook(scope: Scope, receive: Receive, send: Send) -> None:
    """The webhook as a plain ASGI app, answered ahead of the application's middleware and routing (WEBHOOK_APP).

    They cost more than all the webhook's own work (a third of the service's time per notification, in
    `same`); what they give it is kept: the request id and the log line of a refused request
    (RequestContextMiddleware, around this), the NUL check, the error bodies of api/errors.py."""
    services: Services = scope["app"].state.services
    try:
        reply = await answer(services, scope, receive)
    except Exception:
        log.exception("webhook.failed")
        reply = INTERNAL_ERROR
    await reply.send(send)


def is_webhook(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == WEBHOOK_PATH


# What the service answers the webhook with (app.ControlPlaneApp): the request id, the log line of a refused
# request and the NUL check of the application's middleware, around `receive_webhook`.
WEBHOOK_APP: ASGIApp = RequestContextMiddleware(RefuseNulInUrl(receive_webhook))


@router.post(
    WEBHOOK_PATH,
    response_model=WebhookAccepted,
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
async def receive_alertmanager(request: Request) -> Response:
    """Stores every alert of the notification durably before answering 2xx.

    The service answers this path ahead of its routes (WEBHOOK_APP); the route documents it (OpenAPI) and answers
    where the application runs without that (the same `answer`)."""
    reply = await answer(request.app.state.services, request.scope, request.receive)
    return Response(reply.body, reply.status, dict(reply.headers), media_type=reply.media_type)
