"""Helpers of the tests that run the real service: a server subprocess, a webhook load, a fault proxy.

Everything here listens on and talks to loopback only, and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, bindparam, text
from sqlalchemy.engine import make_url

from controlplane.db.engine import make_engine
from controlplane.db.models import Base
from tests.conftest import AUTH, TOKEN, WEBHOOK, load_payload
from tests.helpers import wait_until_serving

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Payloads and the database as the tests see it


def run_id() -> str:
    """A short hex id that makes one test's alerts unique (fingerprints, alertnames)."""
    return uuid.uuid4().hex[:8]


def unique_notification(run: str, index: int) -> tuple[str, dict[str, Any]]:
    """A version-4 notification (shaped like tests/data/alertmanager_firing.json) carrying one new alert.

    Fingerprint and alertname are unique, so each notification stores one alert and opens one incident.
    Returns (fingerprint, payload).
    """
    payload = load_payload("alertmanager_firing.json")
    template = payload["alerts"][0]
    fingerprint = f"{run}{index:08x}"  # 16 hex digits, like Alertmanager's
    alertname = f"Durability_{run}_{index}"
    labels = {**template["labels"], "alertname": alertname, "test_run": run, "index": str(index)}
    alert = {**template, "labels": labels, "fingerprint": fingerprint}
    group = {"alertname": alertname, "namespace": labels["namespace"]}
    payload.update(
        alerts=[alert],
        groupLabels=group,
        commonLabels=labels,
        groupKey=f'{{}}/{{severity="critical"}}:{{alertname="{alertname}", namespace="agents"}}',
    )
    return fingerprint, payload


def alert_named(alertname: str, index: int = 0, **labels: str) -> dict[str, Any]:
    """A one-alert notification of its own fingerprint, whose alertname (and labels) a test's rule matches."""
    _, payload = unique_notification(run_id(), index)
    payload["alerts"][0]["labels"].update(alertname=alertname, **labels)
    return payload


def unique_notifications(count: int) -> dict[str, dict[str, Any]]:
    run = run_id()
    return dict(unique_notification(run, i) for i in range(count))


@contextlib.contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def truncate_all(url: str) -> None:
    """Empty every table of a PostgreSQL schema (the session's `postgres_url` one, shared by tests)."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with _engine(url) as engine, engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def fingerprint_counts(url: str, fingerprints: Iterable[str]) -> dict[str, int]:
    """How many alert rows each fingerprint has (0 when absent), read straight from the database."""
    wanted = list(fingerprints)
    counts = dict.fromkeys(wanted, 0)
    stmt = text("SELECT fingerprint, count(*) FROM alerts WHERE fingerprint IN :fps GROUP BY fingerprint")
    with _engine(url) as engine, engine.connect() as conn:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for fingerprint, n in conn.execute(stmt.bindparams(bindparam("fps", value=chunk, expanding=True))):
                counts[fingerprint] = int(n)
    return counts


def table_counts(url: str) -> dict[str, int]:
    """Rows per table, leaving out what the service writes on its own (leader election and its audit)."""
    own = {"audit_events": " WHERE action NOT LIKE 'leader.%'"}
    with _engine(url) as engine, engine.connect() as conn:
        return {
            t.name: int(conn.execute(text(f"SELECT count(*) FROM {t.name}{own.get(t.name, '')}")).scalar_one())
            for t in Base.metadata.sorted_tables
            if t.name != "leader_leases"
        }


def half_stored(url: str) -> list[str]:
    """What a torn transaction would leave: alerts without incident or audit trail, incidents without alerts.

    Holds for the notifications of `unique_notification` (one new alert and one new incident each).
    """
    checks = {
        "alerts without an incident link": (
            "SELECT count(*) FROM alerts a WHERE NOT EXISTS (SELECT 1 FROM incident_alerts l WHERE l.alert_id = a.id)"
        ),
        "incidents without an alert": (
            "SELECT count(*) FROM incidents i "
            "WHERE NOT EXISTS (SELECT 1 FROM incident_alerts l WHERE l.incident_id = i.id)"
        ),
        "alerts minus 'alert.firing' audit events": (
            "SELECT (SELECT count(*) FROM alerts) - (SELECT count(*) FROM audit_events WHERE action = 'alert.firing')"
        ),
        "incidents minus 'incident.opened' audit events": (
            "SELECT (SELECT count(*) FROM incidents)"
            " - (SELECT count(*) FROM audit_events WHERE action = 'incident.opened')"
        ),
    }
    problems = []
    with _engine(url) as engine, engine.connect() as conn:
        for name, sql in checks.items():
            n = int(conn.execute(text(sql)).scalar_one())
            if n:
                problems.append(f"{name}: {n}")
    return problems


def with_host_port(url: str, host: str, port: int) -> str:
    """The same database URL (search_path option included) through another host and port."""
    return make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


# ---------------------------------------------------------------------------------------------
# The service as a subprocess


def _limit_fds(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


class ServerProcess:
    """`python -m controlplane serve` on a free loopback port; its output goes to `log_path`.

    `settings` are more CONTROLPLANE_* variables by field name; without `rules_dir` the server
    gets an empty rules directory, so it only ingests (no playbook acts on the test's alerts).
    `fd_limit` lowers the server's RLIMIT_NOFILE (soft and hard), as a small `ulimit -n` would.
    """

    def __init__(self, database_url: str, log_path: Path, *, fd_limit: int | None = None, **settings: str) -> None:
        if "rules_dir" not in settings:
            no_rules = log_path.parent / "no-rules"
            no_rules.mkdir(exist_ok=True)
            settings["rules_dir"] = str(no_rules)
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update(
            {
                "CONTROLPLANE_DATABASE_URL": database_url,
                "CONTROLPLANE_WEBHOOK_TOKEN": TOKEN,
                "CONTROLPLANE_READ_TOKEN": TOKEN,  # one header posts alerts and reads them back
                "CONTROLPLANE_LOG_LEVEL": "warning",
                "CONTROLPLANE_LISTEN_HOST": LOOPBACK,
                "CONTROLPLANE_LISTEN_PORT": str(self.port),
                **{f"CONTROLPLANE_{name.upper()}": value for name, value in settings.items()},
            }
        )
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controlplane", "serve"],
                cwd=log_path.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if fd_limit is None else lambda: _limit_fds(fd_limit),
            )

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until GET /ready answers 200; fail (with the server's output) on exit or deadline."""
        wait_until_serving(f"{self.url}/ready", self.proc, self.log_tail, timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9: no shutdown handler, no flush, nothing of the process runs any more."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        """The exit status (negative: killed by that signal); fail if still running after `timeout`."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running {timeout:g}s later:\n{self.log_tail()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


# ---------------------------------------------------------------------------------------------
# Webhook load: Alertmanager's parallel notification pipelines


@dataclass
class Outcome:
    started: float
    finished: float | None = None
    status: int | None = None
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookLoad:
    """Posts each notification once from several threads (one keep-alive client each); records every answer."""

    def __init__(
        self, base_url: str, notifications: Mapping[str, dict[str, Any]], *, threads: int = 8, timeout: float = 15.0
    ) -> None:
        self._base_url = base_url
        self._pending = list(notifications.items())
        self._pending.reverse()  # pop() from the end sends them in order
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sending = True
        self._progress = threading.Condition(self._lock)
        self.outcomes: dict[str, Outcome] = {}
        self._threads = [
            threading.Thread(target=self._run, name=f"webhook-load-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> WebhookLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop_sending(self) -> None:
        """Start no further request; those in flight go on."""
        with self._lock:
            self._sending = False

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads still running after {timeout:g}s: {alive}"

    def _run(self) -> None:
        with httpx.Client(base_url=self._base_url, headers=AUTH, timeout=self._timeout) as client:
            while True:
                with self._lock:
                    if not self._sending or not self._pending:
                        return
                    fingerprint, payload = self._pending.pop()
                    outcome = self.outcomes[fingerprint] = Outcome(started=time.monotonic())
                try:
                    status: int | None = client.post(WEBHOOK, json=payload).status_code
                    error = None
                except httpx.HTTPError as exc:
                    status, error = None, type(exc).__name__
                with self._progress:
                    outcome.status, outcome.error, outcome.finished = status, error, time.monotonic()
                    self._progress.notify_all()

    def acked(self) -> set[str]:
        """Fingerprints whose notification was answered 2xx: what Alertmanager will never send again."""
        with self._lock:
            return {fp for fp, outcome in self.outcomes.items() if outcome.acked}

    def in_flight(self) -> set[str]:
        with self._lock:
            return {fp for fp, outcome in self.outcomes.items() if outcome.finished is None}

    def answers(self) -> dict[str, int]:
        """How many requests ended with each status (or transport error)."""
        with self._lock:
            return self._tally_locked()

    def wait_acked(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._progress:
            while sum(o.acked for o in self.outcomes.values()) < count:
                left = deadline - time.monotonic()
                finished = all(not t.is_alive() for t in self._threads)
                if left <= 0 or finished:
                    raise AssertionError(
                        f"fewer than {count} notifications acknowledged within {timeout:g}s: {self._tally_locked()}"
                    )
                self._progress.wait(min(left, 0.5))

    def _tally_locked(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for outcome in self.outcomes.values():
            key = str(outcome.status) if outcome.status is not None else (outcome.error or "in flight")
            tally[key] = tally.get(key, 0) + 1
        return tally


def deliver_like_alertmanager(base_url: str, payload: dict[str, object], within: float) -> tuple[int | None, list[str]]:
    """POST the notification as Alertmanager does: retry 5xx and connection errors (with a short backoff,
    here 0.2 s) until a 2xx or 4xx answer or the deadline. Returns the final status and every attempt's outcome."""
    deadline = time.monotonic() + within
    attempts: list[str] = []
    while time.monotonic() < deadline:
        try:
            status = httpx.post(base_url + WEBHOOK, json=payload, headers=AUTH, timeout=5.0).status_code
            attempts.append(str(status))
            if status < 500:
                return status, attempts
        except httpx.HTTPError as exc:
            attempts.append(type(exc).__name__)
        time.sleep(0.2)
    return None, attempts


# ---------------------------------------------------------------------------------------------
# Fault injection


class FaultProxy:
    """A fault-injection TCP proxy for tests: relays 127.0.0.1:<port> to a database, and can cut it off.

    `stop()` is the outage: it closes the listener (new connections are refused) and cuts every
    open connection in both directions, as a database crash or restart would. `start()` again
    listens on the same port, ending the outage. Loopback only; not for anything but tests.
    """

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.port = port
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self.connections = 0

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        assert self._listener is None, "already started"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping = threading.Event()
        accept = threading.Thread(
            target=self._accept, args=(listener, self._stopping), name="fault-proxy-accept", daemon=True
        )
        self._threads = [accept]
        accept.start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        self._threads[0].join(5)
        listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()

    def _accept(self, listener: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=3)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if stopping.is_set():
                    client.close()
                    upstream.close()
                    return
                self.connections += 1
                self._sockets |= {client, upstream}
                for src, dst in ((client, upstream), (upstream, client)):
                    pump = threading.Thread(target=self._pump, args=(src, dst), name="fault-proxy-pump", daemon=True)
                    self._threads.append(pump)
                    pump.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side ended: end the other too (the proxy does not half-close).
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
