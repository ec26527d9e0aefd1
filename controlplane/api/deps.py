"""FastAPI dependency aliases: the running services and a read connection."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy import Connection

from controlplane.errors import Forbidden, Unauthorized
from controlplane.services import Services

# Row ids are 64-bit (PostgreSQL bigint, SQLite INTEGER): a larger number is refused (422) instead of
# reaching the driver, where SQLite raises OverflowError (a 500).
MAX_ID = 2**63 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


async def get_services(request: Request) -> Services:
    # async: a sync dependency would cost every webhook a hop through the thread pool.
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def get_conn(services: ServicesDep) -> Iterator[Connection]:
    with services.engine.connect() as conn:
        yield conn


ConnDep = Annotated[Connection, Depends(get_conn)]


def get_write_conn(services: ServicesDep) -> Iterator[Connection]:
    """A write transaction, committed when the route returns without error."""
    with services.engine.connect().execution_options(write=True) as conn, conn.begin():
        yield conn


WriteConnDep = Annotated[Connection, Depends(get_write_conn)]


def require_admin(request: Request, services: ServicesDep) -> str:
    """The admin API (until the console's logins exist): `Authorization: Bearer <CONTROLPLANE_ADMIN_TOKEN>`."""
    token = services.settings.admin_token
    if token is None:
        raise Forbidden("the admin API is disabled: set CONTROLPLANE_ADMIN_TOKEN")
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise Unauthorized("admin token required: Authorization: Bearer <CONTROLPLANE_ADMIN_TOKEN>")
    return "admin"


AdminDep = Annotated[str, Depends(require_admin)]
