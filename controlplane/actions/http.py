"""`http.request`: call a URL on an allow-listed host, e.g. a service's health or admin endpoint.

Also owns what every action that sends a request to a URL from a rule checks: a URL httpx can
send (`HttpUrl`), header names and values that cannot smuggle another header, and the
allow-list (`allowed_target`, CONTROLPLANE_HTTP_ALLOWED_HOSTS: `host` allows any port,
`host:port` that port only). Rendered from alert labels, these are untrusted.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, action
from controlplane.resilience.retry import is_retriable

DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF, NUL and the rest; a tab is allowed


def check_url(value: str) -> str:
    """`value` if httpx can send it over http(s) to a host; else ValueError saying why."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a URL httpx can send: {exc}") from None
    if url.scheme not in DEFAULT_PORTS:
        raise ValueError(f"scheme {url.scheme!r} is not allowed (http or https)")
    if not url.host:
        raise ValueError("the URL names no host")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"port {url.port} is out of range")
    return value


def _header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid header name")
    return value


def _header_value(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("a header value may not contain line breaks, NUL or other control characters")
    return value


HttpUrl = Annotated[str, AfterValidator(check_url)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]


def allowed_target(url: str, allowed_hosts: list[str]) -> str | None:
    """The CONTROLPLANE_HTTP_ALLOWED_HOSTS entry that allows `url` (`host:port` before `host`), or None.

    Parsed as httpx will send it, so the host checked is the host called.
    """
    try:
        parsed = httpx.URL(check_url(url))
    except ValueError:
        return None
    port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
    matches = []
    for entry in allowed_hosts:
        parts = urlsplit(f"//{entry}")  # the settings checked its form: host, or host:port
        if parts.hostname == parsed.host and parts.port in (None, port):
            matches.append(entry)
    return max(matches, key=len) if matches else None


def host_of(url: str) -> str:
    """The host as an error message names it: with the port when the URL gives one."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def request_failed(where: str, exc: httpx.TransportError | httpx.InvalidURL) -> ActionError:
    """A request that failed before an answer; one httpx refused to send is not retried (nor the target's fault)."""
    return ActionError(f"{where}: {type(exc).__name__}: {exc}", retriable=is_retriable(exc))


class HttpRequestParams(Params):
    url: HttpUrl
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    json_body: Any = Field(default=None, alias="json")
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0, le=120)
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])


def _target(ctx: ActionContext, params: HttpRequestParams) -> str | None:
    return allowed_target(params.url, ctx.settings.http_allowed_hosts)


def _refuse_unlisted(ctx: ActionContext, params: HttpRequestParams) -> str | None:
    if _target(ctx, params) is None:
        return f"host {host_of(params.url)!r} is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS"
    return None


@action(
    "http.request",
    params=HttpRequestParams,
    blast_radius=_refuse_unlisted,
    blast_radius_doc="only hosts (or host:port) listed in CONTROLPLANE_HTTP_ALLOWED_HOSTS",
    target=_target,
)
def http_request(ctx: ActionContext, params: HttpRequestParams) -> ActionResult:
    """Send one HTTP request to a host or host:port in CONTROLPLANE_HTTP_ALLOWED_HOSTS; 5xx and connection errors retry.

    The request carries the step's idempotency key. A request that cannot be sent as rendered
    (a bad URL, a line break in a header) fails the step at once and is not the target's fault.
    """
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
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        raise request_failed(f"{params.method} {params.url}", exc) from None
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
