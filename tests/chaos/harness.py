"""Helpers of the chaos test: replicas on fixed ports, unclustered Alertmanagers, a recording webhook
sender, the sample service's effects, a guard monitor and the PostgreSQL restart.

Loopback only; every wait has a deadline; everything started here has a `close()`/`stop()`.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from controlplane.db.engine import make_engine
from controlplane.sample.service import SampleService
from tests import helpers
from tests.conftest import TOKEN, WEBHOOK, load_payload
from tests.integration.serverproc import AUTH, LOOPBACK, ServerProcess, free_port

ACTIVE = ("awaiting_approval", "pending", "running", "waiting")


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# Control-plane replicas


class Replicas:
    """`count` replicas, each always on the same port: Alertmanager's webhook URLs name them, as in a
    deployment where a pod comes back under its own address."""

    def __init__(self, database_url: str, workdir: Path, count: int, **settings: str) -> None:
        self._database_url = database_url
        self._workdir = workdir
        self._settings = settings
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[ServerProcess | None] = [None] * count
        self.instance_ids: list[str | None] = [None] * count
        self.starts = 0
        self.kills = 0
        self.exits: list[str] = []  # replicas that exited by themselves (start-up while PostgreSQL was down)

    def url(self, index: int) -> str:
        return f"http://{LOOPBACK}:{self.ports[index]}"

    def start(self, index: int) -> None:
        # A new instance id per start, as a new pod gets: leases and leadership name the process.
        self.starts += 1
        instance_id = self.instance_ids[index] = f"replica{index}-start{self.starts}"
        proc = ServerProcess(
            self._database_url,
            self._workdir / f"replica-{index}.log",
            listen_port=str(self.ports[index]),
            instance_id=instance_id,
            **self._settings,
        )
        # ServerProcess picked a port of its own; the listen_port setting overrides it in the child.
        proc.port, proc.url = self.ports[index], self.url(index)
        self.procs[index] = proc

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        if proc is not None and proc.proc.poll() is None:
            proc.kill()
            self.kills += 1

    def restart_exited(self) -> None:
        """A replica that exited on its own (it could not migrate while the database was down) starts again."""
        for index, proc in enumerate(self.procs):
            if proc is not None and proc.proc.poll() is not None and proc.proc.returncode != -9:
                self.exits.append(f"replica {index} exited {proc.proc.returncode}: {proc.log_tail(300)!r}")
                self.start(index)

    def wait_all_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for index in range(len(self.procs)):
            while True:
                self.restart_exited()
                proc = self.procs[index]
                assert proc is not None
                try:
                    proc.wait_ready(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise

    def ready(self) -> list[dict[str, Any]]:
        """Each replica's /ready body (its view of the leader)."""
        return [httpx.get(f"{self.url(i)}/ready", timeout=5).json() for i in range(len(self.procs))]

    def webhook_503s(self) -> list[datetime]:
        """When the replicas answered a webhook 503, from their logs (they log every 5xx answer)."""
        times = []
        for index in range(len(self.procs)):
            for line in (self._workdir / f"replica-{index}.log").read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by kill -9
                if entry.get("path") == WEBHOOK and entry.get("status") == 503:
                    times.append(datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")))
        return times

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None:
                proc.close()


# ---------------------------------------------------------------------------------------------
# Alertmanager, unclustered, delivering to every replica


# ChaosBounce alerts each get a notification of their own (group_by '...'): a burst reaches every
# replica as many small concurrent webhooks, so replicas decide guards for different alerts at the
# same moment. ChaosFlap alerts share one group: each notification repeats all of them.
AM_CONFIG = """\
route:
  receiver: controlplane
  group_by: [alertname]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
  routes:
    - matchers: ['alertname="ChaosBounce"']
      group_by: ['...']
receivers:
  - name: controlplane
    webhook_configs:
{hooks}
"""
AM_HOOK = """\
      - url: {url}{path}
        send_resolved: true
        http_config:
          authorization: {{credentials: "{token}"}}
"""


class ChaosAlertmanager:
    """Debian's prometheus-alertmanager with no cluster peers (so two of them always both deliver)."""

    def __init__(self, binary: str, workdir: Path, replica_urls: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = workdir / "alertmanager.log"
        hooks = "".join(AM_HOOK.format(url=url, path=WEBHOOK, token=TOKEN) for url in replica_urls)
        config = workdir / "alertmanager.yml"
        config.write_text(AM_CONFIG.format(hooks=hooks))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.path={workdir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        helpers.wait_until_serving(f"{self.url}/-/ready", self.process, self.log_tail, timeout, name="alertmanager")

    def log_tail(self) -> str:
        return self.log_path.read_text()[-2000:]

    def push(self, alerts: list[dict[str, Any]]) -> None:
        """What Prometheus does: POST /api/v2/alerts."""
        response = httpx.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# ---------------------------------------------------------------------------------------------
# Webhooks sent straight from the test: every answer is on record


def direct_notification(labels: dict[str, str], fingerprint: str, starts_at: datetime) -> dict[str, Any]:
    """A version-4 notification carrying one firing alert (shaped like tests/data/alertmanager_firing.json)."""
    payload = load_payload("alertmanager_firing.json")
    alert = {**payload["alerts"][0], "labels": labels, "fingerprint": fingerprint, "startsAt": utc_iso(starts_at)}
    group = {"alertname": labels["alertname"]}
    group_key = f'{{}}:{{alertname="{labels["alertname"]}"}}'
    payload.update(alerts=[alert], groupLabels=group, commonLabels=labels, groupKey=group_key)
    return payload


@dataclass
class Answer:
    chaos_id: str
    replica: int
    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class DirectSender:
    """Threads that post each queued notification to a random replica, retry elsewhere on 5xx or a
    connection error (as Alertmanager would), and sometimes post it again to a second replica (a
    redelivery). `answers` records every answer a replica gave."""

    replica_urls: list[str]
    threads: int = 4
    seed: int = 0
    duplicate_ratio: float = 0.3
    answers: list[Answer] = field(default_factory=list)
    _queue: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _busy: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> DirectSender:
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(random.Random(self.seed + n),), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def send(self, chaos_id: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self._queue.append((chaos_id, payload))

    def drain(self, timeout: float) -> None:
        """Until every queued notification was acknowledged (or the deadline), then stop the threads."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and not self._busy:
                    break
            time.sleep(0.1)
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(20)

    def acked(self) -> set[str]:
        with self._lock:
            return {a.chaos_id for a in self.answers if a.ok}

    def tally(self) -> Counter[str]:
        with self._lock:
            return Counter(str(a.status) if a.status is not None else str(a.error) for a in self.answers)

    def _post(self, client: httpx.Client, replica: int, chaos_id: str, payload: dict[str, Any]) -> bool:
        try:
            status, error = client.post(self.replica_urls[replica] + WEBHOOK, json=payload).status_code, None
        except httpx.HTTPError as exc:
            status, error = None, type(exc).__name__
        answer = Answer(chaos_id, replica, status, error)
        with self._lock:
            self.answers.append(answer)
        return answer.ok

    def _run(self, rng: random.Random) -> None:
        # No keep-alive: a killed replica must not leave this client holding a dead connection.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(headers=AUTH, timeout=15.0, limits=limits) as client:
            while not self._stop.is_set():
                with self._lock:
                    item = self._queue.pop(0) if self._queue else None
                    self._busy += item is not None
                if item is None:
                    time.sleep(0.05)
                    continue
                chaos_id, payload = item
                try:
                    replicas = list(range(len(self.replica_urls)))
                    while not self._stop.is_set():
                        first = rng.choice(replicas)
                        if self._post(client, first, chaos_id, payload):
                            if rng.random() < self.duplicate_ratio:
                                self._post(client, rng.choice([r for r in replicas if r != first]), chaos_id, payload)
                            break
                        time.sleep(rng.uniform(0.1, 0.4))
                finally:
                    with self._lock:
                        self._busy -= 1


# ---------------------------------------------------------------------------------------------
# The sample service: what it actually did


class SampleEffects:
    """Counts the graph changes the sample service applied and how many were disabled at once per
    group, and holds each keyed admin answer back `delay` seconds after acting, so a replica killed
    in that window leaves a step whose effect happened but whose answer it never recorded."""

    def __init__(self, service: SampleService, delay: float, group_of: Callable[[str], str]) -> None:
        self.applied: Counter[tuple[str, str]] = Counter()  # (verb, graph) -> times applied
        self.max_disabled: Counter[str] = Counter()  # group -> most graphs disabled at once
        self._disabled: dict[str, set[str]] = {}
        self._group_of = group_of
        self._lock = threading.Lock()
        disable, enable, once = service.disable, service.enable, service.once

        def counted_disable(name: str, bounds: Any = None) -> dict[str, Any]:
            answer = disable(name, bounds)
            self._applied("disable", name)
            return answer

        def counted_enable(name: str) -> dict[str, Any]:
            answer = enable(name)
            self._applied("enable", name)
            return answer

        def slow_once(key: str | None, request: str, command: Any) -> tuple[int, dict[str, Any]]:
            answer = once(key, request, command)
            if key is not None:
                time.sleep(delay)  # outside the service's lock: only this answer waits
            return answer

        # Instance attributes: the app's routes look these methods up on every request.
        service.disable, service.enable, service.once = counted_disable, counted_enable, slow_once  # type: ignore[method-assign]

    def _applied(self, verb: str, graph: str) -> None:
        with self._lock:
            self.applied[(verb, graph)] += 1
            group = self._group_of(graph)
            disabled = self._disabled.setdefault(group, set())
            (disabled.add if verb == "disable" else disabled.discard)(graph)
            self.max_disabled[group] = max(self.max_disabled[group], len(disabled))


# ---------------------------------------------------------------------------------------------
# The database, watched and read


class ActiveMonitor:
    """Samples the executions in progress per rule every `interval` s: max_concurrent as it held live."""

    def __init__(self, database_url: str, interval: float = 0.1) -> None:
        self.max_active: Counter[str] = Counter()
        self.samples = 0
        self._engine = make_engine(database_url)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="active-monitor", daemon=True)

    def start(self) -> ActiveMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._engine.dispose()

    def _run(self) -> None:
        query = text("SELECT rule_name, count(*) FROM executions WHERE status = ANY(:active) GROUP BY rule_name")
        while not self._stop.wait(self._interval):
            try:
                with self._engine.connect() as conn:
                    rows = conn.execute(query, {"active": list(ACTIVE)}).all()
            except Exception:
                continue  # PostgreSQL is restarting: no sample this time
            self.samples += 1
            for rule, n in rows:
                self.max_active[rule] = max(self.max_active[rule], int(n))


def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll until `predicate()` is truthy; on the deadline fail with its last error."""
    # Any error means "not yet": the database may still be coming back.
    return helpers.wait_for(what, predicate, timeout, interval=interval, retry_on=(Exception,))


# ---------------------------------------------------------------------------------------------
# PostgreSQL restart


def postgres_cluster(port: int) -> tuple[str, str] | None:
    """(version, name) of the local cluster listening on `port`, from pg_lsclusters."""
    if shutil.which("pg_lsclusters") is None:
        return None
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == str(port):
            return parts[0], parts[1]
    return None


def restart_postgres(cluster: tuple[str, str], down_seconds: float) -> None:
    """Stop the cluster (fast: every connection is cut), keep it down `down_seconds`, start it.

    A plain `pg_ctlcluster restart` of a small test cluster is down for about 0.1 s, too short for
    webhooks and workers to meet it; a real restart (crash recovery, a failover) takes seconds.
    It is started again whatever happens, so no test leaves the shared cluster down.
    """

    def ctl(verb: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, verb], check=True, capture_output=True, timeout=60
        )

    ctl("stop")
    try:
        time.sleep(down_seconds)
    finally:
        ctl("start")
