"""Benchmark: alert received -> first step started while a storm of 10,000 alerts hits, on PostgreSQL.

What an on-call engineer wants to know: does automation still react fast during an alert storm?
Starts replicas of `controlplane serve` (2 by default) on a schema of its own in the local
PostgreSQL (127.0.0.1:5432, database `test`), with two rules whose playbooks begin with `notify.log`:

- `storm` (alertname StormAlert), guard key (alertname, service) with a cooldown: a storm of
  distinct alerts over 100 services runs about one execution per service and suppresses the rest;
- `probe` (alertname ProbeAlert), each probe its own guard key and no cooldown, so each one runs.

It sends the storm as Alertmanager does, several alerts per notification, as fast as a bounded
pool of keep-alive connections goes (spread over the replicas), while a probe stream sends one
ProbeAlert at a steady rate from shortly before the storm until shortly after it. Latencies come
from the timestamps the service wrote (one clock, the server's): alerts.first_received_at ->
execution_steps.started_at of forward step 0. For probes also from the client's send time (same
host, same wall clock), which adds the time spent waiting to be ingested. Every acknowledged
alert must be stored, and every execution that was not suppressed must start its first step.

  .venv/bin/python bench/storm.py [--replicas 2] [--storm 10000] [--per-notification 10]
      [--services 100] [--connections 16] [--probe-rate 10] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import queue
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from replicas import Replica, code_version, server_log_summary, serving  # bench/replicas.py
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOKEN = "bench-token-0123456789abcdef"
WEBHOOK = "/api/v1/alerts/alertmanager"
RULES = """
rules:
  - name: storm
    match: {{alertname: StormAlert}}
    group_by: [alertname, service]
    playbook: storm-first-step
    guards: {{cooldown: {cooldown}}}
  - name: probe
    match: {{alertname: ProbeAlert}}
    group_by: [alertname, probe]
    playbook: probe-first-step
playbooks:
  - name: storm-first-step
    steps:
      - action: notify.log
        with: {{text: "storm on {{{{ alert.labels.service }}}}"}}
  - name: probe-first-step
    steps:
      - action: notify.log
        with: {{text: "probe {{{{ alert.labels.probe }}}}"}}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


class BenchFailed(Exception):
    pass


# --- the load -------------------------------------------------------------------------------------


def alert(fingerprint: str, labels: dict[str, str], starts_at: str) -> dict[str, object]:
    return {
        "status": "firing",
        "fingerprint": fingerprint,
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "labels": labels,
        "annotations": {"summary": "bench storm"},
    }


def notification(group: dict[str, str], alerts: list[dict[str, object]]) -> dict[str, object]:
    return {
        "version": "4",
        "groupKey": "{}:" + json.dumps(group, sort_keys=True),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "controlplane",
        "groupLabels": group,
        "commonLabels": group,
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": alerts,
    }


@dataclass
class Sent:
    """What one webhook request did, as the client saw it."""

    kind: str  # storm | probe
    fingerprints: list[str]
    sent_at: float  # wall clock (time.time()), comparable with the server's timestamps on this host
    seconds: float
    status: int | None  # None: no answer (connection error, timeout)
    error: str = ""


@dataclass
class Load:
    run: str
    args: argparse.Namespace
    bases: list[str]
    results: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def post(self, client: httpx.Client, kind: str, fingerprints: list[str], body: dict[str, object]) -> None:
        sent_at = time.time()
        began = time.perf_counter()
        status: int | None = None
        error = ""
        try:
            status = client.post(WEBHOOK, json=body).status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        with self.lock:
            self.results.append(Sent(kind, fingerprints, sent_at, time.perf_counter() - began, status, error))

    def storm_notifications(self) -> Iterator[tuple[list[str], dict[str, object]]]:
        args = self.args
        starts_at = datetime.now(UTC).isoformat()
        for n in range((args.storm + args.per_notification - 1) // args.per_notification):
            service = f"svc-{n % args.services:03d}"
            group = {"alertname": "StormAlert", "service": service}
            first = n * args.per_notification
            fingerprints = [f"s{self.run}{i:07x}" for i in range(first, min(first + args.per_notification, args.storm))]
            alerts = [
                alert(fp, {**group, "namespace": service, "instance": f"pod-{i}", "severity": "warning"}, starts_at)
                for i, fp in zip(range(first, first + len(fingerprints)), fingerprints, strict=True)
            ]
            yield fingerprints, notification(group, alerts)

    def storm(self) -> tuple[float, float]:
        """Send every storm notification over `connections` keep-alive connections; (start, end) in wall time."""
        work: queue.SimpleQueue[tuple[list[str], dict[str, object]] | None] = queue.SimpleQueue()
        for item in self.storm_notifications():
            work.put(item)
        connections = self.args.connections
        for _ in range(connections):
            work.put(None)

        def connection(k: int) -> None:
            # Connection k always talks to replica k mod R: the pool is spread evenly over the replicas.
            with httpx.Client(base_url=self.bases[k % len(self.bases)], headers=auth(), timeout=30) as client:
                while not self.stopping.is_set():
                    item = work.get()
                    if item is None:
                        return
                    self.post(client, "storm", *item)

        threads = [threading.Thread(target=connection, args=(k,), daemon=True) for k in range(connections)]
        began = time.time()
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
        return began, time.time()

    def probes(self, storm_done: threading.Event, storm_end: list[float]) -> None:
        """One ProbeAlert every 1/rate s, round-robin over the replicas, until `tail` s after the storm."""
        args = self.args
        local = threading.local()
        clients: list[httpx.Client] = []

        def client_for(index: int) -> httpx.Client:
            if not hasattr(local, "clients"):
                local.clients = [httpx.Client(base_url=b, headers=auth(), timeout=30) for b in self.bases]
                with self.lock:
                    clients.extend(local.clients)
            return local.clients[index % len(self.bases)]  # type: ignore[no-any-return]

        def one(i: int) -> None:
            fingerprint = f"p{self.run}{i:07x}"
            labels = {"alertname": "ProbeAlert", "probe": f"probe-{i}", "namespace": "probe", "severity": "warning"}
            body = notification(
                {"alertname": "ProbeAlert", "probe": f"probe-{i}"},
                [alert(fingerprint, labels, datetime.now(UTC).isoformat())],
            )
            self.post(client_for(i), "probe", [fingerprint], body)

        due: queue.SimpleQueue[int | None] = queue.SimpleQueue()

        def send_due() -> None:
            while (i := due.get()) is not None:
                if not self.stopping.is_set():
                    one(i)

        # Enough threads that a slow answer during the storm does not delay the next probe's send.
        senders = [threading.Thread(target=send_due, daemon=True) for _ in range(16)]
        for thread in senders:
            thread.start()
        began = time.monotonic()
        for i in itertools.count():
            if self.stopping.is_set():
                break
            if storm_done.is_set() and time.time() > storm_end[0] + args.probe_tail:
                break
            delay = began + i / args.probe_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            due.put(i)
        for _ in senders:
            due.put(None)
        for thread in senders:
            thread.join(60)
        for client in clients:
            client.close()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


# --- what the service wrote -----------------------------------------------------------------------

LATENCIES = text("""
    SELECT e.rule_name, a.fingerprint, a.first_received_at AS received, s.started_at AS started
    FROM executions e
    JOIN alerts a ON a.id = e.alert_id
    JOIN execution_steps s ON s.execution_id = e.id AND s.phase = 'forward' AND s."index" = 0
    WHERE e.status != 'suppressed'""")
NOT_STARTED = text("""
    SELECT count(*) FROM executions e
    WHERE e.status != 'suppressed' AND NOT EXISTS (
        SELECT 1 FROM execution_steps s WHERE s.execution_id = e.id AND s.phase = 'forward' AND s."index" = 0)""")
UNFINISHED = text("""
    SELECT count(*) FROM executions
    WHERE status IN ('pending', 'running', 'waiting', 'awaiting_approval')""")
BY_STATUS = text("""
    SELECT rule_name, status,
           CASE WHEN status != 'suppressed' THEN ''
                WHEN reason LIKE 'cooldown%' THEN 'cooldown'
                WHEN reason LIKE 'execution #%' THEN 'in progress'
                ELSE reason END AS why,
           count(*) AS n
    FROM executions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")
STORED = text("SELECT alertname, fingerprint FROM alerts")


def wait_first_steps(engine: Engine, timeout: float, replicas: list[Replica]) -> float:
    """Seconds until every execution that was not suppressed has started its first step."""
    began = time.monotonic()
    while True:
        with engine.connect() as conn:
            left = conn.execute(NOT_STARTED).scalar_one()
        if left == 0:
            return time.monotonic() - began
        dead = [f"replica-{r.index}" for r in replicas if r.proc.poll() is not None]
        if dead:
            raise BenchFailed(f"{', '.join(dead)} exited; {left} executions have not started their first step")
        if time.monotonic() - began > timeout:
            raise BenchFailed(f"{left} executions had not started their first step within {timeout:g}s")
        time.sleep(0.25)


def wait_unfinished(engine: Engine, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            left = int(conn.execute(UNFINISHED).scalar_one())
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def acknowledged(sent: Sent) -> bool:
    return sent.status is not None and 200 <= sent.status < 300


def webhook_row(sents: list[Sent]) -> dict:  # type: ignore[type-arg]
    return {
        "requests": len(sents),
        "2xx": sum(1 for s in sents if acknowledged(s)),
        "non_2xx": dict(Counter(str(s.status) for s in sents if s.status is not None and not acknowledged(s))),
        "errors": dict(Counter(s.error for s in sents if s.status is None)),
        "alerts_sent": sum(len(s.fingerprints) for s in sents),
        "alerts_acked": sum(len(s.fingerprints) for s in sents if acknowledged(s)),
        "ack_ms": summary([s.seconds * 1000 for s in sents if s.status is not None]),
    }


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- the run --------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, url: str, engine: Engine, tmp: Path) -> dict:  # type: ignore[type-arg]
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "bench.yaml").write_text(RULES.format(cooldown=args.cooldown))
    code = code_version()  # what the replicas import as they start
    with serving(
        args.replicas, url, "replica", tmp, rules_dir=rules, env={"CONTROLPLANE_WEBHOOK_TOKEN": TOKEN}
    ) as replicas:
        if code_version() != code:
            raise BenchFailed(f"controlplane/ changed while the replicas started (was {code}); run again")
        progress(f"{args.replicas} replicas ready; probes for {args.probe_lead:g}s, then the storm")
        load = Load(run=uuid.uuid4().hex[:6], args=args, bases=[r.base for r in replicas])
        storm_done = threading.Event()
        storm_end = [0.0]
        prober = threading.Thread(target=load.probes, args=(storm_done, storm_end), daemon=True)
        try:
            prober.start()
            time.sleep(args.probe_lead)
            storm_began, storm_end[0] = load.storm()
            storm_done.set()
            progress(f"storm sent in {storm_end[0] - storm_began:.1f}s; probes for {args.probe_tail:g}s more")
            while prober.is_alive():
                prober.join(0.5)
        finally:
            load.stopping.set()
            storm_done.set()

        waited = wait_first_steps(engine, args.timeout, replicas)
        unfinished = wait_unfinished(engine, 15)
        with engine.connect() as conn:
            rows = conn.execute(LATENCIES).all()
            by_status = conn.execute(BY_STATUS).all()
            stored_rows = conn.execute(STORED).all()
        stored = {kind: {fp for name, fp in stored_rows if name == alertname} for kind, alertname in KINDS.items()}

        def phase(sent_at: float) -> str:
            return "before" if sent_at < storm_began else "during" if sent_at <= storm_end[0] else "after"

        probe_sent = {fp: s.sent_at for s in load.results if s.kind == "probe" for fp in s.fingerprints}
        received_to_step: dict[str, list[float]] = {"storm": [], "probe": []}
        phases = ("before", "during", "after")
        sent_to_step: dict[str, list[float]] = {p: [] for p in phases}
        for row in rows:
            started, received = aware(row.started), aware(row.received)
            received_to_step[row.rule_name].append((started - received).total_seconds() * 1000)
            if row.rule_name == "probe" and row.fingerprint in probe_sent:
                sent = probe_sent[row.fingerprint]
                sent_to_step[phase(sent)].append((started.timestamp() - sent) * 1000)

        groups = {"storm": [s for s in load.results if s.kind == "storm"]}
        for p in phases:
            groups[f"probes {p}"] = [s for s in load.results if s.kind == "probe" and phase(s.sent_at) == p]
        ingest = {name: webhook_row(sents) for name, sents in groups.items()}
        checks = {}
        for kind in KINDS:
            acked = {fp for s in load.results if s.kind == kind and acknowledged(s) for fp in s.fingerprints}
            missing = acked - stored[kind]
            checks[kind] = {
                "acked": len(acked),
                "stored": len(stored[kind]),
                "missing_count": len(missing),
                "missing": sorted(missing)[:10],
            }
        storm_seconds = storm_end[0] - storm_began
        ingest["storm"]["seconds"] = storm_seconds
        ingest["storm"]["alerts_per_second"] = ingest["storm"]["alerts_acked"] / storm_seconds

        executions: dict[str, dict[str, int]] = {}
        for rule_name, status, why, n in by_status:
            executions.setdefault(rule_name, {})[f"{status} ({why})" if why else status] = int(n)

        logs = {
            f"replica-{r.index}": {
                "exit": r.proc.poll(),
                "events": server_log_summary([r]),
                "peak_rss_mb": peak_rss_mb(r.proc.pid),
            }
            for r in replicas
        }
    return {
        "code": code,
        "ingest": ingest,
        "received_to_first_step_ms": {k: summary(v) for k, v in received_to_step.items()},
        "probe_sent_to_first_step_ms": {p: summary(v) for p, v in sent_to_step.items()},
        "executions": executions,
        "checks": checks,
        "first_steps_waited_seconds": waited,
        "unfinished_after_wait": unfinished,
        "replicas_at_end": logs,
    }


KINDS = {"storm": "StormAlert", "probe": "ProbeAlert"}
RSS_AIM_MB = 150


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM), while it still runs; None where /proc cannot tell."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def progress(message: str) -> None:
    print(f"[storm] {message}", file=sys.stderr, flush=True)


def fmt(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def print_table(result: dict) -> None:  # type: ignore[type-arg]
    a = result["args"]
    print(
        f"alert storm on PostgreSQL: {a['replicas']} replicas, {a['storm']} StormAlert alerts in notifications of "
        f"{a['per_notification']} over {a['connections']} connections, {a['services']} services "
        f"(guard: cooldown {a['cooldown']} per service); ProbeAlert {a['probe_rate']:g}/s, one per notification"
    )
    m = result["machine"]
    print(
        f"machine: {m['cores']} cores, Python {m['python']}, load average {m['load_before']} before, "
        f"{m['load_after']} after"
    )
    print(f"command: {result['command']}")
    print(f"code: {result['code']}")
    print()
    print("webhook              requests    2xx  non-2xx  errors  alerts acked  ack p50 ms  ack p99 ms  ack max ms")
    for kind, row in result["ingest"].items():
        bad = sum(row["non_2xx"].values())
        print(
            f"{kind:<20} {row['requests']:>8} {row['2xx']:>6} {bad:>8} {sum(row['errors'].values()):>7}"
            f" {row['alerts_acked']:>13} {fmt(row['ack_ms']['p50']):>11} {fmt(row['ack_ms']['p99']):>11}"
            f" {fmt(row['ack_ms']['max']):>11}"
        )
        for status, n in {**row["non_2xx"], **row["errors"]}.items():
            print(f"                     {n} x {status}")
    storm = result["ingest"]["storm"]
    print(
        f"storm: {storm['alerts_acked']} alerts acknowledged in {storm['seconds']:.1f}s"
        f" = {storm['alerts_per_second']:.0f} alerts/s"
    )
    print()
    print("to first step started (ms)                       runs      p50      p90      p99      max")
    rows = [("storm executions that ran, received ->", result["received_to_first_step_ms"]["storm"])]
    rows.append(("probes, received ->", result["received_to_first_step_ms"]["probe"]))
    for phase, values in result["probe_sent_to_first_step_ms"].items():
        rows.append((f"probes sent {phase} the storm, sent ->", values))
    for label, s in rows:
        print(f"{label:<46} {s['n']:>7} {fmt(s['p50']):>8} {fmt(s['p90']):>8} {fmt(s['p99']):>8} {fmt(s['max']):>8}")
    print()
    for rule_name, counts in result["executions"].items():
        print(f"executions of {rule_name}: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    for kind, check in result["checks"].items():
        verdict = "ok"
        if check["missing_count"]:
            verdict = f"MISSING {check['missing_count']} (e.g. {check['missing'][:3]})"
        print(f"{kind} alerts stored {check['stored']}, acknowledged {check['acked']}: {verdict}")
    print(
        f"every execution not suppressed started its first step ({result['first_steps_waited_seconds']:.1f}s after "
        f"the probes stopped); {result['unfinished_after_wait']} still unfinished"
    )
    for name, info in result["replicas_at_end"].items():
        events = ", ".join(f"{n} x {e}" for e, n in info["events"].items()) or "no warnings or errors"
        rss = info["peak_rss_mb"]
        verdict = "unknown" if rss is None else "met" if rss < RSS_AIM_MB else "ABOVE"
        peak = f"{rss or 0:.0f} MB [aim < {RSS_AIM_MB} MB: {verdict}]"
        print(f"{name}: peak RSS {peak}; log: {events}")


def drop_schema(admin: Engine, schema: str, timeout: float = 30.0) -> object:
    """Drop the run's schema, retrying while PostgreSQL restarts; the postmaster's start time, to compare."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                return conn.execute(text("SELECT pg_postmaster_start_time()")).scalar()
        except OperationalError as exc:
            if time.monotonic() > deadline:
                progress(f'could not drop schema {schema} ({exc.orig}); drop it with: DROP SCHEMA "{schema}" CASCADE')
                raise
            time.sleep(0.5)
        finally:
            admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--storm", type=int, default=10_000, help="distinct StormAlert alerts")
    parser.add_argument("--per-notification", type=int, default=10, help="alerts per storm notification")
    parser.add_argument("--services", type=int, default=100, help="values of the `service` label (guard keys)")
    parser.add_argument("--cooldown", default="10m", help="the storm rule's cooldown per service")
    parser.add_argument("--connections", type=int, default=16, help="storm connections, spread over the replicas")
    parser.add_argument("--probe-rate", type=float, default=10.0, help="ProbeAlert notifications per second")
    parser.add_argument("--probe-lead", type=float, default=2.0, help="seconds of probes before the storm")
    parser.add_argument("--probe-tail", type=float, default=5.0, help="seconds of probes after the storm")
    parser.add_argument("--timeout", type=float, default=180.0, help="for every first step to start, s")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    # SIGTERM takes the same way out as Ctrl-C: the finally below stops the replicas and drops the schema.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    schema = f"cp_bench_storm_{uuid.uuid4().hex[:8]}"
    # No pooled connections: other test suites on this machine restart PostgreSQL, and a pooled
    # connection killed by that would fail the DROP SCHEMA below and leave the schema behind.
    admin = create_engine(PG, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        postmaster_started = conn.execute(text("SELECT pg_postmaster_start_time()")).scalar()
    url = f"{PG}?options=-csearch_path%3D{schema}"
    engine = create_engine(url, poolclass=NullPool)
    failed = ""
    try:
        with tempfile.TemporaryDirectory(prefix="cp-bench-storm-") as tmp:
            try:
                result = measure(args, url, engine, Path(tmp))
            except (BenchFailed, RuntimeError, OperationalError) as exc:  # RuntimeError: a replica failed
                failed = str(exc.orig) if isinstance(exc, OperationalError) else str(exc)
    finally:
        engine.dispose()
        restarted = drop_schema(admin, schema) != postmaster_started
    if restarted and not failed:
        failed = "PostgreSQL restarted during the run (another test suite?): the figures are not comparable; run again"
    if failed:
        print(f"storm benchmark FAILED: {failed}", file=sys.stderr)
        return 1

    result["args"] = vars(args)
    result["command"] = shlex.join([".venv/bin/python", "bench/storm.py", *sys.argv[1:]])
    result["machine"] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    missing = sum(c["missing_count"] for c in result["checks"].values())
    if missing:
        print(f"storm benchmark FAILED: {missing} acknowledged alerts are not stored", file=sys.stderr)
        return 1
    if result["ingest"]["storm"]["2xx"] == 0:
        print("storm benchmark FAILED: no storm notification was acknowledged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
