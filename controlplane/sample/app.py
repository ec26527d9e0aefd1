"""Owns the sample service's HTTP face: /metrics, /health, /ready and the JSON /admin API.

Routes are thin: parse, call one SampleService method, answer. State-changing admin requests
go through `SampleService.once`, so a repeated `Idempotency-Key` replays the first answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controlplane.sample.bodies import (
    CanaryRequest,
    CleanupRequest,
    DegradeRequest,
    DisableRequest,
    FaultRequest,
    LimitsRequest,
    ModelRequest,
    RestoreRequest,
    SwitchRequest,
)
from controlplane.sample.errors import SampleError
from controlplane.sample.llm import DEFAULT_MODELS
from controlplane.sample.service import SampleService

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def _outcome(command: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The one place domain errors become HTTP answers (and so are replayed like successes)."""
    try:
        return 200, command()
    except SampleError as exc:
        return exc.status_code, {"error": str(exc), **exc.detail}


def create_app(service: SampleService, *, interval: float = 0.2, admin_token: str | None = None) -> FastAPI:
    """The app serving `service`; while it runs, a background task ticks the graphs every `interval` s."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def ticker() -> None:
            while True:
                await asyncio.sleep(interval)
                service.tick()

        task = asyncio.create_task(ticker())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # No /docs: Swagger UI would load from a CDN that is unreachable here.
    app = FastAPI(title="sample LangGraph service", lifespan=lifespan, docs_url=None, redoc_url=None)

    def authorize(authorization: Annotated[str | None, Header()] = None) -> None:
        if admin_token is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), admin_token.encode()):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_request: Request, _exc: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": "admin API needs `Authorization: Bearer <token>`"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    def health() -> JSONResponse:
        if not service.healthy:
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    def ready() -> JSONResponse:
        reason = service.ready()
        if reason is not None:
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    admin = APIRouter(prefix="/admin", dependencies=[Depends(authorize)])

    def command(request: Request, key: str | None, body: Any, run: Callable[[], dict[str, Any]]) -> JSONResponse:
        payload = body.model_dump(mode="json") if body is not None else None
        identity = f"{request.method} {request.url.path} {json.dumps(payload, sort_keys=True)}"
        status_code, answer = service.once(key, identity, lambda: _outcome(run))
        return JSONResponse(answer, status_code=status_code)

    @admin.get("/graphs")
    def graphs() -> dict[str, Any]:
        return service.graphs_view()

    @admin.post("/graphs/{name}/disable")
    def disable(
        name: str, request: Request, key: IdempotencyKey = None, body: DisableRequest | None = None
    ) -> JSONResponse:
        return command(request, key, body, lambda: service.disable(name, body))

    @admin.post("/graphs/{name}/enable")
    def enable(name: str, request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, None, lambda: service.enable(name))

    @admin.get("/llm")
    def llm() -> dict[str, Any]:
        return service.llm.view()

    @admin.post("/graphs/{name}/llm")
    def switch_model(name: str, body: ModelRequest, request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, body, lambda: service.llm.switch_model(name, body.model))

    @admin.post("/graphs/{name}/limits")
    def limits(name: str, body: LimitsRequest, request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, body, lambda: service.llm.set_limits(name, body.concurrency, body.token_budget))

    @admin.post("/graphs/{name}/canary")
    def canary(
        name: str, request: Request, key: IdempotencyKey = None, body: CanaryRequest | None = None
    ) -> JSONResponse:
        runs = body.runs if body is not None else CanaryRequest().runs
        return command(request, key, body, lambda: service.llm.canary(name, runs))

    @admin.post("/tools/{name}/disable")
    def disable_tool(name: str, request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, None, lambda: service.llm.set_tool(name, enabled=False))

    @admin.post("/tools/{name}/enable")
    def enable_tool(name: str, request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, None, lambda: service.llm.set_tool(name, enabled=True))

    @admin.get("/storage")
    def storage() -> dict[str, Any]:
        return service.storage_view()

    @admin.post("/storage/switch")
    def switch(body: SwitchRequest, request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, body, lambda: service.switch_storage(body.backend))

    @admin.post("/storage/cleanup")
    def cleanup(request: Request, key: IdempotencyKey = None, body: CleanupRequest | None = None) -> JSONResponse:
        return command(request, key, body, lambda: service.cleanup(body.backend if body else None))

    @admin.get("/degradation")
    def degradation() -> dict[str, Any]:
        return service.degradation.view()

    @admin.post("/degrade")
    def degrade(body: DegradeRequest, request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, body, lambda: service.degradation.degrade(body.level, body.features))

    @admin.post("/restore")
    def restore(request: Request, key: IdempotencyKey = None, body: RestoreRequest | None = None) -> JSONResponse:
        wanted = body or RestoreRequest()
        return command(request, key, body, lambda: service.degradation.restore(wanted.level, wanted.features))

    @admin.get("/faults")
    def faults() -> dict[str, Any]:
        return service.faults_view()

    @admin.post("/faults")
    def inject(body: FaultRequest, request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, body, lambda: service.inject(body))

    @admin.delete("/faults")
    def clear(request: Request, key: IdempotencyKey = None) -> JSONResponse:
        return command(request, key, None, service.clear_faults)

    @admin.get("/idempotency")
    def idempotency() -> dict[str, Any]:
        return service.idempotency_view()

    app.include_router(admin)
    return app


class _Unauthorized(Exception):
    pass


def serve(
    *,
    host: str,
    port: int,
    graphs: list[str],
    interval: float,
    admin_token: str | None = None,
    seed: int = 0,
    models: Sequence[str] = DEFAULT_MODELS,
) -> None:
    """Run the sample service in the foreground (the `controlplane sample-app` command)."""
    import signal
    import sys

    import uvicorn

    # uvicorn re-raises SIGTERM after its graceful shutdown; a clean stop should exit 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    service = SampleService(graphs, seed=seed, models=models)  # before uvicorn: a bad name exits 2, not a traceback
    app = create_app(service, interval=interval, admin_token=admin_token)
    uvicorn.run(app, host=host, port=port, access_log=False, timeout_graceful_shutdown=5)
