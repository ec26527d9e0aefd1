"""Benchmark: time from killing the leader (kill -9) to another replica leading, on PostgreSQL.

Starts two replicas of `controlplane serve` on a schema of its own in the local PostgreSQL
(127.0.0.1:5432, database `test`), waits until one leads, kills it, and times until the
other's /ready reports `leader.this_instance`. Repeats a few times with default settings.

  .venv/bin/python bench/leader_failover.py [--rounds 3]
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
from collections.abc import Callable

import httpx
from sqlalchemy import create_engine, text

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(url: str, rules: str, name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env.update(
        {
            "CONTROLPLANE_DATABASE_URL": url,
            "CONTROLPLANE_RULES_DIR": rules,
            "CONTROLPLANE_LOG_LEVEL": "warning",
            "CONTROLPLANE_LISTEN_PORT": str(port),
            "CONTROLPLANE_INSTANCE_ID": name,
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, f"http://127.0.0.1:{port}"


def ready(base: str) -> dict | None:  # type: ignore[type-arg]
    try:
        response = httpx.get(base + "/ready", timeout=1)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code in (200, 503) else None


def leads(base: str) -> bool:
    body = ready(base)
    return bool(body and body["leader"]["this_instance"])


def wait_until(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate():
            return time.monotonic() - began
        time.sleep(0.05)
    raise SystemExit(f"{what}: not within {timeout:g}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    schema = f"cp_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG}?options=-csearch_path%3D{schema}"
    procs: list[subprocess.Popen[bytes]] = []
    times: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as rules:
            replicas = [start(url, rules, f"replica-{i}") for i in range(2)]
            procs = [p for p, _ in replicas]
            for round_ in range(args.rounds):
                bases = [b for _, b in replicas]
                wait_until("a leader", lambda bases=bases: any(leads(b) for b in bases), 60)
                index = next(i for i, b in enumerate(bases) if leads(b))
                survivor = bases[1 - index]
                wait_until("the survivor ready", lambda s=survivor: ready(s) is not None, 60)
                replicas[index][0].kill()  # kill -9: no lease release, the lease must run out
                elapsed = wait_until("a new leader", lambda s=survivor: leads(s), 30)
                times.append(elapsed)
                print(f"round {round_ + 1}: leader killed, the other replica leads after {elapsed:.2f} s")
                replicas[index] = start(url, rules, f"replica-{index}-r{round_}")
                procs.append(replicas[index][0])
        print(
            f"leader kill -> new leader: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
            f"over {len(times)} rounds (default lease 6 s, renewed every 2 s)"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
