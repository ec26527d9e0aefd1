"""How the operator commands (operator_cli.py) talk to a running service: its URL, the token, and what
an answer means as an exit code.

Exit codes: 0 done; 1 the service refused (4xx: its message is printed) or the thing does not exist;
2 a usage error (argparse, an unreadable token file); 3 the service cannot be reached, did not answer
in time, or failed (5xx).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controlplane import __version__
from controlplane.config import http_url

DEFAULT_URL = "http://127.0.0.1:8080"  # `controlplane serve`'s default listen address and port
URL_ENV = "CONTROLPLANE_URL"
TOKEN_ENV = "CONTROLPLANE_TOKEN"
TOKEN_FILE_ENV = "CONTROLPLANE_TOKEN_FILE"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CommandFailed(Exception):
    """Ends a command: `message` goes to stderr, `code` is the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def service_url(option: str | None) -> str:
    """--url, else CONTROLPLANE_URL, else the serve default; an http(s) URL without its trailing slash."""
    value, named_by = (option, "--url") if option else (os.environ.get(URL_ENV) or DEFAULT_URL, URL_ENV)
    try:
        return http_url(value)
    except ValueError as exc:
        raise CommandFailed(EXIT_USAGE, f"{named_by}: {exc}") from None


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    source: str  # where it came from, to name in messages: the token itself is never printed


def read_token(token_file: Path | None) -> Token | None:
    """--token-file, else the file named by CONTROLPLANE_TOKEN_FILE, else CONTROLPLANE_TOKEN; None without any.

    The token itself is never printed: an error names where it came from, not what it is."""
    if token_file is None and os.environ.get(TOKEN_FILE_ENV):
        token_file = Path(os.environ[TOKEN_FILE_ENV])
    if token_file is not None:
        try:
            token, source = token_file.read_text().strip(), f"token file {token_file}"
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise CommandFailed(EXIT_USAGE, f"token file {token_file}: {reason}") from None
        if not token:
            raise CommandFailed(EXIT_USAGE, f"token file {token_file} is empty")
    else:
        token, source = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
        if not token:
            return None
    # A header cannot carry it (and the HTTP library would quote it in its error): refuse, unquoted.
    if not token.isascii() or not token.isprintable() or " " in token:
        raise CommandFailed(EXIT_USAGE, f"the token in {source} has characters a header cannot carry")
    return Token(value=token, source=source)


def _message(response: httpx.Response) -> str:
    """The service's own words: `{"error": ...}` (ours), `{"detail": ...}` (FastAPI's), else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return body["error"]
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):  # request validation: where and what
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', '')}"
                for d in detail
                if isinstance(d, dict)
            )
    return response.text.strip()[:300]


@dataclass(frozen=True)
class Api:
    url: str
    token: str | None = field(repr=False)
    token_source: str | None = None
    timeout: float = 10.0

    def get(self, path: str, params: dict[str, Any] | None = None, accept: str = "application/json") -> httpx.Response:
        return self._call("GET", path, accept, params=params)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._call("POST", path, "application/json", json=body)

    def _call(self, method: str, path: str, accept: str, **kwargs: Any) -> httpx.Response:
        headers = {"User-Agent": f"controlplane-cli/{__version__}", "Accept": accept}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with httpx.Client(headers=headers, timeout=self.timeout, trust_env=False) as client:
                response = client.request(method, f"{self.url}{path}", **kwargs)
        except httpx.TimeoutException:
            raise CommandFailed(
                EXIT_UNREACHABLE, f"the service at {self.url} did not answer within {self.timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise CommandFailed(EXIT_UNREACHABLE, f"cannot reach the service at {self.url}: {reason}") from None
        return self._checked(response, method, path)

    def _checked(self, response: httpx.Response, method: str, path: str) -> httpx.Response:
        status = response.status_code
        if status >= 500:
            retry = response.headers.get("Retry-After")
            later = f" (retry after {retry} s)" if retry else ""
            raise CommandFailed(
                EXIT_UNREACHABLE, f"the service at {self.url} failed: HTTP {status}: {_message(response)}{later}"
            )
        if status == 404 and _is_unknown_route(response):
            raise CommandFailed(
                EXIT_REFUSED,
                f"the service at {self.url} has no {method} {path.split('?')[0]} (HTTP 404 Not Found):"
                " is it a version without it, or is --url not the control plane?",
            )
        if status == 401:
            sent = (
                f"the token from {self.token_source}"
                if self.token_source
                else f"no token (--token-file, {TOKEN_FILE_ENV} or {TOKEN_ENV})"
            )
            raise CommandFailed(EXIT_REFUSED, f"HTTP 401: {_message(response)} (this command sent {sent})")
        if status >= 400:
            raise CommandFailed(EXIT_REFUSED, f"HTTP {status}: {_message(response)}")
        if status >= 300:
            where = response.headers.get("Location", "")
            raise CommandFailed(EXIT_REFUSED, f"HTTP {status}: redirected to {where}: check --url")
        return response


def _is_unknown_route(response: httpx.Response) -> bool:
    """A 404 of no route (Starlette's `{"detail": "Not Found"}`), not of a missing object (`{"error": ...}`)."""
    try:
        return bool(response.json() == {"detail": "Not Found"})
    except ValueError:
        return True  # not our API's answer at all
