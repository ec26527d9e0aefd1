"""Owns the sample target service for tests: the real app served on a free loopback port, and a small client.

tests/conftest.py registers it (pytest_plugins): take a
`sample_app`
argument (graphs a, b, c ticking every 50 ms, no admin token), or `run_sample_app(...)` for
another shape or several at once. The server runs in a thread of the test process, so a test
can also look at `SampleApp.service` directly; everything it asserts should still go over HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from controlplane.sample.app import create_app
from controlplane.sample.service import SampleService
from tests.helpers import wait_for

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0


class SampleClient:
    """The sample app's HTTP API as tests use it: admin calls, fault injection and /metrics samples."""

    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.http = httpx.Client(base_url=url, headers=headers, timeout=5.0)

    def request(self, method: str, path: str, json: Any = None, key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.http.request(method, path, json=json, headers=headers)

    def admin(self, method: str, path: str, json: Any = None, key: str | None = None) -> Any:
        """An /admin call that must answer 200; returns its JSON body."""
        response = self.request(method, f"/admin{path}", json=json, key=key)
        assert response.status_code == 200, f"{method} /admin{path}: {response.status_code} {response.text}"
        return response.json()

    def graphs(self) -> dict[str, bool]:
        """Graph name -> enabled."""
        return {g["name"]: g["enabled"] for g in self.admin("GET", "/graphs")["graphs"]}

    def storage(self) -> dict[str, Any]:
        return dict(self.admin("GET", "/storage"))

    def fault(self, **body: Any) -> None:
        """Inject one fault, e.g. fault(graph="a", error_rate=1.0) or fault(storage="backup", broken=True)."""
        self.admin("POST", "/faults", json=body)

    def clear_faults(self) -> None:
        self.admin("DELETE", "/faults")

    def idempotency(self) -> dict[str, dict[str, Any]]:
        """Idempotency key -> {received, request, status_code}."""
        return dict(self.admin("GET", "/idempotency")["keys"])

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample on /metrics as (name, labels, value)."""
        response = self.http.get("/metrics")
        response.raise_for_status()
        return [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        ]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
        return sum(
            value
            for sample, have, value in self.samples()
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        return wait_for(what, predicate, timeout, interval=0.02)

    def close(self) -> None:
        self.http.close()


@dataclass
class SampleApp:
    url: str
    service: SampleService
    client: SampleClient
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """Stop serving (idempotent): the port then refuses connections, as a target that is down."""
        self.server.should_exit = True
        self.thread.join(timeout=START_TIMEOUT)


@contextlib.contextmanager
def run_sample_app(
    graphs: Sequence[str] = ("a", "b", "c"),
    *,
    interval: float = 0.05,
    admin_token: str | None = None,
    seed: int = 0,
) -> Iterator[SampleApp]:
    """Serve a fresh sample service on a free loopback port until the block ends."""
    service = SampleService(list(graphs), seed=seed)
    app = create_app(service, interval=interval, admin_token=admin_token)
    # Bound here and handed over, so no other process can take the port between choosing and listening.
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    url = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="sample-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the sample app did not start")
        time.sleep(0.01)
    sample = SampleApp(url, service, SampleClient(url, admin_token), server, thread)
    try:
        yield sample
    finally:
        sample.client.close()
        sample.stop()
        sock.close()


# Registered as `sample_app` under another Python name, so importing it does not clash with the argument.
@pytest.fixture(name="sample_app")
def sample_app_fixture() -> Iterator[SampleApp]:
    """A fresh sample app per test: graphs a, b, c, ticking every 50 ms, admin API without a token."""
    with run_sample_app() as app:
        yield app
