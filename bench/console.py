"""Owns the console benchmark: server time of the console's pages with 100,000 incidents and 1,000,000 alerts.

    .venv/bin/python bench/console.py [--alerts 1000000] [--incidents 100000] [--big 50000]
        [--requests 100] [--backend sqlite|postgresql|both] [--keep DIR] [--json]

The data is seeded in bulk into the real schema (`migrate.upgrade`, then executemany on SQLite and
COPY on PostgreSQL), 30 simulated days ending now: incidents of 1-18 alerts (about 9.5 on average)
of one (alertname, namespace) group, and one storm incident, still open, of `--big` alerts (about
four in five still firing) with one run of its rule and a suppressed execution per other alert, as
the guards leave them. 95% of the incidents are resolved (their alerts too), 3% open, 2%
acknowledged; severities critical / warning / info / error / none. About one incident in three
was handled by a shipped rule (`controlplane/defaults/rules`): an execution that succeeded, failed
or was suppressed, with its steps and audit rows. Every alert has its `alert.firing` audit row,
every incident `incident.opened` (and `incident.resolved`). PostgreSQL is analyzed afterwards, as
autovacuum would; SQLite is not, as the service never runs ANALYZE.

Then the app runs in-process with the shipped rules and its background work (workers, sweeps), a
console user logs in, and each page is requested `--requests` times in turn: the incident list
with each filter, a deep page (keyset cursor near the oldest), the storm incident's page and its
htmx refresh, the Rules page. Server time is measured in the process, around the ASGI app (request
in -> last byte of the body out), so the test client's own cost is left out. Each backend is
measured in a child process, whose peak RSS comes from wait4(). PostgreSQL: 127.0.0.1:5432,
database `test`, a schema of its own, dropped afterwards unless --keep. --keep DIR reuses (or
leaves) the SQLite file, and with it the PostgreSQL schema named after its sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Connection, Engine, Table, text  # noqa: E402

from controlplane.db import migrate  # noqa: E402
from controlplane.db.engine import make_engine  # noqa: E402
from controlplane.db.tables import alerts_t, audit_t, executions_t, incidents_t, links_t, steps_t  # noqa: E402

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DAYS = 30
TARGET_MS = 100.0
PASSWORD = "bench console password"
SESSION_SECRET = "bench-session-secret-0123456789abcdef"
NAMESPACES = 2000
SEVERITIES = [("critical", 20), ("warning", 60), ("info", 15), ("error", 4), ("none", 1)]
# (alertname, the shipped rule that acts on it, or None)
ALERTNAMES = [
    ("LangGraphHighErrorRate", "high-error-rate"),
    ("LangGraphHighLatency", "high-latency"),
    ("LangGraphCheckpointFailures", "checkpoint-failures"),
    ("LangGraphDatabaseConnectionsHigh", "resource-exhaustion"),
    ("LLMProviderErrors", "llm-provider-outage"),
    ("KubePodNotReady", None),
    ("NodeDiskPressure", None),
    ("TargetDown", None),
]
RULE_SHARE = 0.5  # of the incidents whose alertname a rule matches, those it acted on (the rest: before the rule)


# -- seeding -------------------------------------------------------------------------------------


class Writer:
    """Bulk rows into one table: executemany on SQLite (values as SQLAlchemy stores them), COPY on PostgreSQL."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"

    def value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            if self.sqlite:
                return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
            return value
        if isinstance(value, dict | list):
            return json.dumps(value, separators=(",", ":"))
        return value

    def write(self, table: Table, columns: list[str], rows: Iterable[tuple[Any, ...]]) -> int:
        count = 0
        if self.sqlite:
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join("?" for _ in columns)
            sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})'
            cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            chunk: list[tuple[Any, ...]] = []
            for row in rows:
                chunk.append(tuple(self.value(v) for v in row))
                if len(chunk) == 20_000:
                    cursor.executemany(sql, chunk)
                    count += len(chunk)
                    chunk = []
            cursor.executemany(sql, chunk)
            return count + len(chunk)
        names = ", ".join(f'"{c}"' for c in columns)
        cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(tuple(self.value(v) for v in row))
                count += 1
        return count


def weighted(rng: random.Random, choices: list[tuple[str, int]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def incident_sizes(rng: random.Random, incidents: int, alerts: int) -> list[int]:
    """Alerts per ordinary incident: 1 .. 2*mean-1 at random, nudged to add up to `alerts` exactly."""
    mean = alerts / incidents
    top = max(1, round(2 * mean - 1))
    sizes = [rng.randint(1, top) for _ in range(incidents)]
    diff = alerts - sum(sizes)
    i = 0
    while diff:
        j = i % incidents
        if diff > 0 and sizes[j] < 20:
            sizes[j] += 1
            diff -= 1
        elif diff < 0 and sizes[j] > 1:
            sizes[j] -= 1
            diff += 1
        i += 1
    return sizes


def seed(engine: Engine, *, incidents: int, alerts: int, big: int, now: datetime) -> dict[str, int]:
    """The whole history in one transaction per table family; returns the row counts and the storm incident's id."""
    migrate.upgrade(engine)
    rng = random.Random(17)
    start = now - timedelta(days=DAYS)
    sizes = incident_sizes(rng, incidents - 1, alerts - big)
    big_index = incidents - 20  # among the newest: on the first page of the list, as a storm in progress is
    sizes.insert(big_index, big)
    span = timedelta(days=DAYS) / incidents
    combos = len(ALERTNAMES) * NAMESPACES  # each unresolved incident its own key (open_key is unique)
    unresolved_keys = iter(rng.sample(range(combos), combos))

    plan = []  # (id, opened, status, alertname, namespace, severity, size, rule)
    for i, size in enumerate(sizes):
        opened = start + span * i + timedelta(seconds=rng.random() * 60)
        if i == big_index:
            status, (alertname, rule), namespace = "open", ALERTNAMES[0], "ns-storm"
        else:
            status = weighted(rng, [("resolved", 95), ("open", 3), ("acknowledged", 2)])
            if status == "resolved":
                alertname, rule = rng.choice(ALERTNAMES)
                namespace = f"ns{rng.randrange(NAMESPACES)}"
            else:
                combo = next(unresolved_keys)
                alertname, rule = ALERTNAMES[combo % len(ALERTNAMES)]
                namespace = f"ns{combo // len(ALERTNAMES)}"
        plan.append((i + 1, opened, status, alertname, namespace, weighted(rng, SEVERITIES), size, rule))

    def incident_rows() -> Iterator[tuple[Any, ...]]:
        for id_, opened, status, alertname, namespace, severity, size, _rule in plan:
            key = f'{{alertname="{alertname}",namespace="{namespace}"}}'
            updated = opened + timedelta(seconds=30 * size)
            resolved = updated + timedelta(minutes=5) if status == "resolved" else None
            acked = opened + timedelta(minutes=2) if status != "open" else None
            yield (
                id_, key, None if status == "resolved" else key, status, severity,
                f"{alertname} in {namespace}", {"alertname": alertname, "namespace": namespace},
                opened, updated, acked, resolved,
            )  # fmt: skip

    alert_ids: list[tuple[int, int, int]] = []  # per incident: (first alert id, count, incident id)

    def alert_rows() -> Iterator[tuple[Any, ...]]:
        next_id = 1
        for id_, opened, status, alertname, namespace, severity, size, _rule in plan:
            alert_ids.append((next_id, size, id_))
            for k in range(size):
                at = opened + timedelta(seconds=30 * k)
                firing = status != "resolved" and (id_ != plan[big_index][0] or rng.random() < 0.8)
                labels = {"alertname": alertname, "namespace": namespace, "severity": severity, "pod": f"p{next_id}"}
                yield (
                    next_id, f"{next_id:016x}", alertname, "firing" if firing else "resolved", labels,
                    {"summary": f"{alertname} in {namespace}", "runbook_url": "https://runbooks.example/x"},
                    at, None if firing else at + timedelta(minutes=5), "http://prometheus:9090/graph",
                    "controlplane", at, at + timedelta(minutes=1), 1 + k % 3,
                )  # fmt: skip
                next_id += 1

    def link_rows() -> Iterator[tuple[Any, ...]]:
        for (first, size, incident_id), entry in zip(alert_ids, plan, strict=True):
            for k in range(size):
                yield incident_id, first + k, entry[1] + timedelta(seconds=30 * k)

    executions: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    run_audits: list[tuple[Any, ...]] = []
    playbook = {"name": "bench", "steps": [{"action": "notify.log", "with": {"text": "x"}}]}

    def add_run(
        incident_id: int, alert_id: int, rule: str, key: str, at: datetime, status: str, guard: str | None
    ) -> None:
        execution_id = len(executions) + 1
        done = at + timedelta(minutes=3) if status in ("succeeded", "failed") else None
        outcome = {"succeeded": "resolved", "failed": "failed"}.get(status)
        executions.append((
            execution_id, rule, "bench", f"{alert_id}", key, incident_id, alert_id, status,
            "" if guard is None else f"suppressed by {guard}", False, playbook, {}, {"alert_id": alert_id},
            at, done or at, at if done else None, done, None, 0 if status == "suppressed" else 2,
            None, None, 0, None, None, guard, True, outcome, done, 1,
        ))  # fmt: skip
        if status == "suppressed":
            return
        for index, action in enumerate(("notify.log", "graph.canary")):
            failed = status == "failed" and index == 1
            steps.append((
                len(steps) + 1, execution_id, "forward", index, None, action, "failed" if failed else "succeeded",
                {"text": "x"}, {} if failed else {"ok": True}, "timeout" if failed else None, 1,
                f"{execution_id}:{index}", at + timedelta(seconds=index), at + timedelta(seconds=index + 1), 1000.0,
            ))  # fmt: skip
        for action in ("execution.created", f"execution.{status}"):
            run_audits.append((at, "controlplane", action, incident_id, execution_id, {"rule": rule}))

    counts: dict[str, int] = {}
    with engine.begin() as conn:
        w = Writer(conn)
        counts["incidents"] = w.write(
            incidents_t,
            ["id", "key", "open_key", "status", "severity", "title", "group_labels", "opened_at", "updated_at",
             "acknowledged_at", "resolved_at"],
            incident_rows(),
        )  # fmt: skip
        counts["alerts"] = w.write(
            alerts_t,
            ["id", "fingerprint", "alertname", "status", "labels", "annotations", "starts_at", "ends_at",
             "generator_url", "receiver", "first_received_at", "last_received_at", "receive_count"],
            alert_rows(),
        )  # fmt: skip
        counts["incident_alerts"] = w.write(links_t, ["incident_id", "alert_id", "attached_at"], link_rows())

        for (first, size, incident_id), entry in zip(alert_ids, plan, strict=True):
            _id, opened, status, alertname, namespace, _sev, _size, rule = entry
            if rule is None:
                continue
            key = f'{{alertname="{alertname}",namespace="{namespace}"}}'
            if incident_id == plan[big_index][0]:
                add_run(incident_id, first, rule, key, opened, "succeeded", None)
                for k in range(1, size):
                    guard = "cooldown" if k % 10 else "active"
                    add_run(incident_id, first + k, rule, key, opened + timedelta(seconds=30 * k), "suppressed", guard)
                continue
            if rng.random() >= RULE_SHARE:
                continue
            outcome = weighted(rng, [("succeeded", 70), ("failed", 10), ("suppressed", 20)])
            add_run(incident_id, first, rule, key, opened, outcome, "cooldown" if outcome == "suppressed" else None)
        counts["executions"] = w.write(
            executions_t,
            ["id", "rule_name", "playbook_name", "trigger_key", "guard_key", "incident_id", "alert_id", "status",
             "reason", "dry_run", "playbook", "params", "context", "created_at", "updated_at", "started_at",
             "finished_at", "wake_at", "current_step", "lease_owner", "lease_expires_at", "claims", "decided_by",
             "decided_at", "guard", "page_on_failure", "outcome", "outcome_at", "approvals_required"],
            executions,
        )  # fmt: skip
        counts["execution_steps"] = w.write(
            steps_t,
            ["id", "execution_id", "phase", "index", "step_id", "action", "status", "inputs", "output", "error",
             "attempts", "idempotency_key", "started_at", "finished_at", "duration_ms"],
            steps,
        )  # fmt: skip

        def audit_rows() -> Iterator[tuple[Any, ...]]:
            for (first, size, incident_id), entry in zip(alert_ids, plan, strict=True):
                opened, status = entry[1], entry[2]
                yield opened, "controlplane", "incident.opened", incident_id, None, {"key": "k"}
                for k in range(size):
                    detail = {"alert_id": first + k, "fingerprint": f"{first + k:016x}"}
                    yield opened + timedelta(seconds=30 * k), "alertmanager", "alert.firing", incident_id, None, detail
                if status == "resolved":
                    yield opened + timedelta(seconds=30 * size, minutes=5), "alertmanager", "incident.resolved", \
                        incident_id, None, {}  # fmt: skip
            yield from run_audits

        counts["audit_events"] = w.write(
            audit_t, ["at", "actor", "action", "incident_id", "execution_id", "detail"], audit_rows()
        )
        if conn.dialect.name == "postgresql":
            for table in ("incidents", "alerts", "executions", "execution_steps"):
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # The statistics (and visibility map) autovacuum gives a live PostgreSQL; the service never runs
        # ANALYZE on SQLite, so its planner works without statistics there, as here.
        if conn.dialect.name == "postgresql":
            conn.execute(
                text("VACUUM ANALYZE incidents, alerts, incident_alerts, executions, execution_steps, audit_events")
            )
    counts["big_incident"] = plan[big_index][0]
    return counts


# -- measuring -----------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class ServerTimer:
    """ASGI wrapper: each HTTP request's time from entering the app to its last body byte, by path+query."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        self.last: float | None = None

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.last = time.perf_counter() - began

        await self.app(scope, receive, timed_send)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(url: str, requests: int, big_incident: int) -> dict[str, Any]:
    """In this process: the app on `url`, logged in; each page `requests` times in turn."""
    from argon2 import PasswordHasher
    from fastapi.testclient import TestClient

    from controlplane.app import create_app
    from controlplane.config import Settings

    password_hash = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    settings = Settings(
        database_url=url,
        console_users=[{"name": "oncall", "role": "operator", "password_hash": password_hash}],
        session_secret=SESSION_SECRET,
        log_level="warning",
        prometheus_url="http://127.0.0.1:9",  # no metric rule reaches anything
    )
    engine = make_engine(url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM incidents")).scalar_one()

        def nth_newest(n: int) -> int:
            return int(
                conn.execute(text("SELECT id FROM incidents ORDER BY id DESC LIMIT 1 OFFSET :n"), {"n": n}).scalar_one()
            )

        deep, middle = nth_newest(int(count * 0.95)), nth_newest(count // 2)  # keyset cursor: a page in the last tenth
    engine.dispose()
    timer = ServerTimer(create_app(settings))
    pages = {
        "list": "/incidents",
        "list status=open": "/incidents?status=open",
        "list status=open+acknowledged": "/incidents?status=open&status=acknowledged",
        "list status=resolved": "/incidents?status=resolved",
        "list severity=critical": "/incidents?severity=critical",
        "list severity=none (rare)": "/incidents?severity=none",
        "list q=ns-storm (one match)": "/incidents?q=ns-storm",
        "list q=nomatch": "/incidents?q=no-such-incident",
        "list automation=failed": "/incidents?automation=failed",
        "list all filters": "/incidents?status=resolved&severity=warning&q=Latency&automation=failed",
        "list deep page": f"/incidents?before={deep}",
        "list deep page, resolved": f"/incidents?status=resolved&before={deep}",
        "list htmx refresh": ("/incidents?status=open", {"HX-Request": "true"}),
        f"incident #{big_incident} (storm)": f"/incidents/{big_incident}",
        "incident storm, htmx refresh": (f"/incidents/{big_incident}", {"HX-Request": "true"}),
        "incident small": f"/incidents/{middle}",
        "rules": "/rules",
    }
    results: dict[str, dict[str, float]] = {}
    with TestClient(timer, base_url="http://testserver") as client:
        login = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
        assert token, "no CSRF token on /login"
        answer = client.post(
            "/login",
            data={"csrf_token": token.group(1), "username": "oncall", "password": PASSWORD},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        for name, target in pages.items():
            path, headers = target if isinstance(target, tuple) else (target, {})
            times: list[float] = []
            for i in range(requests + 2):
                response = client.get(path, headers=headers)
                assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
                assert timer.last is not None
                if i >= 2:  # the first two warm caches and prepared statements
                    times.append(timer.last * 1000)
            results[name] = {
                "path": path,  # type: ignore[dict-item]
                "p50": statistics.median(times),
                "p99": percentile(times, 0.99),
                "max": max(times),
                "bytes": len(response.content),
            }
    return results


def run_child(url: str, requests: int, big_incident: int) -> tuple[dict[str, Any], float]:
    """measure() in a child process: its figures and its peak RSS in MB."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            sys.executable, __file__, "--child", url, "--requests", str(requests), "--big-id", str(big_incident),
            "--out", out.name,
        ]  # fmt: skip
        child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        body = Path(out.name).read_text()
    if child.returncode != 0:
        raise SystemExit(f"measuring {url} failed ({child.returncode})")
    return json.loads(body), usage.ru_maxrss / 1024


# -- the command ---------------------------------------------------------------------------------


def prepare_sqlite(directory: Path, args: argparse.Namespace, now: datetime) -> tuple[str, dict[str, int]]:
    database = directory / f"console-{args.incidents}-{args.alerts}-{args.big}.db"
    url = f"sqlite:///{database}"
    counts_file = database.with_suffix(".json")
    if database.exists() and counts_file.exists():
        return url, json.loads(counts_file.read_text())
    database.unlink(missing_ok=True)
    engine = make_engine(url)
    began = time.perf_counter()
    counts = seed(engine, incidents=args.incidents, alerts=args.alerts, big=args.big, now=now)
    engine.dispose()
    counts["seed_seconds"] = round(time.perf_counter() - began, 1)
    counts_file.write_text(json.dumps(counts))
    return url, counts


def prepare_postgresql(args: argparse.Namespace, now: datetime) -> tuple[str, dict[str, int], Callable[[], None]]:
    schema = f"cp_bench_console_{args.incidents}_{args.alerts}_{args.big}"
    if not args.keep:
        schema += f"_{os.getpid()}"
    admin = make_engine(PG)
    url = f"{PG}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first()
        counts_row = None
        if exists:
            counts_row = conn.execute(
                text("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :s"), {"s": schema}
            ).scalar()
        if exists and not counts_row:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        if not exists or not counts_row:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        if not args.keep:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    if counts_row:
        return url, json.loads(counts_row), drop
    engine = make_engine(url)
    began = time.perf_counter()
    try:
        counts = seed(engine, incidents=args.incidents, alerts=args.alerts, big=args.big, now=now)
    except BaseException:
        engine.dispose()
        drop()
        raise
    engine.dispose()
    counts["seed_seconds"] = round(time.perf_counter() - began, 1)
    with admin.begin() as conn:
        conn.execute(text(f"COMMENT ON SCHEMA \"{schema}\" IS '{json.dumps(counts)}'"))
    return url, counts, drop


def code_version() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "controlplane"], capture_output=True, text=True, cwd=ROOT)
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=1_000_000)
    parser.add_argument("--incidents", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=50_000, help="alerts of the storm incident")
    parser.add_argument("--requests", type=int, default=100, help="per page")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--keep", type=Path, help="a directory for the SQLite database: reused when it holds one")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--big-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps(measure(args.child, args.requests, args.big_id)))
        return 0
    if args.big >= args.alerts or args.incidents < 100:
        parser.error("--big must be below --alerts, and --incidents at least 100")

    now = datetime.now(UTC)
    directory = args.keep or Path(tempfile.mkdtemp(prefix="cp-bench-console-"))
    directory.mkdir(parents=True, exist_ok=True)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    report: dict[str, Any] = {"commit": code_version(), "load_average": os.getloadavg()[0], "backends": {}}
    for backend in backends:
        print(f"{backend}: seeding {args.incidents:,} incidents, {args.alerts:,} alerts ...", file=sys.stderr)
        drop: Callable[[], None] = lambda: None  # noqa: E731
        if backend == "sqlite":
            url, counts = prepare_sqlite(directory, args, now)
        else:
            url, counts, drop = prepare_postgresql(args, now)
        print(f"  {counts}", file=sys.stderr)
        try:
            pages, rss_mb = run_child(url, args.requests, counts["big_incident"])
        finally:
            drop()
        worst = max(page["p99"] for page in pages.values())
        report["backends"][backend] = {"counts": counts, "pages": pages, "peak_rss_mb": rss_mb, "worst_p99": worst}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"console pages, server time over {args.requests} requests each (commit {report['commit']}, "
          f"load average {report['load_average']:.2f} at the start):")  # fmt: skip
    for backend, found in report["backends"].items():
        c = found["counts"]
        print(f"\n{backend}: {c['incidents']:,} incidents, {c['alerts']:,} alerts, {c['executions']:,} executions, "
              f"{c['audit_events']:,} audit rows (seeded in {c.get('seed_seconds', '?')} s)")  # fmt: skip
        print(f"  {'page':38} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'KB':>6}")
        for name, page in found["pages"].items():
            flag = "" if page["p99"] < TARGET_MS else "  BELOW target"
            figures = f"{page['p50']:8.1f} {page['p99']:8.1f} {page['max']:8.1f} {page['bytes'] / 1024:6.0f}"
            print(f"  {name:38} {figures}{flag}")
        verdict = "met" if found["worst_p99"] < TARGET_MS else "BELOW"
        print(f"  worst p99 {found['worst_p99']:.1f} ms  [target < {TARGET_MS:.0f} ms: {verdict}]")
        rss = found["peak_rss_mb"]
        print(f"  peak RSS of the app process: {rss:.0f} MB  [aim < 150 MB: {'met' if rss < 150 else 'ABOVE'}]")
    return 0  # a page that failed stops the run above; a target missed is reported, as bench/replay.py does


if __name__ == "__main__":
    raise SystemExit(main())
