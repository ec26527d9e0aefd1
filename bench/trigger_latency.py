"""Benchmark: time from an alert being received to the first step of its playbook starting.

Starts the real service (one process, on SQLite or on a schema of its own in the local
PostgreSQL) with one rule whose playbook begins with `notify.log`, sends unique alerts from a
separate thread pool on loopback, and reads both timestamps from the database the service wrote
(one clock: the server's): alerts.first_received_at -> execution_steps.started_at of step 0.
Afterwards it checks that every execution succeeded and ran its step exactly once.

  .venv/bin/python bench/trigger_latency.py [--alerts 300] [--rate 50] [--burst 1000]
      [--database sqlite|postgresql] [--worker-threads N (default: the service's)]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

TOKEN = "bench-token-0123456789abcdef"
RULES = """
rules:
  - name: bench
    match: {alertname: BenchAlert}
    playbook: first-step
playbooks:
  - name: first-step
    steps:
      - action: notify.log
        with: {text: "{{ alert.labels.namespace }}"}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def payload(run: str, i: int) -> dict[str, object]:
    return {
        "version": "4",
        "groupKey": f"bench-{run}-{i}",
        "status": "firing",
        "receiver": "bench",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": [
            {
                "status": "firing",
                "fingerprint": f"{run}{i:08x}",
                "startsAt": "2026-11-24T08:00:00Z",
                "labels": {"alertname": "BenchAlert", "namespace": f"ns-{run}-{i}", "severity": "warning"},
                "annotations": {"summary": "bench"},
            }
        ],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def send(url: str, run: str, count: int, rate: float | None, concurrency: int) -> float:
    began = time.perf_counter()
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:

        def one(i: int) -> None:
            if rate:
                delay = began + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            response = client.post(url, json=payload(run, i))
            response.raise_for_status()

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(count)))
    return time.perf_counter() - began


def latencies(url: str, run: str, count: int, timeout: float = 120.0) -> tuple[list[float], float]:
    """Each alert's received -> first step started, ms; and from the first received to the last started, s."""
    engine = create_engine(url, poolclass=NullPool)
    query = text("""
        SELECT a.first_received_at AS received, s.started_at AS started
        FROM alerts a JOIN executions e ON e.alert_id = a.id
        JOIN execution_steps s ON s.execution_id = e.id AND s.phase = 'forward' AND s."index" = 0
        WHERE a.fingerprint LIKE :run""")
    deadline = time.monotonic() + timeout
    rows: list[object] = []
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            rows = list(conn.execute(query, {"run": f"{run}%"}))
        if len(rows) >= count:
            break
        time.sleep(0.5)
    if len(rows) >= count:
        check(engine, run, count, deadline)
    engine.dispose()
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} of {count} executions started within {timeout:g}s")
    from datetime import datetime

    def parse(v: object) -> datetime:
        return v if isinstance(v, datetime) else datetime.fromisoformat(str(v))

    received = [parse(r.received) for r in rows]  # type: ignore[attr-defined]
    started = [parse(r.started) for r in rows]  # type: ignore[attr-defined]
    span = (max(started) - min(received)).total_seconds()
    return [(b - a).total_seconds() * 1000 for a, b in zip(received, started, strict=True)], span


def check(engine: object, run: str, count: int, deadline: float) -> None:
    """Every execution of the run ends succeeded, with its one step recorded once (no step ran twice)."""
    query = text("""
        SELECT e.status, count(s.id) AS steps, count(DISTINCT s.idempotency_key) AS keys,
               sum(CASE WHEN au.action = 'step.succeeded' THEN 1 ELSE 0 END) AS succeeded_audits
        FROM alerts a JOIN executions e ON e.alert_id = a.id
        LEFT JOIN execution_steps s ON s.execution_id = e.id
        LEFT JOIN audit_events au ON au.execution_id = e.id AND au.action = 'step.succeeded'
        WHERE a.fingerprint LIKE :run GROUP BY e.id, e.status""")
    while True:
        with engine.connect() as conn:  # type: ignore[attr-defined]
            rows = list(conn.execute(query, {"run": f"{run}%"}))
        if all(r.status == "succeeded" for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    bad = [r for r in rows if r.status != "succeeded" or r.steps != 1 or r.keys != 1 or r.succeeded_audits != 1]
    if len(rows) != count or bad:
        raise SystemExit(f"check FAILED: {len(rows)} executions for {count} alerts; not run exactly once: {bad[:5]}")


def report(name: str, measured: tuple[list[float], float], seconds: float, count: int) -> None:
    values, span = measured
    print(
        f"{name:<22} {count:>6} alerts in {seconds:6.1f}s   p50 {statistics.median(values):7.2f} ms"
        f"   p90 {percentile(values, 0.9):7.2f} ms   p99 {percentile(values, 0.99):7.2f} ms"
        f"   max {max(values):7.2f} ms   first received -> last started {span:5.1f}s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=300, help="alerts at a steady rate")
    parser.add_argument("--rate", type=float, default=50.0, help="steady rate, alerts/s")
    parser.add_argument("--burst", type=int, default=1000, help="alerts sent as fast as 16 connections go")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--worker-threads", type=int, default=None, help="CONTROLPLANE_WORKER_THREADS")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    schema = f"cp_bench_latency_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, poolclass=NullPool) if args.database == "postgresql" else None
    if admin is not None:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        with tempfile.TemporaryDirectory(prefix="cp-bench-latency-") as tmp:
            url = f"{PG}?options=-csearch_path%3D{schema}" if admin is not None else f"sqlite:///{tmp}/cp.db"
            run(args, url, Path(tmp), load)
    finally:
        if admin is not None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()
    return 0


def run(args: argparse.Namespace, url: str, tmp: Path, load: str) -> None:
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "bench.yaml").write_text(RULES)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env.update(
        {
            "CONTROLPLANE_DATABASE_URL": url,
            "CONTROLPLANE_WEBHOOK_TOKEN": TOKEN,
            "CONTROLPLANE_RULES_DIR": str(rules),
            "CONTROLPLANE_LOG_LEVEL": "warning",
            "CONTROLPLANE_LISTEN_PORT": str(port),
        }
    )
    if args.worker_threads is not None:
        env["CONTROLPLANE_WORKER_THREADS"] = str(args.worker_threads)
    server = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        webhook = base + "/api/v1/alerts/alertmanager"
        threads = args.worker_threads or "default"
        print(
            f"alert received -> first step started ({args.database}, one process, worker threads {threads},"
            f" {os.cpu_count()} cores, load average {load}, commit {commit()})"
        )
        seconds = send(webhook, "s", args.alerts, args.rate, 4)
        report(f"steady {args.rate:g}/s", latencies(url, "s", args.alerts), seconds, args.alerts)
        seconds = send(webhook, "b", args.burst, None, 16)
        report("burst (16 conns)", latencies(url, "b", args.burst), seconds, args.burst)
        print(f"check: every execution succeeded, its step recorded once; load average after {loadavg()}")
    finally:
        server.terminate()
        server.wait(15)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "controlplane"], capture_output=True, text=True)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
