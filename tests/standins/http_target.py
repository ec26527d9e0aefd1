"""Owns the action-target stand-in: a loopback HTTP/1.1 server that records when each request arrives.

A real HTTP server (the standard library's, one thread per connection) standing in for a
service a playbook calls with `http.request` or `notify.webhook`. It records every request's
method, path, headers and arrival time (wall clock, taken once the request line and headers
are read) and either answers at once (`200 {"ok": true}`) or, with `hang=True`, reads the
request and never answers until `release()`: a target that accepted the connection and hung.
"""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.helpers import LoopbackHTTP

HANG_CAP_SECONDS = 120.0  # a hung handler gives up by itself, so a failed test cannot leave it forever


@dataclass(frozen=True)
class Arrival:
    method: str
    path: str
    headers: dict[str, str]
    at: datetime


class HttpTarget:
    def __init__(self, host: str = "127.0.0.1", *, hang: bool = False) -> None:
        self.arrivals: list[Arrival] = []
        self._hang = hang
        self._released = threading.Event()
        self._lock = threading.Lock()
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                arrival = Arrival(self.command, self.path, dict(self.headers), datetime.now(UTC))
                with target._lock:
                    target.arrivals.append(arrival)
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                if target._hang:
                    target._released.wait(HANG_CAP_SECONDS)
                body = json.dumps({"ok": True}).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a hung request long ago: nobody left to answer

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LoopbackHTTP(Handler, f"target {host}", host)
        self.host, self.port, self.url = host, self._http.port, self._http.url

    def received(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def release(self) -> None:
        """Let every hung request (and any later one) be answered."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self._http.close()
