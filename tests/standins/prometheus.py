"""Owns the Prometheus answer stand-in: `/api/v1/query` answering fixed values per PromQL text.

For tests that need exact numbers from Prometheus (the capacity model's 100 rps, NaN, no
series) without the real binary's scrape timing. The real `PrometheusClient` talks to it, so
values travel as Prometheus writes them (strings: "2.5", "NaN"). A query it has no answer for
gets an empty vector, as a metric that does not exist would.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.helpers import LoopbackHTTP


class PrometheusAnswers:
    def __init__(self) -> None:
        self._answers: dict[str, str] = {}
        self._lock = threading.Lock()
        self.queries: list[str] = []
        answers = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = self.rfile.read(length).decode() if length else ""
                params = parse_qs(urlsplit(self.path).query) | parse_qs(form)
                promql = (params.get("query") or [""])[0]
                body = json.dumps(answers.answer(promql)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LoopbackHTTP(Handler, "prometheus answers")
        self.url = self._http.url

    def set(self, promql: str, value: float | str) -> None:
        """`promql` answers one series without labels of `value` (a float, or "NaN")."""
        with self._lock:
            self._answers[promql] = str(value)

    def answer(self, promql: str) -> dict[str, Any]:
        with self._lock:
            self.queries.append(promql)
            value = self._answers.get(promql)
        result = [] if value is None else [{"metric": {}, "value": [0, value]}]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    def close(self) -> None:
        self._http.close()
