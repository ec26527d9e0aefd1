"""Owns sending HTTP requests to the URLs rule files name (`http.request`, `notify.webhook`), and what httpx can send.

URLs rendered from alert labels are untrusted: `check_url` says whether httpx can send one, and
`url_parts` parses it as httpx will send it, so the host an allow-list checks is the host called.
Failures come back as ActionErrors (controlplane/errors.py); a request httpx refused to send (a
bad URL, a line break in a header) is not retried, nor the target's fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from controlplane.errors import ActionError
from controlplane.resilience.retry import is_retriable

DEFAULT_PORTS = {"http": 80, "https": 443}


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


@dataclass(frozen=True)
class UrlParts:
    scheme: str
    host: str
    port: int  # the scheme's default port when the URL gives none


def url_parts(url: str) -> UrlParts | None:
    """Where httpx would send `url`; None when it cannot send it."""
    try:
        parsed = httpx.URL(check_url(url))
    except ValueError:
        return None
    return UrlParts(parsed.scheme, parsed.host, parsed.port or DEFAULT_PORTS[parsed.scheme])


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


@dataclass(frozen=True)
class HttpAnswer:
    status_code: int
    body: Any  # the JSON answer, or the first 2000 characters of its text


class HttpClient:
    """One request per call, no redirects followed: a redirect could lead off the allow-list."""

    def request(
        self, method: str, url: str, *, json: Any = None, headers: dict[str, str], timeout: float
    ) -> HttpAnswer:
        """Any answer the server gives; ActionError when none came (retriable for connection errors and timeouts)."""
        try:
            response = httpx.request(method, url, json=json, headers=headers, timeout=timeout, follow_redirects=False)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise request_failed(f"{method} {url}", exc) from None
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text[:2000]
        return HttpAnswer(response.status_code, body)

    def post_webhook(self, url: str, body: dict[str, Any] | str, *, idempotency_key: str, timeout: float) -> int:
        """POST `body` (a JSON object, or text sent as text/plain); the status code of a 2xx answer.

        Any other answer is an ActionError naming only the host (webhook URLs often carry their
        secret in the path), retriable for 5xx and 429; a failed request keeps httpx's message.
        """
        headers = {"Idempotency-Key": idempotency_key}
        try:
            if isinstance(body, str):
                content_headers = {**headers, "Content-Type": "text/plain; charset=utf-8"}
                response = httpx.post(url, content=body, headers=content_headers, timeout=timeout)
            else:
                response = httpx.post(url, json=body, headers=headers, timeout=timeout)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ActionError(str(exc) or type(exc).__name__, retriable=is_retriable(exc)) from None
        if not response.is_success:
            status = response.status_code
            host = httpx.URL(url).host
            raise ActionError(f"webhook on {host} answered {status}", retriable=status >= 500 or status == 429)
        return response.status_code
