"""Owns the PagerDuty Events API v2 stand-in: `POST /v2/enqueue` over PagerDuty's real wire protocol.

PagerDuty is a hosted service that cannot run here, so tests send real HTTP events to this
server (`pagerduty_url` pointed at `url`). What it keeps of the Events API v2:

- a JSON event with `routing_key` (32 characters), `event_action` trigger|acknowledge|resolve
  and `dedup_key` (at most 255 characters; required to acknowledge or resolve, generated for a
  trigger without one); a trigger needs `payload.summary`, `payload.source` and
  `payload.severity` (critical|error|warning|info);
- 202 `{"status": "success", "message": "Event processed", "dedup_key": ...}` for an accepted
  event, 400 `{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}`
  for one PagerDuty would never accept, 429 when throttled;
- one alert per dedup key: triggered, then acknowledged or resolved.

Knobs for tests: `fail_next(n, status)` (5xx, or 429 with Retry-After), `requests` (every
request, accepted or not), `events` (the accepted ones) and `alerts` (dedup key -> state).
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import LoopbackHTTP

ROUTING_KEY = "R0UT1NGKEY0STANDIN0000000000000A"  # 32 characters, like an integration key
_SEVERITIES = {"critical", "error", "warning", "info"}
_TRANSITIONS = {"trigger": "triggered", "acknowledge": "acknowledged", "resolve": "resolved"}


@dataclass(frozen=True)
class Request:
    body: Any
    status: int


@dataclass
class PagerDutyStandIn:
    routing_key: str = ROUTING_KEY
    requests: list[Request] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    alerts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[int] = []
        self._http = LoopbackHTTP(_handler(self), "pagerduty-standin")
        self.url = self._http.url

    def fail_next(self, times: int = 1, *, status: int = 500) -> None:
        with self._lock:
            self._faults += [status] * times

    def close(self) -> None:
        self._http.close()

    def handle(self, path: str, raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            try:
                body: Any = json.loads(raw or b"null")
            except ValueError:
                body = raw.decode(errors="replace")
            status, headers, answer = self._answer(path, body)
            self.requests.append(Request(body, status))
            return status, headers, answer

    def _answer(self, path: str, event: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
        if path != "/v2/enqueue":
            return 404, {}, {"status": "not found", "message": f"no such path {path}"}
        if self._faults:
            status = self._faults.pop(0)
            if status == 429:
                message = "Requests for this service are arriving too quickly.  Please retry later."
                return 429, {"Retry-After": "1"}, {"status": "throttle event", "message": message}
            return status, {}, {"status": "error", "message": "Internal server error"}
        errors = _invalid(event, self.routing_key)
        if errors:
            return 400, {}, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        key = str(event.get("dedup_key") or uuid.uuid4().hex)
        self.events.append({**event, "dedup_key": key})
        action = event["event_action"]
        # PagerDuty ignores acknowledge/resolve for an alert it does not know or already resolved.
        if action == "trigger" or self.alerts.get(key) not in (None, "resolved"):
            self.alerts[key] = _TRANSITIONS[action]
        return 202, {}, {"status": "success", "message": "Event processed", "dedup_key": key}


def _invalid(event: Any, routing_key: str) -> list[str]:
    if not isinstance(event, dict):
        return ["Event object must be a JSON object"]
    errors = []
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' must be a 32 character string")
    elif key != routing_key:
        errors.append("Invalid routing key")
    action = event.get("event_action")
    if action not in _TRANSITIONS:
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append("'dedup_key' is required for acknowledge and resolve events")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            if not payload.get("summary") or len(str(payload["summary"])) > 1024:
                errors.append("'payload.summary' is missing or longer than 1024 characters")
            if not payload.get("source"):
                errors.append("'payload.source' is missing")
            if payload.get("severity") not in _SEVERITIES:
                errors.append("'payload.severity' is invalid (must be one of: critical, error, warning, info)")
    return errors


def _handler(standin: PagerDutyStandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, body = standin.handle(self.path, raw)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
