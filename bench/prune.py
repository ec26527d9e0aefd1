"""Owns the retention benchmark: ingest while the leader prunes a million rows, against ingest alone.

    .venv/bin/python bench/prune.py [--rows 1000000] [--duration 30] [--connections 32]
        [--backend sqlite|postgresql] [--max-prune-seconds 600] [--keep DIR] [--json]

A database is seeded in bulk into the real schema (`migrate.upgrade`, then executemany on SQLite and
COPY on PostgreSQL, bench/console.py's Writer) with `--rows` rows retention deletes: incidents
resolved about 200 days ago, each with 1-5 resolved alerts, their links and audit rows
(incident.opened, alert.firing, alert.resolved, incident.resolved), one in three with a finished
execution, its two steps and its execution audit rows; and suppressed executions 30 days old. Beside
them, rows that must stay (marked `keep`): incidents resolved 60 days ago (only their alerts' audit
rows go, after 30 days), incidents resolved 10 days ago with their runs, incidents still open since
200 days with their firing alerts, and suppressed executions 5 days old.

Two phases, each on a fresh copy of the seeded SQLite file (PostgreSQL: a fresh schema, seeded again):
- baseline: `controlplane serve` with CONTROLPLANE_RETENTION_ENABLED=false, driven by wrk with
  bench/ingest.lua (bench/loadgen.py when wrk is missing) in the "unique" scenario, a new alert per
  request, for `--duration` seconds after a warm-up: notifications/s, p50, p99.
- pruning: the same with retention on, every 2 s (the first round, at start-up, comes before the
  lease: the leader's first round starts about 2 s later), so the load runs while it prunes. The
  pruned rows counted during the load window come from `controlplane_pruned_rows_total` on /metrics,
  sampled every half second. Then the service runs on without load until every seeded prunable row
  is gone and SQLite's incremental vacuum is done (or `--max-prune-seconds`).

After each phase the service is stopped and its database checked: every acknowledged (2xx) alert
stored once with its link and alert.firing audit row, every seeded row still there (baseline) or
exactly the `keep` rows (pruning), and the pruned rows per table equal to the seeded prunable rows.
A failed check exits 1. The aim: ingest while pruning >= 0.8x the baseline's notifications/s.
PostgreSQL: 127.0.0.1:5432, database `test`, a schema of its own per phase, dropped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from console import PG, Writer, code_version  # bench/console.py (it puts the repository on sys.path)
from ingest import (  # bench/ingest.py
    WEBHOOK_PATH,
    Load,
    find_wrk,
    free_port,
    machine,
    payload,
    progress,
    run_load,
    server_command,
    serving,
)
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from controlplane.db import migrate
from controlplane.db.engine import make_engine
from controlplane.db.tables import alerts_t, audit_t, executions_t, incidents_t, links_t, steps_t

AIM_RATIO = 0.8
INTERVAL_SECONDS = 2
TABLES = ("incidents", "alerts", "incident_alerts", "audit_events", "executions", "execution_steps")
ROWS_PER_OLD_INCIDENT = 1 + 3 + 3 + 8 + 5 / 3  # incident, 3 alerts, 3 links, 8 audit rows, a third of a run
# Rows that must stay, by table (the seeded ones are the rows up to the seeded maximum id, see `Seeded`).
KEPT_SQL = {
    "incidents": "title LIKE 'keep:%'",
    "alerts": "alertname LIKE 'Keep%'",
    "incident_alerts": "alert_id IN (SELECT id FROM alerts WHERE alertname LIKE 'Keep%')",
    "audit_events": "actor = 'bench-keep'",
    "executions": "rule_name = 'bench-keep'",
    "execution_steps": "action = 'bench.keep'",
}


# -- seeding -------------------------------------------------------------------------------------


@dataclass
class Seeded:
    """What the seed wrote: rows per table, those that must stay, and each table's highest id.

    Every table's last rows are kept ones, so the service's own rows get higher ids whatever was pruned."""

    rows: dict[str, int]
    kept: dict[str, int]
    max_id: dict[str, int]
    seconds: float = 0.0

    @property
    def prunable(self) -> dict[str, int]:
        return {table: self.rows[table] - self.kept[table] for table in TABLES}


@dataclass
class _Incident:
    id: int
    kind: str  # old (goes), middle (resolved 60 days ago: only its alerts' audit rows go), recent, open
    opened: datetime
    alerts: int
    run: bool


def seed(engine: Engine, *, rows: int, now: datetime) -> Seeded:
    """At least `rows` prunable rows and about 6% as many kept ones, one transaction."""
    migrate.upgrade(engine)
    rng = random.Random(23)
    suppressed_share = 0.05
    old = max(3, round(rows * (1 - suppressed_share) / ROWS_PER_OLD_INCIDENT))
    kinds = [("old", old), ("middle", max(1, old // 25)), ("recent", max(1, old // 100)), ("open", max(1, old // 200))]
    plan: list[_Incident] = []
    for kind, number in kinds:
        for i in range(number):
            age = {"old": 200, "middle": 60, "recent": 10, "open": 200}[kind]
            opened = now - timedelta(days=age, seconds=rng.random() * 86400 * 5)
            run = i % 3 == 0 if kind == "old" else kind != "open"
            plan.append(_Incident(len(plan) + 1, kind, opened, rng.randint(1, 5), run))

    kept: Counter[str] = Counter()
    prunable: Counter[str] = Counter()

    def count(table: str, keep: bool) -> None:
        (kept if keep else prunable)[table] += 1

    def incident_rows() -> Iterator[tuple[Any, ...]]:
        for inc in plan:
            keep = inc.kind != "old"
            count("incidents", keep)
            mark = "keep" if keep else "old"
            key = f'{{alertname="{mark.title()}Alert",namespace="ns{inc.id % 500}"}}'
            status = "open" if inc.kind == "open" else "resolved"
            open_key = f'{{alertname="KeepAlert",namespace="open-{inc.id}"}}' if status == "open" else None
            resolved = inc.opened + timedelta(minutes=30) if status == "resolved" else None
            yield (
                inc.id, key, open_key, status, "warning", f"{mark}: incident {inc.id}", {"alertname": "x"},
                inc.opened, resolved or inc.opened, None, resolved,
            )  # fmt: skip

    first_alert: dict[int, int] = {}

    def alert_rows() -> Iterator[tuple[Any, ...]]:
        next_id = 1
        for inc in plan:
            first_alert[inc.id] = next_id
            keep = inc.kind != "old"
            firing = inc.kind == "open"
            for k in range(inc.alerts):
                count("alerts", keep)
                at = inc.opened + timedelta(seconds=30 * k)
                name = "KeepAlert" if keep else "OldAlert"
                yield (
                    next_id, f"seed{next_id:012x}", name, "firing" if firing else "resolved",
                    {"alertname": name, "pod": f"p{next_id}"}, {"summary": "seeded"}, at,
                    None if firing else at + timedelta(minutes=20), "http://prometheus:9090/graph", "controlplane",
                    at, at + timedelta(minutes=1), 1,
                )  # fmt: skip
                next_id += 1

    def link_rows() -> Iterator[tuple[Any, ...]]:
        for inc in plan:
            for k in range(inc.alerts):
                count("incident_alerts", inc.kind != "old")
                yield inc.id, first_alert[inc.id] + k, inc.opened + timedelta(seconds=30 * k)

    playbook = {"name": "bench", "steps": [{"action": "notify.log", "with": {"text": "x"}}]}
    run_of: dict[int, int] = {}  # incident id -> its execution id

    def execution(id_: int, keep: bool, trigger: str, incident: int | None, alert: int | None, at: datetime,
                  status: str) -> tuple[Any, ...]:  # fmt: skip
        count("executions", keep)
        done = at + timedelta(minutes=3)
        suppressed = status == "suppressed"
        return (
            id_, "bench-keep" if keep else "bench-old", "bench", trigger, f"g{trigger}", incident, alert, status,
            "suppressed by cooldown" if suppressed else "", False, playbook, {}, {}, at, done,
            None if suppressed else at, done, None, 0 if suppressed else 2, None, None, 0, None, None,
            "cooldown" if suppressed else None, True, None if suppressed else "resolved", None, 1,
        )  # fmt: skip

    def execution_rows() -> Iterator[tuple[Any, ...]]:
        suppressed = max(0, rows - expected_prunable_of_incidents())
        next_id = 1
        for n in range(suppressed):  # old suppressed runs first: the last ids are kept rows
            at = now - timedelta(days=30, seconds=rng.random() * 86400)
            yield execution(next_id, False, f"s{n}", None, None, at, "suppressed")
            next_id += 1
        for inc in plan:
            if inc.run:
                run_of[inc.id] = next_id
                at = inc.opened + timedelta(minutes=1)
                status = "failed" if inc.id % 7 == 0 else "succeeded"
                yield execution(next_id, inc.kind != "old", f"i{inc.id}", inc.id, first_alert[inc.id], at, status)
                next_id += 1
        for n in range(max(1, suppressed // 100)):
            at = now - timedelta(days=5, seconds=rng.random() * 86400)
            yield execution(next_id, True, f"k{n}", None, None, at, "suppressed")
            next_id += 1

    def step_rows() -> Iterator[tuple[Any, ...]]:
        next_id = 1
        for inc in plan:
            if not inc.run:
                continue
            keep = inc.kind != "old"
            execution_id, at = run_of[inc.id], inc.opened + timedelta(minutes=1)
            for index in range(2):
                count("execution_steps", keep)
                yield (
                    next_id, execution_id, "forward", index, None, "bench.keep" if keep else "bench.old", "succeeded",
                    {"text": "x"}, {"ok": True}, None, 1, f"{execution_id}:{index}", at + timedelta(seconds=index),
                    at + timedelta(seconds=index + 1), 1000.0,
                )  # fmt: skip
                next_id += 1

    def audit_rows() -> Iterator[tuple[Any, ...]]:
        next_id = 0

        def audit(
            keep: bool, at: datetime, action: str, incident: int, execution: int | None, detail: dict[str, Any]
        ) -> tuple[Any, ...]:
            nonlocal next_id
            next_id += 1
            count("audit_events", keep)
            return next_id, at, "bench-keep" if keep else "bench-old", action, incident, execution, detail

        for inc in plan:
            keep = inc.kind != "old"
            # An alert's own audit rows go after 30 days, unless its incident is still open.
            alert_keep = inc.kind in ("recent", "open")
            yield audit(keep, inc.opened, "incident.opened", inc.id, None, {"key": "k"})
            for k in range(inc.alerts):
                alert_id = first_alert[inc.id] + k
                at = inc.opened + timedelta(seconds=30 * k)
                detail = {"alert_id": alert_id, "fingerprint": f"seed{alert_id:012x}"}
                yield audit(alert_keep, at, "alert.firing", inc.id, None, detail)
                if inc.kind != "open":
                    yield audit(alert_keep, at + timedelta(minutes=20), "alert.resolved", inc.id, None, detail)
            if inc.kind != "open":
                yield audit(keep, inc.opened + timedelta(minutes=30), "incident.resolved", inc.id, None, {})
            if inc.run:
                at = inc.opened + timedelta(minutes=1)
                for action in ("execution.created", "execution.succeeded"):
                    yield audit(keep, at, action, inc.id, run_of[inc.id], {"rule": "bench"})

    def expected_prunable_of_incidents() -> int:
        total = 0
        for inc in plan:
            if inc.kind == "old":
                total += 1 + inc.alerts * 2 + 2 + inc.alerts * 2 + (5 if inc.run else 0)
            elif inc.kind == "middle":
                total += inc.alerts * 2  # alert.firing and alert.resolved
        return total

    began = time.perf_counter()
    with engine.begin() as conn:
        w = Writer(conn)
        w.write(
            incidents_t,
            ["id", "key", "open_key", "status", "severity", "title", "group_labels", "opened_at", "updated_at",
             "acknowledged_at", "resolved_at"],
            incident_rows(),
        )  # fmt: skip
        w.write(
            alerts_t,
            ["id", "fingerprint", "alertname", "status", "labels", "annotations", "starts_at", "ends_at",
             "generator_url", "receiver", "first_received_at", "last_received_at", "receive_count"],
            alert_rows(),
        )  # fmt: skip
        w.write(links_t, ["incident_id", "alert_id", "attached_at"], link_rows())
        w.write(
            executions_t,
            ["id", "rule_name", "playbook_name", "trigger_key", "guard_key", "incident_id", "alert_id", "status",
             "reason", "dry_run", "playbook", "params", "context", "created_at", "updated_at", "started_at",
             "finished_at", "wake_at", "current_step", "lease_owner", "lease_expires_at", "claims", "decided_by",
             "decided_at", "guard", "page_on_failure", "outcome", "outcome_at", "approvals_required"],
            execution_rows(),
        )  # fmt: skip
        w.write(
            steps_t,
            ["id", "execution_id", "phase", "index", "step_id", "action", "status", "inputs", "output", "error",
             "attempts", "idempotency_key", "started_at", "finished_at", "duration_ms"],
            step_rows(),
        )  # fmt: skip
        w.write(audit_t, ["id", "at", "actor", "action", "incident_id", "execution_id", "detail"], audit_rows())
        max_id = {}
        for table in TABLES:
            column = "alert_id" if table == "incident_alerts" else "id"
            max_id[table] = int(conn.execute(text(f"SELECT max({column}) FROM {table}")).scalar_one())
        if conn.dialect.name == "postgresql":
            for table in TABLES:
                if table != "incident_alerts":
                    conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {max_id[table]})"))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM ANALYZE {', '.join(TABLES)}"))  # as autovacuum would have
    total = {table: kept[table] + prunable[table] for table in TABLES}
    return Seeded(total, {t: kept[t] for t in TABLES}, max_id, round(time.perf_counter() - began, 1))


def checkpoint(database: Path) -> None:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def seeded_sqlite(directory: Path, rows: int, now: datetime) -> tuple[Path, Seeded]:
    """The seeded file in `directory` (reused with its counts when there), checkpointed: ready to copy."""
    database = directory / f"prune-{rows}.db"
    counts_file = database.with_suffix(".json")
    if database.exists() and counts_file.exists():
        progress(f"sqlite: reusing {database}")
        return database, Seeded(**json.loads(counts_file.read_text()))
    for stale in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        stale.unlink(missing_ok=True)
    progress(f"sqlite: seeding {rows:,} prunable rows ...")
    engine = make_engine(f"sqlite:///{database}")
    try:
        found = seed(engine, rows=rows, now=now)
    finally:
        engine.dispose()
    checkpoint(database)
    counts_file.write_text(json.dumps(asdict(found)))
    return database, found


@contextlib.contextmanager
def postgresql_schema(rows: int, now: datetime, name: str) -> Iterator[tuple[str, Seeded]]:
    """A schema of its own, seeded, dropped when the block ends."""
    schema = f"cp_bench_prune_{name}_{os.getpid()}"
    admin = create_engine(PG, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG}?options=-csearch_path%3D{schema}"
    try:
        progress(f"postgresql ({name}): seeding {rows:,} prunable rows in schema {schema} ...")
        engine = make_engine(url)
        try:
            found = seed(engine, rows=rows, now=now)
        finally:
            engine.dispose()
        yield url, found
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


# -- measuring -----------------------------------------------------------------------------------


def pruned_rows(port: int) -> Counter[str]:
    """controlplane_pruned_rows_total by table, from the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    found: Counter[str] = Counter()
    for line in body.splitlines():
        if line.startswith("controlplane_pruned_rows_total{"):
            table = re.search(r'table="([^"]*)"', line)
            if table:
                found[table.group(1)] += int(float(line.rsplit(" ", 1)[1]))
    return found


@dataclass
class Sampler:
    """Samples the pruned-rows counter every half second in a thread: (seconds since start, rows)."""

    port: int
    samples: list[tuple[float, Counter[str]]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic() - self.started, pruned_rows(self.port)))
            self._stop.wait(0.5)

    def now(self) -> Counter[str]:
        found = pruned_rows(self.port)
        self.samples.append((time.monotonic() - self.started, found))
        return found

    def first_pruned(self) -> float | None:
        return next((at for at, rows in self.samples if rows.total()), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Phase:
    phase: str
    per_second: float  # 2xx notifications per second of the measured run
    p50_ms: float
    p99_ms: float
    ok: int
    non2xx: int
    errors: int
    pruned_in_window: int = 0
    pruned_per_second_in_window: float = 0.0
    prune_started_s: float | None = None  # after the service served
    prune_seconds: float | None = None  # first row pruned -> last row pruned
    prune_done_s: float | None = None  # after the service served: every prunable row gone and the vacuum done
    pruned: dict[str, int] = field(default_factory=dict)
    complete: bool = True
    size_before_mb: float | None = None
    size_after_mb: float | None = None
    freelist_pages_after: int | None = None
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (s after serving, rows pruned) every ~5 s
    check_ok: bool = False
    check: str = ""


def sqlite_freelist(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def wait_for_prune(sampler: Sampler, seeded: Seeded, database: Path | None, limit: float) -> tuple[bool, float | None]:
    """Until every prunable row is counted and (SQLite) the free pages stop shrinking, or `limit` seconds
    after the service served. Returns whether every row went, and when the round was over."""
    want = sum(seeded.prunable.values())
    while sampler.now().total() < want:
        if time.monotonic() - sampler.started > limit:
            return False, None
        time.sleep(0.5)
    if database is None:
        return True, time.monotonic() - sampler.started
    # The round gives the freed pages back (incremental vacuum) after its last batch.
    last, steady_since = sqlite_freelist(database), time.monotonic()
    while time.monotonic() - steady_since < 3 and time.monotonic() - sampler.started < limit:
        time.sleep(0.5)
        free = sqlite_freelist(database)
        if free != last:
            last, steady_since = free, time.monotonic()
    return True, steady_since - sampler.started


def database_mb(url: str, database: Path | None) -> float:
    if database is not None:
        return round(database.stat().st_size / 2**20, 1)
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        size = conn.execute(
            text(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )
        ).scalar_one()
    engine.dispose()
    return round(int(size) / 2**20, 1)


def verify(url: str, seeded: Seeded, pruning: bool, complete: bool, loads: list[Load]) -> tuple[bool, str]:
    """Every 2xx stored once (with its link and alert.firing audit row); the seeded rows all there (baseline)
    or the kept ones all there and, when the prune completed, nothing else seeded."""
    acked, sent = sum(x.ok for x in loads), sum(x.sent for x in loads)
    engine = create_engine(url, poolclass=NullPool)
    problems: list[str] = []
    with engine.connect() as conn:

        def one(sql: str) -> int:
            return int(conn.execute(text(sql)).scalar_one())

        top = seeded.max_id
        stored = one(f"SELECT count(*) FROM alerts WHERE id > {top['alerts']}")
        links = one(f"SELECT count(*) FROM incident_alerts WHERE alert_id > {top['alerts']}")
        audits = one(f"SELECT count(*) FROM audit_events WHERE id > {top['audit_events']} AND action = 'alert.firing'")
        if not (acked <= stored <= sent and links == stored == audits):
            problems.append(f"load: alerts {stored} not in [2xx {acked}, sent {sent}] or links {links}/audits {audits}")
        left = {}
        for table in TABLES:
            column = "alert_id" if table == "incident_alerts" else "id"
            seeded_left = one(f"SELECT count(*) FROM {table} WHERE {column} <= {top[table]}")
            kept_left = one(f"SELECT count(*) FROM {table} WHERE {column} <= {top[table]} AND {KEPT_SQL[table]}")
            left[table] = seeded_left - kept_left
            if kept_left != seeded.kept[table]:
                problems.append(f"{table}: {kept_left} kept rows left of {seeded.kept[table]}")
            if not pruning and left[table] != seeded.prunable[table]:
                problems.append(f"{table}: {left[table]} prunable rows left of {seeded.prunable[table]}, retention off")
            if pruning and complete and left[table]:
                problems.append(f"{table}: {left[table]} prunable rows left")
    engine.dispose()
    ok = not problems
    summary = f"alerts {stored} in [2xx {acked}, sent {sent}], kept rows all there"
    if pruning:
        summary += f", prunable left {sum(left.values()):,}"
    return ok, ("ok: " + summary) if ok else "FAILED: " + "; ".join(problems)


def run_phase(name: str, url: str, database: Path | None, seeded: Seeded, args: argparse.Namespace,
              wrk: str | None, workdir: Path) -> Phase:  # fmt: skip
    pruning = name == "pruning"
    run_dir = workdir / name
    run_dir.mkdir()
    body = run_dir / "body.json"
    body.write_text(payload("unique"))
    port = free_port()
    cmd, env = server_command("service", database or Path("unused.db"), port)
    env |= {
        "CONTROLPLANE_DATABASE_URL": url,
        "CONTROLPLANE_RETENTION_ENABLED": "true" if pruning else "false",
        "CONTROLPLANE_RETENTION_INTERVAL_SECONDS": str(INTERVAL_SECONDS),
        "CONTROLPLANE_RETENTION_BATCH_ROWS": str(args.batch_rows),
    }
    size_before = database_mb(url, database)
    target = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    progress(f"{name}: warm-up {args.warmup}s, then {args.duration}s at {args.connections} connections")
    complete, done_at = not pruning, None
    with serving(cmd, env, port, run_dir / "server.log"):
        sampler = Sampler(port)
        try:
            loads = [run_load(wrk, target, body, "unique", "w", args.warmup, args.connections)] if args.warmup else []
            before = sampler.now()
            loads.append(run_load(wrk, target, body, "unique", "m", args.duration, args.connections))
            after = sampler.now()
            if pruning:
                progress(f"{name}: load done, {after.total():,} rows pruned so far; waiting for the rest")
                complete, done_at = wait_for_prune(sampler, seeded, database, args.max_prune_seconds)
            final = sampler.now()
        finally:
            sampler.stop()
    main = loads[-1]
    window = after.total() - before.total()
    result = Phase(
        name, round(main.ok / main.duration_s, 1), round(main.p50_ms, 2), round(main.p99_ms, 2),
        main.ok, main.non2xx, main.errors,
    )  # fmt: skip
    if pruning:
        result.pruned_in_window = window
        result.pruned_per_second_in_window = round(window / main.duration_s, 1)
        result.pruned = {table: final[table] for table in sorted(final)}
        result.complete = complete
        started = sampler.first_pruned()
        result.prune_started_s = None if started is None else round(started, 1)
        last = next((at for at, rows in sampler.samples if rows.total() >= final.total()), None)
        if started is not None and last is not None:
            result.prune_seconds = round(last - started, 1)
        result.prune_done_s = None if done_at is None else round(done_at, 1)
        result.timeline = [(round(at, 1), rows.total()) for at, rows in sampler.samples[::10]]
        if complete and dict(final) != {t: n for t, n in seeded.prunable.items() if n}:
            result.check = f"pruned per table {dict(final)} != seeded prunable {seeded.prunable}; "
    if database is not None:
        checkpoint(database)
        result.freelist_pages_after = sqlite_freelist(database)
    result.size_before_mb, result.size_after_mb = size_before, database_mb(url, database)
    ok, check = verify(url, seeded, pruning, complete, loads)
    result.check_ok = ok and main.ok > 0 and not result.check
    result.check += check
    progress(f"  {result.per_second:.0f} notifications/s, p99 {result.p99_ms:.1f} ms; check {result.check}")
    return result


# -- the command ---------------------------------------------------------------------------------


def table(seeded: Seeded, phases: list[Phase], ratio: dict[str, float]) -> str:
    head = (
        f"{'phase':<10}{'notif/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'2xx':>8}{'non-2xx':>8}{'errors':>7}"
        f"{'pruned in window':>18}{'rows/s':>9}"
    )
    rows = ", ".join(f"{t} {seeded.prunable[t]:,}/{seeded.rows[t]:,}" for t in TABLES)
    lines = [f"seeded (prunable/all) in {seeded.seconds} s: {rows}", "", head, "-" * len(head)]
    for p in phases:
        window = f"{p.pruned_in_window:>18,}{p.pruned_per_second_in_window:>9,.0f}" if p.phase == "pruning" else ""
        lines.append(
            f"{p.phase:<10}{p.per_second:>9.0f}{p.p50_ms:>8.1f}{p.p99_ms:>8.1f}{p.ok:>8}{p.non2xx:>8}{p.errors:>7}"
            + window
        )
    lines.append("")
    if "notif_per_s" in ratio:
        verdict = "meets" if ratio["notif_per_s"] >= AIM_RATIO else "BELOW"
        lines.append(
            f"pruning/baseline: notif/s {ratio['notif_per_s']:.2f}x  [{verdict} aim >= {AIM_RATIO}x], "
            f"p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x"
        )
    for p in phases:
        if p.phase != "pruning":
            continue
        total = sum(p.pruned.values())
        left = sum(seeded.prunable.values()) - total
        state = "every prunable row" if p.complete else f"INCOMPLETE: --max-prune-seconds reached, {left:,} left"
        done = (
            f"round over (SQLite: free pages given back) {p.prune_done_s} s after serving"
            if p.complete
            else "round not over"
        )
        lines.append(
            f"prune: {total:,} rows ({state}); first row {p.prune_started_s} s after the service served, "
            f"last {p.prune_seconds} s later; {done}"
        )
        lines.append("  by table: " + ", ".join(f"{t} {n:,}" for t, n in p.pruned.items()))
        if p.prune_seconds:
            lines.append(f"  {total / p.prune_seconds:,.0f} rows/s over the whole prune")
    for p in phases:
        size = f"database {p.phase}: {p.size_before_mb} MB before, {p.size_after_mb} MB after (the load's rows added)"
        if p.freelist_pages_after is not None:
            size += f", WAL checkpointed, {p.freelist_pages_after} free pages left"
        lines.append(size)
    for p in phases:
        lines.append(f"check {p.phase}: {p.check}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="seeded rows retention deletes")
    parser.add_argument("--duration", type=int, default=30, help="measured seconds of load per phase")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each measured run (0: none)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--batch-rows", type=int, default=500, help="CONTROLPLANE_RETENTION_BATCH_ROWS")
    parser.add_argument("--max-prune-seconds", type=float, default=600, help="give up waiting for the prune after")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installable")
    parser.add_argument("--keep", type=Path, help="SQLite: a directory for the seeded file, reused when it holds one")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.rows < 100 or args.duration < 1 or args.warmup < 0 or args.connections < 1:
        parser.error("--rows must be >= 100, --duration and --connections >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so servers are stopped as on Ctrl-C
    load_average = os.getloadavg()[0]
    wrk = find_wrk(args.loadgen)
    info = machine(wrk) | {"load_average": load_average, "commit": code_version()}
    progress(f"bench: {info['cpus']} CPUs, load average {load_average:.2f}, load from {info['load']}")
    now = datetime.now(UTC)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="cp-bench-prune-") as tmp:
        workdir = Path(tmp)
        if args.backend == "sqlite":
            directory = args.keep or workdir
            directory.mkdir(parents=True, exist_ok=True)
            seeded_file, seeded = seeded_sqlite(directory, args.rows, now)
            report_seed(seeded, seeded_file.stat().st_size)
            for name in ("baseline", "pruning"):
                database = workdir / f"{name}.db"
                shutil.copyfile(seeded_file, database)
                phases.append(run_phase(name, f"sqlite:///{database}", database, seeded, args, wrk, workdir))
                for leftover in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
                    leftover.unlink(missing_ok=True)
        else:
            for name in ("baseline", "pruning"):
                with postgresql_schema(args.rows, now, name) as (url, seeded):
                    report_seed(seeded, None)
                    phases.append(run_phase(name, url, None, seeded, args, wrk, workdir))
    base, pruning = phases
    ratio: dict[str, float] = {}
    if base.per_second and base.p50_ms and base.p99_ms:
        ratio = {
            "notif_per_s": round(pruning.per_second / base.per_second, 3),
            "p50": round(pruning.p50_ms / base.p50_ms, 3),
            "p99": round(pruning.p99_ms / base.p99_ms, 3),
        }
    passed = all(p.check_ok for p in phases)
    if args.json:
        config = {
            "backend": args.backend, "rows": args.rows, "duration_s": args.duration, "warmup_s": args.warmup,
            "connections": args.connections, "batch_rows": args.batch_rows, "interval_s": INTERVAL_SECONDS,
        }  # fmt: skip
        doc = {"machine": info, "config": config, "seeded": asdict(seeded), "phases": [asdict(p) for p in phases]}
        print(json.dumps({**doc, "ratios": ratio, "aim": AIM_RATIO, "passed": passed}, indent=2))
    else:
        print(
            f"ingest while pruning, {args.backend}, {args.duration}s at {args.connections} connections "
            f"(commit {info['commit']}, load average {load_average:.2f} at the start, load from {info['load']}):"
        )
        print(table(seeded, phases, ratio))
    if not passed:
        progress("bench: FAILED: a phase lost acknowledged alerts or rows it should keep, or answered none")
    return 0 if passed else 1


def report_seed(seeded: Seeded, size: int | None) -> None:
    rows = ", ".join(f"{t} {seeded.rows[t]:,} ({seeded.prunable[t]:,} prunable)" for t in TABLES)
    size_text = f", {size / 2**20:.0f} MB" if size is not None else ""
    progress(f"seeded in {seeded.seconds} s{size_text}: {rows}; prunable {sum(seeded.prunable.values()):,} in all")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except (RuntimeError, OSError) as exc:  # the service or the load generator failed
        progress(f"bench: error: {exc}")
        sys.exit(2)
