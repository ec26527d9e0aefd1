"""Plain helpers the tests share: polling, loopback HTTP servers, a hand-moved clock, alert payloads, action
contexts, the console's login.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from controlplane.actions.base import ActionContext
from controlplane.app import create_app
from controlplane.config import Settings
from controlplane.playbooks.contexts import build_ports
from controlplane.rules.schema import Target
from tests.conftest import AUTH, TOKEN, WEBHOOK, load_payload, make_settings

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # where a test's clock starts unless it says otherwise
PASSWORD = "correct horse"  # of every console user of the tests
# Cheap parameters: verifying reads them from the hash, so tests log in in microseconds.
PASSWORD_HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
SESSION_SECRET = "test-session-secret-0123456789abcdef"


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (),
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy, and return that; fail once `timeout` seconds have passed.

    `retry_on`: exceptions that mean "not yet" (a server between restarts); the last one is named on failure.
    `details`: what else to say on failure (the servers' logs).
    """
    deadline = time.monotonic() + timeout
    while True:
        error: Exception | None = None
        try:
            value = check()
        except retry_on as exc:
            value, error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"not within {timeout:g}s: {what}"
            if error is not None:
                message += f" (last error: {error!r})"
            if details is not None:
                message += f"\n{details()}"
            raise AssertionError(message)
        time.sleep(interval)


def wait_until_serving(
    url: str, process: subprocess.Popen[Any], log_tail: Callable[[], str], timeout: float, *, name: str = "server"
) -> None:
    """Until GET `url` answers 200; fail at once, with the process's log, if it exits, else at the deadline."""
    last = "no answer"

    def serving() -> bool:
        nonlocal last
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{log_tail()}")
        try:
            answer = httpx.get(url, timeout=2.0)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
            return False
        last = f"{answer.status_code} {answer.text[:200]}"
        return answer.status_code == 200

    wait_for(f"{name} ready at {url}", serving, timeout, details=lambda: f"last answer: {last}\n{log_tail()}")


class LoopbackHTTP:
    """An HTTP server of `handler` on a free port of `host`, serving from a daemon thread until close().

    Requests get daemon threads, so close() never waits for a hung one; a short poll makes close() quick.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str, host: str = LOOPBACK) -> None:
        self.server = ThreadingHTTPServer((host, 0), handler)
        self.server.daemon_threads = True
        self.host, self.port = host, int(self.server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name=name)
        thread.daemon = True
        thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    """A clock that moves only when the test says: by `advance()`, or by `step` at every reading."""

    def __init__(self, start: datetime = T0, *, step: timedelta = timedelta(0)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def monotonic(self) -> float:
        """This clock in seconds, for what reads `time.monotonic()` (circuit breakers)."""
        return self.now.timestamp()


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """`app` served by uvicorn in a thread on a loopback port of its own, as `controlplane serve` would; its URL.

    The socket is bound here and handed over, so no other process can take the port in between."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def sample_notification(*alerts: Mapping[str, Any]) -> dict[str, Any]:
    """The sample notification (tests/data/alertmanager_firing.json) carrying `alerts` in place of its own.

    Each alert is the sample's first with the given `labels` and `annotations` laid over the sample's,
    and any other field given (fingerprint, status, endsAt, ...) in place of the sample's. No alerts:
    the sample's first alone.
    """
    payload = load_payload("alertmanager_firing.json")
    template = payload["alerts"][0]
    payload["alerts"] = [
        {
            **template,
            **alert,
            "labels": {**template["labels"], **alert.get("labels", {})},
            "annotations": {**template["annotations"], **alert.get("annotations", {})},
        }
        for alert in alerts or [{}]
    ]
    return payload


def post_alerts(client: httpx.Client, *alerts: Mapping[str, Any]) -> list[int]:
    """Post the sample notification carrying `alerts` (see sample_notification) to the webhook; the incident ids."""
    response = client.post(WEBHOOK, json=sample_notification(*alerts), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    incident_ids: list[int] = response.json()["incident_ids"]
    return incident_ids


def post_alert(client: httpx.Client, **labels: str) -> list[int]:
    """Post one alert with `labels` over the sample's, its fingerprint made of them; the incident ids."""
    fingerprint = "fp-" + "-".join(f"{k}{v}" for k, v in sorted(labels.items()))
    return post_alerts(client, {"labels": labels, "fingerprint": fingerprint})


def action_context(
    settings: Settings,
    engine: Engine,
    *targets: Target,
    key: str = "1:0",
    now: datetime | None = None,
    deadline: float | None = None,
) -> ActionContext:
    """The context of an action called directly, as the executor would: step 0 of execution 1 of "test-rule".

    No incident or alert; `targets` as the rule files would define them; the clock stands at `now`
    (the present by default); `deadline` as the executor's (a time.monotonic() reading).
    """
    at = now or datetime.now(UTC)
    return ActionContext(
        execution_id=1,
        step_index=0,
        idempotency_key=key,
        rule="test-rule",
        incident=None,
        alert=None,
        ports=build_ports(settings, engine),
        now=lambda: at,
        step_started_at=at,
        targets={t.name: t for t in targets},
        deadline=deadline,
    )


class MemoryAudit:
    """The audit port in memory, for an action called directly (no execution row for its trail to name):
    what it records, and reads back (llm.failover's choice, read by a retry of the step)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int | None, dict[str, Any]]] = []

    def record(self, *, actor: str, action: str, incident_id: int | None, execution_id: int | None,
               detail: dict[str, Any], now: datetime) -> None:  # fmt: skip
        self.rows.append((action, execution_id, detail))

    def details(self, action: str, *, execution_id: int | None = None, incident_id: int | None = None) -> list[Any]:
        return [d for a, e, d in reversed(self.rows) if a == action and e == execution_id]


def console_users(**roles: str) -> list[dict[str, str]]:
    """Console users by name (name=role), each logging in with PASSWORD."""
    return [{"name": name, "role": role, "password_hash": PASSWORD_HASH} for name, role in roles.items()]


@contextmanager
def console_app(
    database_url: str,
    rules: str,
    directory: Path,
    *,
    users: list[dict[str, str]],
    seeded: bool = False,
    raise_server_exceptions: bool = True,
    **settings: Any,
) -> Iterator[TestClient]:
    """The app with its console: `rules` in a rules folder made in `directory`, `users`, `settings` over the tests'.

    The client holds the webhook and read token; `seeded`: the sample notification is posted first.
    """
    rules_dir = directory / "rules"
    rules_dir.mkdir()
    (rules_dir / "test.yaml").write_text(rules)
    values = make_settings(
        database_url,
        rules_dir=rules_dir,
        console_users=users,
        session_secret=SESSION_SECRET,
        **settings,
    )
    with TestClient(create_app(values), headers=AUTH, raise_server_exceptions=raise_server_exceptions) as client:
        if seeded:
            assert client.post(WEBHOOK, json=load_payload("alertmanager_firing.json")).status_code == 200
        yield client


def csrf(client: httpx.Client, path: str) -> str:
    """The CSRF token of the console page at `path`, as the client's session sees it."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def log_in(client: httpx.Client, name: str) -> None:
    """Log the client in afresh (its cookies cleared) as the console user `name`."""
    client.cookies.clear()
    response = client.post(
        "/login",
        data={"csrf_token": csrf(client, "/login"), "username": name, "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
