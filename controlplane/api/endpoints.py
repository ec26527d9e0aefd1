"""Failover endpoints: the active endpoint clients read, every group's health, events, manual switches."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api.deps import AdminDep, ReaderDep, ServicesDep
from controlplane.api.errors import error_responses
from controlplane.failover.schemas import ActiveEndpointView, FailoverEventView, GroupStatus, SwitchResult
from controlplane.text import Text

router = APIRouter(prefix="/api/v1", tags=["failover"], responses=error_responses(401, 503), dependencies=[ReaderDep])


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: Text | None = None  # default: the most preferred healthy endpoint other than the active one
    reason: Text = Field(default="", max_length=2000)


@router.get(
    "/endpoints/active", summary="The endpoint a service's clients should use now", responses=error_responses(404)
)
def active_endpoint(services: ServicesDep, service: str) -> ActiveEndpointView:
    return services.failover.active(service)


@router.get("/endpoints", summary="Every failover group: endpoints, health, breaker state, which is active")
def list_endpoints(services: ServicesDep) -> list[GroupStatus]:
    return services.failover.status()


@router.get("/failover/events", summary="Failover events, newest first")
def list_events(
    services: ServicesDep,
    service: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[FailoverEventView]:
    return services.failover.events(service, limit)


@router.post(
    "/failover/{service}/switch",
    summary="Switch a service to another healthy endpoint",
    responses=error_responses(400, 401, 403, 404, 409),
)
def switch(services: ServicesDep, actor: AdminDep, service: str, body: SwitchRequest | None = None) -> SwitchResult:
    body = body or SwitchRequest()
    return services.failover.switch(service, body.to, actor=actor, reason=body.reason)
