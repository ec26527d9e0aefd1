"""The one place that maps domain errors to HTTP status codes and a JSON error body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.requests import ClientDisconnect
from starlette.types import Send

from controlplane.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    MalformedInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    MalformedInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    Unavailable: 503,
}


class ErrorBody(BaseModel):
    """The body of every refused request: a message for people, and per-field details when there are some."""

    error: str
    details: list[dict[str, str]] | None = None


_DESCRIPTIONS = {
    400: "Body not readable (not JSON, bad encoding)",
    401: "Missing or wrong credential (Authorization: Bearer <read or admin token>, or a console login)",
    403: "The admin API is disabled: CONTROLPLANE_ADMIN_TOKEN is not set",
    404: "No such object",
    409: "The object's state does not allow this",
    415: "Not the content type the endpoint reads",
    422: "Refused: the message says why",
    503: "Database unavailable: retry after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the errors a route can answer. 400 is FastAPI's own (its body is not ours)."""
    return {
        code: {"description": _DESCRIPTIONS[code]}
        if code == 400
        else {"model": ErrorBody, "description": _DESCRIPTIONS[code]}
        for code in codes
    }


def status_for(exc: DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def _error_parts(exc: DomainError) -> tuple[int, dict[str, object], dict[str, str]]:
    status = status_for(exc)
    body: dict[str, object] = {"error": exc.message}
    if exc.details:
        body["details"] = exc.details
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="controlplane", Basic realm="controlplane"'
    elif status == 503:
        headers["Retry-After"] = "5"
    return status, body, headers


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status, body, headers = _error_parts(exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def _database_down(_request: Request, _exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "database unavailable: retry later"}, status_code=503, headers={"Retry-After": "5"})


@dataclass(frozen=True)
class Answer:
    """A whole response, sent as plain ASGI: the webhook's, which answers before the application's
    middleware and exception handlers (api/webhook.py), with the same statuses, bodies and headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    media_type: str | None = "application/json"

    async def send(self, send: Send) -> None:
        head = [(b"content-length", str(len(self.body)).encode())]
        if self.media_type is not None:
            head.append((b"content-type", self.media_type.encode()))
        head += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": head})
        await send({"type": "http.response.body", "body": self.body})


def error_answer(exc: DomainError) -> Answer:
    """What `_domain_error` answers."""
    status, body, headers = _error_parts(exc)
    return Answer(status, orjson.dumps(body), tuple(headers.items()))


DATABASE_DOWN = Answer(503, orjson.dumps({"error": "database unavailable: retry later"}), (("Retry-After", "5"),))
CLIENT_GONE = Answer(499, b"", media_type=None)  # what `_client_gone` answers
INTERNAL_ERROR = Answer(500, b"Internal Server Error", media_type="text/plain; charset=utf-8")  # Starlette's


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    # The client left before its body was read, or the server ended a stalled or evicted one
    # (controlplane.connections). Nobody is left to answer: no traceback, just nginx's 499 in the request log.
    return Response(status_code=499)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(InterfaceError, _database_down)
