"""`http.request`: call a URL on an allow-listed host, e.g. a service's health or admin endpoint.

Also owns what every action that sends a request to a URL from a rule checks: a URL httpx can
send (`HttpUrl`, checked by integrations/http.py), header names and values that cannot smuggle
another header, and the allow-list (`allowed_target`, CONTROLPLANE_HTTP_ALLOWED_HOSTS: `host`
allows any port, `host:port` that port only). Rendered from alert labels, these are untrusted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.integrations.http import check_url, host_of, url_parts

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF, NUL and the rest; a tab is allowed


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


def allowed_target(url: str, allowed_hosts: Sequence[str]) -> str | None:
    """The CONTROLPLANE_HTTP_ALLOWED_HOSTS entry that allows `url` (`host:port` before `host`), or None.

    Parsed as httpx will send it, so the host checked is the host called.
    """
    parts = url_parts(url)
    if parts is None:
        return None
    matches = []
    for entry in allowed_hosts:
        allowed = urlsplit(f"//{entry}")  # the settings checked its form: host, or host:port
        if allowed.hostname == parts.host and allowed.port in (None, parts.port):
            matches.append(entry)
    return max(matches, key=len) if matches else None


class HttpRequestParams(Params):
    url: HttpUrl
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    json_body: Any = Field(default=None, alias="json")
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0, le=120)
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])


def _target(ctx: ActionContext, params: HttpRequestParams) -> str | None:
    return allowed_target(params.url, ctx.ports.http_allowed_hosts)


def _refuse_unlisted(ctx: ActionContext, params: HttpRequestParams) -> str | None:
    if _target(ctx, params) is None:
        return f"host {host_of(params.url)!r} is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS"
    return None


def _requested(params: HttpRequestParams, output: dict[str, Any]) -> str:
    # The host only, as notify.webhook records it: URLs often carry a secret in their path or query.
    return f"Sent {params.method} to {host_of(params.url)}: HTTP {output.get('status_code')}"


def _plan(ctx: ActionContext, params: HttpRequestParams) -> Plan:
    # Nothing is sent: even a GET may change something on a service a rule calls.
    host = host_of(params.url)
    return Plan(
        action="http.request",
        target=_target(ctx, params),
        change={"method": params.method, "host": host, "expect_status": params.expect_status},
        sentence=f"send {params.method} to {host} (expects HTTP {', '.join(map(str, params.expect_status))})",
    )


@action(
    "http.request",
    params=HttpRequestParams,
    blast_radius=_refuse_unlisted,
    blast_radius_doc="only hosts (or host:port) listed in CONTROLPLANE_HTTP_ALLOWED_HOSTS",
    target=_target,
    describe_effect=_requested,
    plan=_plan,
)
def http_request(ctx: ActionContext, params: HttpRequestParams) -> ActionResult:
    """Send one HTTP request to a host or host:port in CONTROLPLANE_HTTP_ALLOWED_HOSTS; 5xx and connection errors retry.

    The request carries the step's idempotency key. A request that cannot be sent as rendered
    (a bad URL, a line break in a header) fails the step at once and is not the target's fault.
    """
    headers = {"Idempotency-Key": ctx.idempotency_key, **params.headers}
    answer = ctx.ports.http.request(
        params.method, params.url, json=params.json_body, headers=headers, timeout=ctx.time_left(params.timeout)
    )
    output = {"status_code": answer.status_code, "body": answer.body}
    if answer.status_code not in params.expect_status:
        retriable = answer.status_code >= 500 or answer.status_code == 429
        raise ActionError(
            f"{params.method} {params.url} answered {answer.status_code}", retriable=retriable, output=output
        )
    return ActionResult(value=answer.body, output=output)
