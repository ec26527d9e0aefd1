"""FastAPI dependency aliases: the running services and a read connection."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import SecretStr
from sqlalchemy import Connection

from controlplane.db.engine import write_transaction
from controlplane.errors import Forbidden, Unauthorized
from controlplane.services import Services
from controlplane.web.auth import console_user

# Row ids are 64-bit (PostgreSQL bigint, SQLite INTEGER): a larger number is refused (422) instead of
# reaching the driver, where SQLite raises OverflowError (a 500).
MAX_ID = 2**63 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


async def get_services(request: Request) -> Services:
    # async: a sync dependency would cost every webhook a hop through the thread pool.
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_conn(services: ServicesDep) -> Iterator[Connection]:
    with services.engine.connect() as conn:
        yield conn


ConnDep = Annotated[Connection, Depends(get_conn)]


def get_write_conn(services: ServicesDep) -> Iterator[Connection]:
    """A write transaction, committed when the route returns without error and before the answer is sent
    (scope="function"): a failed commit is an error answer, and a read after the answer sees the change."""
    with write_transaction(services.engine) as conn:
        yield conn


WriteConnDep = Annotated[Connection, Depends(get_write_conn, scope="function")]


def _bearer(request: Request) -> bytes | None:
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    return given.strip().encode() if scheme.lower() == "bearer" else None


def _matches(given: bytes | None, *tokens: SecretStr | None) -> bool:
    # Every configured token is compared, so the time taken does not say which one nearly matched.
    found = False
    for token in tokens:
        if token is not None and given is not None:
            found |= hmac.compare_digest(given, token.get_secret_value().encode())
    return found


def bearer_matches(request: Request, *tokens: SecretStr | None) -> bool:
    """Whether the request's bearer token is one of `tokens` (compared in constant time)."""
    return _matches(_bearer(request), *tokens)


def require_reader(request: Request, services: ServicesDep) -> str:
    """Every /api/v1 read: the read token, the admin token, or a logged-in console session.

    Open only in development with neither token set (the service warns at start-up).
    """
    settings = services.settings
    if settings.read_token is None and settings.admin_token is None and settings.environment == "development":
        return "anonymous"
    if _matches(_bearer(request), settings.read_token, settings.admin_token):
        return "token"
    user = console_user(request)
    if user is not None:
        return f"user:{user.name}"
    raise Unauthorized(
        "a credential is required: Authorization: Bearer <CONTROLPLANE_READ_TOKEN or CONTROLPLANE_ADMIN_TOKEN>,"
        " or a console login"
    )


ReaderDep = Depends(require_reader)


def require_admin(request: Request, services: ServicesDep) -> str:
    """The admin API (until the console's logins exist): `Authorization: Bearer <CONTROLPLANE_ADMIN_TOKEN>`."""
    token = services.settings.admin_token
    if token is None:
        raise Forbidden("the admin API is disabled: set CONTROLPLANE_ADMIN_TOKEN")
    if not _matches(_bearer(request), token):
        raise Unauthorized("admin token required: Authorization: Bearer <CONTROLPLANE_ADMIN_TOKEN>")
    return "admin"


AdminDep = Annotated[str, Depends(require_admin)]
