"""The one place that maps domain errors to HTTP status codes and a JSON error body."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

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
)

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    MalformedInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    InvalidInput: 422,
    Unavailable: 503,
}


def status_for(exc: DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return 500


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = status_for(exc)
    body: dict[str, object] = {"error": exc.message}
    if exc.details:
        body["details"] = exc.details
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="controlplane", Basic realm="controlplane"'
    elif status == 503:
        headers["Retry-After"] = "5"
    return JSONResponse(body, status_code=status, headers=headers)


async def _database_down(_request: Request, _exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "database unavailable: retry later"}, status_code=503, headers={"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(InterfaceError, _database_down)
