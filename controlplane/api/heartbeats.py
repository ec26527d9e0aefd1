"""Heartbeats of failover endpoints (seed 003): `POST /api/v1/endpoints/heartbeat`, and the registrations.

Sent by the endpoints themselves with `Authorization: Bearer <CONTROLPLANE_HEARTBEAT_TOKEN>` (or the
admin token): a token that can send heartbeats and nothing else, so a compromised endpoint cannot
change anything else. The body names a service and an endpoint of the failover groups in force; one
the rules do not list is refused (404), and so is a heartbeat for an endpoint checked over HTTP
only (409), with the reason; a malformed body 422.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api.deps import ReaderDep, ServicesDep, bearer_matches
from controlplane.api.errors import error_responses
from controlplane.errors import Forbidden, Unauthorized
from controlplane.failover.heartbeats import Registration
from controlplane.rules.schema import NAME_PATTERN
from controlplane.text import Text

router = APIRouter(prefix="/api/v1", tags=["failover"], responses=error_responses(401, 503))


def require_heartbeat_sender(request: Request, services: ServicesDep) -> str:
    """`Authorization: Bearer <CONTROLPLANE_HEARTBEAT_TOKEN or CONTROLPLANE_ADMIN_TOKEN>`; open only in development
    with neither set."""
    settings = services.settings
    if settings.heartbeat_token is None and settings.admin_token is None:
        if settings.environment == "development":
            return "anonymous"
        raise Forbidden("heartbeats are disabled: set CONTROLPLANE_HEARTBEAT_TOKEN")
    if not bearer_matches(request, settings.heartbeat_token, settings.admin_token):
        raise Unauthorized("heartbeat token required: Authorization: Bearer <CONTROLPLANE_HEARTBEAT_TOKEN>")
    return "token"


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str = Field(pattern=NAME_PATTERN, max_length=128)
    endpoint: str = Field(pattern=NAME_PATTERN, max_length=128)
    instance: Text = Field(default="", max_length=255)  # who sends it (host, pod): shown in the console


@router.post(
    "/endpoints/heartbeat",
    summary="An endpoint's heartbeat: registers it and keeps it healthy (failover groups with `checks: heartbeat`)",
    responses=error_responses(401, 403, 404, 409),
)
def heartbeat(
    services: ServicesDep,
    body: HeartbeatRequest,
    _sender: Annotated[str, Depends(require_heartbeat_sender)],
) -> Registration:
    return services.heartbeats.beat(body.service, body.endpoint, body.instance)


@router.get(
    "/endpoints/heartbeats",
    summary="Every heartbeat registration: last heartbeat, age, expired or not",
    dependencies=[ReaderDep],
)
def registrations(services: ServicesDep) -> list[Registration]:
    return services.heartbeats.registrations()
