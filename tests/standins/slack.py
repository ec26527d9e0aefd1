"""Owns the Slack Web API stand-in: `chat.postMessage` and `chat.update` over Slack's real wire protocol.

Slack is a hosted service that cannot run here, so tests drive the real `slack_sdk.WebClient`
against this server (its `base_url` pointed at `url`). What it keeps of Slack's protocol:

- `POST /api/<method>` with a JSON body (what slack_sdk sends for chat methods) or a form body;
  the token as `Authorization: Bearer <token>` or a `token` field;
- answers `{"ok": true, "channel": <ID>, "ts", "message"}`; API errors are HTTP 200 with
  `{"ok": false, "error": "invalid_auth" | "not_authed" | "channel_not_found" | "no_text" |
  "message_not_found" | "invalid_blocks"}`, as Slack's are;
- channels are addressed by name (`#oncall`) or ID when posting, and answered with their ID;
  `chat.update` takes the ID only (it is what Slack documents and what its answers carry);
- rate limits are HTTP 429 with `Retry-After` and `{"ok": false, "error": "ratelimited"}`.

Knobs for tests: `ratelimit_next(n, retry_after)`, `fail_next(n, status)` (a 5xx with an HTML
body, as a load balancer in front of Slack answers), `requests` (everything received) and
`messages` (what a channel would show, with replies and edits).

Interactivity, the other direction: `click(message, user, action_id)` builds the request Slack sends
to an app's Request URL when someone clicks a button: a form body `payload=<block_actions JSON>`,
signed as Slack signs (`X-Slack-Signature: v0=HMAC-SHA256(secret, "v0:<ts>:<body>")` and
`X-Slack-Request-Timestamp`). `secret=` signs with another secret (a forgery), `at=` stamps another
time (stale); sending the same `Interaction` twice is a replay. Each click carries a `response_url`
on this server (`POST /actions/<n>`); what the app answers there is kept in `responses`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from tests.helpers import LoopbackHTTP

TOKEN = "xoxb-0000000000-standin-token"
CHANNELS = {"#oncall": "C0ONCALL001", "#alerts": "C0ALERTS001"}
BOT_USER = "U0CONTROLPL"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # the app's Signing Secret (Basic Information page)


@dataclass(frozen=True)
class Interaction:
    """One signed request Slack would send to the app's interactivity Request URL."""

    body: bytes
    headers: dict[str, str]
    response_url: str


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None
    edits: int = 0


@dataclass(frozen=True)
class Request:
    method: str  # the API method, e.g. chat.postMessage
    args: dict[str, Any]
    status: int
    error: str | None


@dataclass
class _Fault:
    status: int
    retry_after: int | None = None


@dataclass
class SlackStandIn:
    token: str = TOKEN
    channels: dict[str, str] = field(default_factory=lambda: dict(CHANNELS))
    messages: list[Message] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    signing_secret: str = SIGNING_SECRET
    responses: list[dict[str, Any]] = field(default_factory=list)  # what apps posted to response_urls

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._ts = itertools.count(1)
        self._http = LoopbackHTTP(_handler(self), "slack-standin")
        self.url = f"{self._http.url}/api/"

    # -- knobs -------------------------------------------------------------------------

    def ratelimit_next(self, times: int = 1, *, retry_after: int = 1) -> None:
        with self._lock:
            self._faults += [_Fault(429, retry_after) for _ in range(times)]

    def fail_next(self, times: int = 1, *, status: int = 500) -> None:
        with self._lock:
            self._faults += [_Fault(status) for _ in range(times)]

    def calls(self, method: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method]

    def message(self, channel: str, ts: str) -> Message:
        with self._lock:
            return next(m for m in self.messages if m.channel == channel and m.ts == ts)

    def replies(self, channel: str, ts: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.channel == channel and m.thread_ts == ts]

    def close(self) -> None:
        self._http.close()

    # -- interactivity -------------------------------------------------------------------

    def click(
        self,
        message: Message,
        *,
        user: str,
        action_id: str,
        secret: str | None = None,
        at: float | None = None,
    ) -> Interaction:
        """The signed request for `user` clicking the button `action_id` of `message` (a block_actions payload)."""
        button = next(
            element
            for block in message.blocks or []
            if block.get("type") == "actions"
            for element in block["elements"]
            if element.get("action_id") == action_id
        )
        response_url = f"{self._http.url}/actions/{next(self._ts)}"
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "team_id": "T0STANDIN"},
            "api_app_id": "A0CONTROLPL",
            "token": "legacy-verification-token",  # deprecated by Slack, ignored by apps that check signatures
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel},
            "channel": {"id": message.channel, "name": "oncall"},
            "message": _as_api(message),
            "response_url": response_url,
            "trigger_id": "1234.5678.abcd",
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "approval",
                    "value": button.get("value", ""),
                    "text": button["text"],
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        body = urlencode({"payload": json.dumps(payload)}).encode()
        timestamp = str(int(time.time() if at is None else at))
        digest = hmac.new(
            (secret or self.signing_secret).encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256
        ).hexdigest()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": f"v0={digest}",
        }
        return Interaction(body, headers, response_url)

    def responses_to(self, interaction: Interaction) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.responses if r["url"] == interaction.response_url]

    def _respond(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.responses.append({"url": f"{self._http.url}{path}", **body})

    # -- the API -------------------------------------------------------------------------

    def handle(self, method: str, args: dict[str, Any], bearer: str | None) -> tuple[int, dict[str, str], Any]:
        """(status, headers, body) for one call; the body is a dict (JSON) or text."""
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
            if fault is not None and fault.status == 429:
                self.requests.append(Request(method, args, 429, "ratelimited"))
                return 429, {"Retry-After": str(fault.retry_after)}, {"ok": False, "error": "ratelimited"}
            if fault is not None:
                self.requests.append(Request(method, args, fault.status, "server_error"))
                return fault.status, {}, f"<html><body><h1>{fault.status} Server Error</h1></body></html>"
            status, body = self._answer(method, args, bearer or args.get("token"))
            self.requests.append(Request(method, args, status, None if body.get("ok") else body.get("error")))
            return status, {}, body

    def _answer(self, method: str, args: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
        if method not in ("chat.postMessage", "chat.update"):
            return 404, {"ok": False, "error": "unknown_method"}
        if not token:
            return 200, {"ok": False, "error": "not_authed"}
        if token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}
        blocks = args.get("blocks")
        if isinstance(blocks, str):  # form bodies carry blocks as a JSON string
            try:
                blocks = json.loads(blocks)
            except ValueError:
                return 200, {"ok": False, "error": "invalid_blocks"}
        if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, dict) for b in blocks)):
            return 200, {"ok": False, "error": "invalid_blocks"}
        text = str(args.get("text") or "")
        if not text and not blocks:
            return 200, {"ok": False, "error": "no_text"}
        if method == "chat.postMessage":
            channel = self.channels.get(str(args.get("channel")))
            if channel is None and str(args.get("channel")) in self.channels.values():
                channel = str(args["channel"])
            if channel is None and f"#{args.get('channel')}" in self.channels:
                channel = self.channels[f"#{args['channel']}"]
            if channel is None:
                return 200, {"ok": False, "error": "channel_not_found"}
            ts = f"{int(time.time())}.{next(self._ts):06d}"
            thread_ts = args.get("thread_ts")
            message = Message(channel, ts, text, blocks, str(thread_ts) if thread_ts else None)
            self.messages.append(message)
            return 200, {"ok": True, "channel": channel, "ts": ts, "message": _as_api(message)}
        channel = str(args.get("channel"))
        if channel not in self.channels.values():
            return 200, {"ok": False, "error": "channel_not_found"}
        found = next((m for m in self.messages if m.channel == channel and m.ts == str(args.get("ts"))), None)
        if found is None:
            return 200, {"ok": False, "error": "message_not_found"}
        found.text, found.blocks, found.edits = text, blocks, found.edits + 1
        return 200, {"ok": True, "channel": channel, "ts": found.ts, "text": text, "message": _as_api(found)}


def _as_api(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "message", "user": BOT_USER, "text": message.text, "ts": message.ts}
    if message.blocks is not None:
        data["blocks"] = message.blocks
    if message.thread_ts is not None:
        data["thread_ts"] = message.thread_ts
    return data


def _handler(standin: SlackStandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            # slack_sdk sends JSON for chat methods; other clients (curl, older SDKs) send a form.
            args: dict[str, Any] = (
                json.loads(raw or "{}") if content_type == "application/json" else dict(parse_qsl(raw))
            )
            if self.path.startswith("/actions/"):  # an app answering a click at its response_url
                standin._respond(self.path, json.loads(raw or "{}"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                return
            auth = self.headers.get("Authorization") or ""
            bearer = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
            method = self.path.split("?")[0].removeprefix("/api/")
            status, headers, body = standin.handle(method, args, bearer)
            data = json.dumps(body).encode() if isinstance(body, dict) else str(body).encode()
            self.send_response(status)
            self.send_header(
                "Content-Type", "application/json; charset=utf-8" if isinstance(body, dict) else "text/html"
            )
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
