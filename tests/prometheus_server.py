"""Owns the real Prometheus the integration tests query: the binary on loopback, scraping a target the test controls.

tests/conftest.py registers it (pytest_plugins): take a
`prometheus`
argument. One server per test session (startup costs seconds); tests keep apart by using
metric names of their own (`prometheus.unique_name()`), and wait for a scrape with `wait_for`.
"""

from __future__ import annotations

import http.server
import math
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require_binary
from tests.helpers import LoopbackHTTP
from tests.logged_process import LoggedProcess

LOOPBACK = "127.0.0.1"
SCRAPE_INTERVAL = 1.0
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class MetricsTarget:
    """A scrape target serving whatever series the test has set, in the text exposition format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = target.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes every second: keep test output clean
                pass

        self._http = LoopbackHTTP(Handler, "metrics-target")
        self.address = f"{LOOPBACK}:{self._http.port}"

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        with self._lock:
            self._series[(name, tuple(sorted(labels.items())))] = value

    def remove(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Drop one series (or every series of `name`); Prometheus marks it stale on the next scrape."""
        with self._lock:
            for key in list(self._series):
                if key[0] == name and (labels is None or key[1] == tuple(sorted(labels.items()))):
                    del self._series[key]

    def render(self) -> str:
        with self._lock:
            items = sorted(self._series.items())
        lines = []
        for (name, labels), value in items:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {_format(value)}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._http.close()


class PrometheusServer(LoggedProcess):
    """The `prometheus` binary on a free loopback port with a temporary config and TSDB."""

    def __init__(self, binary: str, workdir: Path, target: MetricsTarget) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL:g}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL:g}s\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL:g}s\n"
            "scrape_configs:\n"
            "  - job_name: target\n"
            "    static_configs:\n"
            f"      - targets: ['{target.address}']\n"
        )
        self._log = self.log_path.open("wb")
        # Only flags Prometheus 2.42 (Debian 12) knows.
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._http = httpx.Client(base_url=self.url, timeout=5.0)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until /-/ready answers and the target has been scraped once, or fail with the server's log.

        Ready comes in well under a second; the first scrape takes about 5 s, because Prometheus
        throttles applying discovered targets to once per 5 s (2.42 has no flag to change it).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self._http.get("/-/ready").status_code == 200 and self.query('up{job="target"}') == [
                    ({"__name__": "up", "instance": self.target.address, "job": "target"}, 1.0)
                ]:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready with its first scrape after {timeout:g}s:\n{self.log_tail()}")

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query straight over HTTP (independent of the code under test): [(labels, value)]."""
        response = self._http.get("/api/v1/query", params={"query": promql})
        response.raise_for_status()
        data = response.json()["data"]
        if data["resultType"] in ("scalar", "string"):
            return [({}, float(data["result"][1]))]
        return [(series["metric"], float(series["value"][1])) for series in data["result"]]

    def wait_for(
        self,
        promql: str,
        expected: Callable[[list[tuple[dict[str, str], float]]], bool] | float | None,
        timeout: float = 10.0,
    ) -> list[tuple[dict[str, str], float]]:
        """Until `promql` returns what is expected: a number (one series with that value), None (no
        series), or a predicate on the result. Returns the result; fails with the last one seen."""
        if callable(expected):
            check = expected
        elif expected is None:
            check = lambda result: result == []  # noqa: E731
        else:
            check = lambda result: len(result) == 1 and result[0][1] == expected  # noqa: E731
        deadline = time.monotonic() + timeout
        result: list[tuple[dict[str, str], float]] = []
        while True:
            result = self.query(promql)
            if check(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r} did not reach {expected!r} within {timeout:g}s; last: {result!r}")
            time.sleep(0.2)

    @staticmethod
    def unique_name(prefix: str = "test_metric") -> str:
        """A metric name no other test uses, so tests sharing this server stay apart."""
        return f"{prefix}_{uuid.uuid4().hex[:8]}"

    def stop(self) -> None:
        self._http.close()
        self.stop_process()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A running Prometheus scraping `prometheus.target` every second (fails under CI=true if the binary is missing)."""
    binary = require_binary("prometheus")
    target = MetricsTarget()
    server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"), target)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        target.close()
