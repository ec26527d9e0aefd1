"""Builds the FastAPI application: routes, error mapping, lifespan of the shared services."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from controlplane import __version__
from controlplane.api import (
    endpoints,
    executions,
    health,
    heartbeats,
    incidents,
    monitoring,
    plans,
    replay,
    rules,
    slack,
    webhook,
)
from controlplane.api.errors import install_error_handlers
from controlplane.api.middleware import RefuseNulInUrl, RequestContextMiddleware
from controlplane.config import Settings, get_settings
from controlplane.rules.loader import RuleLoadError
from controlplane.services import Services
from controlplane.web import apidocs
from controlplane.web import routes as console

REQUEST_BODY_LIMIT = 64 * 1024  # the largest console form is a 4,000-character note


class ControlPlaneApp(FastAPI):
    """FastAPI, with the webhook answered ahead of its per-request telemetry check, middleware stack and routing:
    together they cost more than all the webhook's own work (webhook.WEBHOOK_APP keeps what they gave it)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if webhook.is_webhook(scope):
            scope["app"] = self
            await webhook.WEBHOOK_APP(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    services = Services.build(settings or get_settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(services.start)
        _reload_on_sighup(services)
        try:
            yield
        finally:
            await run_in_threadpool(services.stop)

    app = ControlPlaneApp(
        title="controlplane",
        version=__version__,
        description="Monitoring and auto-remediation control plane for LLM-agent graph services.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Every other body is bounded while it streams in, before it is parsed (Starlette answers 413).
        max_body_size=REQUEST_BODY_LIMIT,
    )
    app.state.services = services
    app.add_middleware(RefuseNulInUrl)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    # The webhook bounds its own body (CONTROLPLANE_MAX_BODY_BYTES, streamed), so that its 413 says the
    # limit and is counted in controlplane_webhook_requests_total; Starlette's limit would answer first.
    app.include_router(webhook.router, max_body_size=sys.maxsize)
    for module in (health, incidents, executions, rules, plans, monitoring, heartbeats, endpoints, slack, replay):
        app.include_router(module.router)
    console.install(app)
    apidocs.install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _reload_on_sighup(services: Services) -> None:
    """`kill -HUP` reloads the rule files; a bad file keeps the rules in force (and is logged)."""

    def reload() -> None:
        with contextlib.suppress(RuleLoadError):
            services.reload_rules()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals off the main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the webhook body, which the route reads raw (to bound its size) and validates itself,
    and the 400 every operation can answer."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(webhook.body_schemas())
        for operations in schema["paths"].values():  # RefuseNulInUrl answers before any route
            for operation in operations.values():
                operation["responses"].setdefault("400", {"description": "A NUL (%00) in the path or query string"})
        app.openapi_schema = schema
    return app.openapi_schema
