"""`http.request`: call a URL on an allow-listed host, e.g. a service's health or admin endpoint."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, action


class HttpRequestParams(Params):
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    json_body: Any = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0, le=120)
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])


def _host(params: HttpRequestParams) -> str:
    return urlsplit(params.url).hostname or ""


def _target(_ctx: ActionContext, params: HttpRequestParams) -> str:
    return _host(params)


def _refuse_unlisted(ctx: ActionContext, params: HttpRequestParams) -> str | None:
    parts = urlsplit(params.url)
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not allowed (http or https)"
    if _host(params) not in ctx.settings.http_allowed_hosts:
        return f"host {_host(params)!r} is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS"
    return None


@action(
    "http.request",
    params=HttpRequestParams,
    blast_radius=_refuse_unlisted,
    blast_radius_doc="only hosts listed in CONTROLPLANE_HTTP_ALLOWED_HOSTS",
    target=_target,
)
def http_request(ctx: ActionContext, params: HttpRequestParams) -> ActionResult:
    """Send one HTTP request with the step's idempotency key; 5xx and connection errors are retriable."""
    headers = {"Idempotency-Key": ctx.idempotency_key, **params.headers}
    try:
        response = httpx.request(
            params.method,
            params.url,
            json=params.json_body,
            headers=headers,
            timeout=ctx.time_left(params.timeout),
            follow_redirects=False,
        )
    except httpx.TransportError as exc:
        raise ActionError(f"{params.method} {params.url}: {type(exc).__name__}: {exc}", retriable=True) from None
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:2000]
    output = {"status_code": response.status_code, "body": body}
    if response.status_code not in params.expect_status:
        retriable = response.status_code >= 500 or response.status_code == 429
        raise ActionError(
            f"{params.method} {params.url} answered {response.status_code}", retriable=retriable, output=output
        )
    return ActionResult(value=body, output=output)
