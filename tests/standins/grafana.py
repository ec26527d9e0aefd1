"""Owns the Grafana stand-in: a small HTTP server speaking Grafana's dashboard API (`POST /api/dashboards/db`).

Grafana cannot run here (no package, no container runtime), so `controlplane provision grafana`
is tested against this server instead. It keeps what provisioning relies on:

- `Authorization: Bearer <token>`; anything else answers 401 `{"message": "Unauthorized"}`;
- dashboards keyed by uid: a new uid gets an id and version 1, a save over an existing uid
  with `overwrite: true` bumps the version, and without it answers 412
  `{"message": ..., "status": "version-mismatch"}`, as Grafana does when the saved version
  differs from the stored one;
- 200 `{"id", "uid", "url": "/d/<uid>/<slug>", "status": "success", "version", "slug"}`.

It is stricter than Grafana about the body, to catch client bugs Grafana would let through
quietly: `dashboard` must be an object with a uid and a title, its `id` null or absent (an id
from another Grafana would update the wrong dashboard), `overwrite` a boolean; otherwise 400.

Knobs: `fail_next(n, status)` answers the next n requests with a server error; `requests`
logs what the client sent; `dashboards` holds what was saved.
"""

from __future__ import annotations

import http.server
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import LoopbackHTTP


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorization: str | None
    body: Any
    status: int


@dataclass
class Saved:
    """A dashboard as Grafana keeps it: its JSON with the id and version Grafana assigned."""

    id: int
    version: int
    folder_uid: str | None
    message: str | None
    dashboard: dict[str, Any] = field(default_factory=dict)


def slugify(title: str) -> str:
    # Grafana's slug: lower case, runs of anything but letters and digits become one dash.
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


class GrafanaStandIn:
    def __init__(self, token: str) -> None:
        self.token = token
        self.dashboards: dict[str, Saved] = {}
        self.requests: list[Request] = []
        self._failures: list[int] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._http: LoopbackHTTP | None = None

    @property
    def url(self) -> str:
        assert self._http is not None, "start() the stand-in first"
        return self._http.url

    def start(self) -> GrafanaStandIn:
        standin = self

        class Handler(_Handler):
            owner = standin

        self._http = LoopbackHTTP(Handler, "grafana-standin")
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def handle(self, method: str, path: str, authorization: str | None, raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            status, answer = self._answer(method, path, authorization, body)
            self.requests.append(Request(method, path, authorization, body, status))
            return status, answer

    def _answer(self, method: str, path: str, authorization: str | None, body: Any) -> tuple[int, dict[str, Any]]:
        if path != "/api/dashboards/db":
            return 404, {"message": "Not found"}
        if method != "POST":
            return 405, {"message": "Method Not Allowed"}
        if authorization != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}
        if self._failures:
            return self._failures.pop(0), {"message": "Internal Server Error"}
        problem = _shape_problem(body)
        if problem:
            return 400, {"message": problem}
        dashboard: dict[str, Any] = body["dashboard"]
        uid = dashboard["uid"]
        existing = self.dashboards.get(uid)
        if existing is not None and not body.get("overwrite", False):
            return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
        saved = Saved(
            id=existing.id if existing else next(self._ids),
            version=existing.version + 1 if existing else 1,
            folder_uid=body.get("folderUid"),
            message=body.get("message"),
        )
        saved.dashboard = {**dashboard, "id": saved.id, "version": saved.version}
        self.dashboards[uid] = saved
        slug = slugify(dashboard["title"])
        return 200, {
            "id": saved.id,
            "uid": uid,
            "url": f"/d/{uid}/{slug}",
            "status": "success",
            "version": saved.version,
            "slug": slug,
        }


def _shape_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "bad request data"
    dashboard = body.get("dashboard")
    if not isinstance(dashboard, dict):
        return "dashboard must be an object"
    if not isinstance(dashboard.get("uid"), str) or not dashboard["uid"]:
        return "stand-in: dashboard.uid is required (provisioning updates by uid)"
    if not isinstance(dashboard.get("title"), str) or not dashboard["title"].strip():
        return "Dashboard title cannot be empty"
    if dashboard.get("id") is not None:
        return "stand-in: dashboard.id must be null when provisioning (ids differ between Grafanas)"
    if not isinstance(body.get("overwrite", False), bool):
        return "bad request data: overwrite must be a boolean"
    if "folderUid" in body and not isinstance(body["folderUid"], str):
        return "bad request data: folderUid must be a string"
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: GrafanaStandIn
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, answer = self.owner.handle(self.command, self.path, self.headers.get("Authorization"), raw)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean
