"""Owns talking to an http target's admin API (graph.* and storage.*): `GET /graphs`, `POST /storage/switch`, ...

The base is the target's `url` (for example `http://langgraph:8000/admin`); each request carries
the bearer token read from the target's `token_file` and, for changes, the step's idempotency key.
Answers are sorted into the shared errors: connection errors, timeouts, 5xx and 429 are retriable
ActionErrors; other 4xx are not and carry the service's own message; a 409 the service marks
`refused` is a BlastRadiusExceeded (its own bounds check said no).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from controlplane.errors import ActionError, BlastRadiusExceeded
from controlplane.integrations.http import request_failed
from controlplane.rules.schema import Target

CONNECT_TIMEOUT_SECONDS = 3.0


class AdminApiClient:
    """One request per call: nothing is kept between calls, the token file included (it may rotate)."""

    def request(
        self,
        target: Target,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotency_key: str | None = None,
        timeout: float,
    ) -> dict[str, Any]:
        """One call to `target`'s admin API; its JSON answer, or an ActionError an on-call person can act on.

        Callers pass `timeout=ctx.time_left(...)`, so the call ends by the step's deadline.
        """
        url = f"{(target.url or '').rstrip('/')}{path}"
        headers = {"Accept": "application/json"}
        if target.token_file:
            headers["Authorization"] = f"Bearer {_token(target)}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        where = f"target {target.name!r}: {method} {url}"
        try:
            response = httpx.request(
                method,
                url,
                json=json,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)),
                follow_redirects=False,
            )
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise request_failed(where, exc) from None
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        status = response.status_code
        if status == 200 and isinstance(body, dict):
            return body
        message = _message(body, response.text)
        output = {"status_code": status, "body": body if body is not None else response.text[:2000]}
        if status >= 500 or status == 429:
            raise ActionError(f"{where} answered {status}: {message}", retriable=True, output=output)
        if status in (401, 403):
            raise ActionError(
                f"{where} answered {status}: {message}; "
                f"check the target's token_file ({target.token_file or 'not set'})",
                output=output,
            )
        if status == 409 and isinstance(body, dict) and body.get("refused"):
            raise BlastRadiusExceeded(f"{where} refused: {message}", output=output)
        if status == 200:
            raise ActionError(f"{where} answered 200 without a JSON object: {message}", output=output)
        raise ActionError(f"{where} answered {status}: {message}", output=output)


def _token(target: Target) -> str:
    # Read on every call: a rotated token works without reloading the rules.
    path = Path(target.token_file or "")
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ActionError(f"target {target.name!r}: token_file {path}: {exc.strerror}") from None
    if not token:
        raise ActionError(f"target {target.name!r}: token_file {path} is empty")
    return token


def _message(body: Any, text: str) -> str:
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if body.get(key):
                return str(body[key])[:500]
    return text[:500] or "(empty answer)"
