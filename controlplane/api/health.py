"""Liveness, readiness and the service's own /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from controlplane.api.deps import ServicesDep
from controlplane.db import migrate

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process answers")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: database reachable and migrations current",
    responses={503: {"description": "Not ready: `checks` says which check failed"}},
)
def ready(services: ServicesDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        if services.writer.database_down:  # known down: answer now instead of waiting out a connect timeout
            raise ConnectionError("ingest writer is probing the database")
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        schema_ok, checks["migrations"] = migrate.schema_status(services.engine, services.head_revision)
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
        schema_ok = False
    ok = checks.get("database") == "ok" and schema_ok
    elector = services.elector
    leader = elector.leader
    body = {
        "status": "ready" if ok else "not ready",
        "checks": checks,
        "instance": elector.instance_id,
        "leader": {
            "this_instance": elector.is_leader,
            "holder": leader.holder if leader else None,
            "term": leader.term if leader else None,
        },
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics of the control plane", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
