"""Request context (a request id on every log line and response, one log line per failed request), and the URL rule."""

from __future__ import annotations

import re
import time
import uuid

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.text import NUL, NUL_REFUSED

log = structlog.get_logger("controlplane.http")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): it sits on the ingest hot path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
            level = log.warning if status >= 500 else log.info if status >= 400 else log.debug
            level("http.request", method=scope["method"], path=scope["path"], status=status, ms=elapsed_ms)
            structlog.contextvars.unbind_contextvars("request_id")


class RefuseNulInUrl:
    """A NUL (%00) in the path or the query string is refused with 400 before any route reads it.

    Every query and path parameter of every route, console pages included, in one place: PostgreSQL
    cannot compare text with a NUL in it, so a search or filter with one would fail as a 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (NUL in scope["path"] or b"%00" in scope["query_string"]):
            body = orjson.dumps({"error": f"{NUL_REFUSED} in the URL (%00)"})
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
