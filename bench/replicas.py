"""Owns the replica benchmark: new alerts/s that 1 and 2 `controlplane serve` replicas on one PostgreSQL acknowledge.

    .venv/bin/python bench/replicas.py [--replicas 1,2] [--scenario both] [--duration 10] [--warmup 2]
        [--connections 32] [--alerts-per-notification 10] [--incidents 50] [--loadgen auto] [--json]

For each scenario and replica count N: a fresh schema in the local PostgreSQL (database `test`, dropped
afterwards), N replicas of `python -m controlplane serve` on it (own instance ids and loopback ports,
the shipped default rules), ready on /ready, and one load process per replica (wrk + bench/ingest.lua, else
bench/loadgen.py), the connections split between them. Every alert is a new episode (new fingerprint
and startsAt). A notification holds --alerts-per-notification alerts as Alertmanager groups them: one
namespace and service, distinct fingerprints and instances. Successive notifications cycle over
--incidents namespace/service values, so with the default grouping (alertname, namespace) a group
commit touches several incidents.
- `plain`: the alerts match no rule: each stores an alert, an incident link and an alert.firing audit row.
- `rule`: the alerts match the shipped rule high-error-rate, so each also records an execution (the
  guards suppress nearly all of them).
A warm-up, then the measured run; only 2xx answers count, new alerts/s = 2xx notifications/s x alerts
per notification. With several load processes, p50/p99 merge their percentile grids. Then the replicas
are stopped (SIGTERM, wait) and the database must hold every acknowledged alert exactly once (between
the acknowledged and the sent count, per load process, warm-up included; no duplicate episode, no
notification stored in part), each linked to an incident, with one alert.firing audit row and (`rule`)
one execution; a failed check exits 1. The verdict: 2 replicas >= 2,000 new alerts/s in aggregate, and
their ratio to one replica. The replicas, PostgreSQL and the load share the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import itertools
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest import find_wrk  # bench/ingest.py: installs the Debian package when missing and root
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SAMPLE = ROOT / "tests" / "data" / "alertmanager_firing.json"
WEBHOOK_PATH = "/api/v1/alerts/alertmanager"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCENARIOS = ("plain", "rule")
RULE_ALERTNAME = "LangGraphHighErrorRate"  # with severity critical: the shipped rule high-error-rate
PLAIN_ALERTNAME = "BenchIngestNoRule"  # no shipped rule matches it
TARGET_ALERTS_PER_S = 2000.0
READY_SECONDS, STOP_SECONDS = 60.0, 30.0


@dataclass
class Load:
    """What one load process saw; latencies cover every answered request."""

    replica: int
    prefix: str  # every fingerprint it sent starts with this
    connections: int
    sent: int
    ok: int
    non2xx: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    quantiles_us: list[tuple[float, float]]  # (percentile, latency), 0 = min, 100 = max

    @property
    def answered(self) -> int:
        return self.ok + self.non2xx


@dataclass
class Replica:
    index: int
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop: str = ""  # how it ended: "exit 0", "killed after 30 s", ...

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Result:
    scenario: str
    replicas: int
    notifications_per_s: float  # 2xx notifications per second of the measured run, all replicas
    alerts_per_s: float  # new alerts in them per second
    p50_ms: float
    p99_ms: float
    ok: int
    non2xx: int
    errors: int  # socket errors and timeouts
    per_replica_notifications_per_s: list[float]
    mean_batch: list[float]  # notifications per ingest transaction, per replica (warm-up included)
    incidents: int  # incidents the run's alerts joined
    executions: dict[str, int]  # the run's alerts' executions by status
    stopped: list[str]
    server_log: dict[str, int]  # warning/error lines of the replicas' logs, by level and event
    check_ok: bool
    check: str
    loads: list[dict[str, Any]] = field(default_factory=list)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def payload(scenario: str, alerts: int) -> str:
    """One notification of `alerts` alerts of one group, with the placeholders the load processes fill.

    @FINGERPRINT@ is unique per request, so "@FINGERPRINT@-k" is per alert; @GROUP@ picks the namespace.
    """
    doc = json.loads(SAMPLE.read_text())
    sample = doc["alerts"][0]
    alertname = RULE_ALERTNAME if scenario == "rule" else PLAIN_ALERTNAME
    group = {"alertname": alertname, "namespace": "bench-ns-@GROUP@"}
    doc["alerts"] = []
    for k in range(alerts):
        alert = copy.deepcopy(sample)
        alert["labels"] |= group | {"service": "bench-svc-@GROUP@", "instance": f"langgraph-{k}:8000"}
        alert["fingerprint"] = f"@FINGERPRINT@-{k}"
        alert["startsAt"] = "2026-11-24T08:00:00.@MICROS@Z"
        doc["alerts"].append(alert)
    doc["groupLabels"] = group
    doc["commonLabels"] = {key: v for key, v in doc["alerts"][0]["labels"].items() if key != "instance"}
    doc["groupKey"] = f'{{}}:{{alertname="{alertname}", namespace="bench-ns-@GROUP@"}}'
    return json.dumps(doc, separators=(",", ":"))


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports: all sockets stay bound until each has its port."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def schema_url(base: str, schema: str) -> str:
    return make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)


@contextlib.contextmanager
def fresh_schema(admin: Engine, keep: bool) -> Iterator[str]:
    schema = f"cp_bench_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        if keep:
            progress(f"  kept schema {schema}")
        else:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def ready(replica: Replica) -> bool:
    with (
        contextlib.suppress(OSError),  # urllib's HTTPError (a 503 while migrating) is an OSError too
        urllib.request.urlopen(replica.base + "/ready", timeout=1) as response,
    ):
        return bool(response.status == 200)
    return False


def stop(replicas: Sequence[Replica]) -> None:
    """SIGTERM all at once (graceful: each commits what its writer holds), then wait; kill what hangs."""
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for r in replicas:
        try:
            code = r.proc.wait(max(0.1, deadline - time.monotonic()))
            r.stop = r.stop or f"exit {code}"
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
            r.stop = f"killed after {STOP_SECONDS:g} s"


@contextlib.contextmanager
def serving(
    n: int,
    url: str,
    name: str,
    run_dir: Path,
    *,
    rules_dir: Path = ROOT / "controlplane" / "defaults" / "rules",
    env: Mapping[str, str] | None = None,
) -> Iterator[list[Replica]]:
    """n replicas on one database, ready; stopped when the block ends (also on error or Ctrl-C).

    Each logs to run_dir/replica-<i>.log; `env` adds settings (CONTROLPLANE_*) to the defaults here.
    """
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    replicas: list[Replica] = []
    try:
        for index, port in enumerate(free_ports(n)):
            log_path = run_dir / f"replica-{index}.log"
            env_i = base_env | {
                "CONTROLPLANE_DATABASE_URL": url,
                "CONTROLPLANE_RULES_DIR": str(rules_dir),
                "CONTROLPLANE_LOG_LEVEL": "warning",
                "CONTROLPLANE_LISTEN_HOST": "127.0.0.1",
                "CONTROLPLANE_LISTEN_PORT": str(port),
                "CONTROLPLANE_INSTANCE_ID": f"{name}-{index}",
                **(env or {}),
            }
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "controlplane", "serve"],
                    env=env_i,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us only: we stop it, gracefully
                )
            replicas.append(Replica(index, port, proc, log_path))
        deadline = time.monotonic() + READY_SECONDS
        waiting = list(replicas)
        while waiting:
            for r in waiting:
                if r.proc.poll() is not None:
                    raise RuntimeError(f"replica {r.index} exited {r.proc.returncode}:\n{tail(r.log_path)}")
            waiting = [r for r in waiting if not ready(r)]
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(
                    f"replica {waiting[0].index} not ready in {READY_SECONDS:g}s:\n{tail(waiting[0].log_path)}"
                )
            time.sleep(0.1 if waiting else 0)
        yield replicas
    finally:
        stop(replicas)


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def load_command(
    wrk: str | None, url: str, body: Path, prefix: str, seconds: int, conns: int, groups: int
) -> list[str]:
    if wrk is not None:
        script = str(BENCH / "ingest.lua")
        opts = [f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script]
        return [wrk, "-t1", *opts, url, "--", str(body), "unique", prefix, f"groups={groups}", "quantiles"]
    loadgen = [sys.executable, str(BENCH / "loadgen.py"), url, str(body), "unique", prefix]
    return [*loadgen, "--duration", str(seconds), "--connections", str(conns), "--groups", str(groups), "--quantiles"]


def run_loads(
    wrk: str | None, replicas: Sequence[Replica], body: Path, phase: str, seconds: int, args: argparse.Namespace
) -> list[Load]:
    """One load process per replica, all at once; each gets its share of the connections and its own prefix."""
    started: list[tuple[Replica, str, int, subprocess.Popen[str]]] = []
    try:
        for r, conns in zip(replicas, split(args.connections, len(replicas)), strict=True):
            prefix = f"{phase}{r.index}."  # the generators append thread-counter, the payload "-k"
            cmd = load_command(wrk, r.base + WEBHOOK_PATH, body, prefix, seconds, conns, args.incidents)
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            started.append((r, prefix, conns, proc))
        loads = []
        for r, prefix, conns, proc in started:
            out, err = proc.communicate(timeout=seconds + 60)
            line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
            if proc.returncode != 0 or line is None:
                raise RuntimeError(f"load generator failed (exit {proc.returncode}): {err.strip() or out}")
            d = json.loads(line.removeprefix("BENCH_JSON "))
            grid = [(float(p), float(us)) for p, us in d.get("quantiles_us", [])]
            loads.append(
                Load(
                    r.index,
                    prefix,
                    conns,
                    d["sent"],
                    d["ok"],
                    d["non2xx"],
                    d["errors"],
                    d["duration_us"] / 1e6,
                    d["p50_us"] / 1e3,
                    d["p99_us"] / 1e3,
                    grid,
                )
            )
        return loads
    finally:
        for *_, proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _cdf(grid: list[tuple[float, float]], x: float) -> float:
    """Percent of requests at or under x, interpolated linearly between the grid's points."""
    if x < grid[0][1]:
        return 0.0
    for (p0, v0), (p1, v1) in itertools.pairwise(grid):
        if x < v1:  # v0 <= x here
            return p0 + (p1 - p0) * (x - v0) / (v1 - v0)
    return 100.0


def merged_percentile_ms(loads: Sequence[Load], q: float) -> float:
    """The q-th percentile of all loads' latencies together: their CDFs weighted by answered requests."""
    if len(loads) == 1:
        return loads[0].p50_ms if q == 50 else loads[0].p99_ms if q == 99 else float("nan")
    parts = [(load.answered, load.quantiles_us) for load in loads if load.answered and load.quantiles_us]
    if not parts:
        return 0.0
    total = sum(weight for weight, _ in parts)
    xs = sorted({v for _, grid in parts for _, v in grid})
    prev_x, prev_f = xs[0], 0.0
    for x in xs:
        f = sum(weight * _cdf(grid, x) for weight, grid in parts) / total
        if f >= q:
            return (prev_x + (x - prev_x) * (q - prev_f) / (f - prev_f) if f > prev_f else x) / 1e3
        prev_x, prev_f = x, f
    return xs[-1] / 1e3


def scrape_mean_batch(replica: Replica) -> float:
    """Mean notifications per ingest transaction, from the replica's /metrics (0 if unreadable)."""
    try:
        with urllib.request.urlopen(replica.base + "/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return 0.0
    values = {}
    for line in lines:
        name, _, value = line.partition(" ")
        if name in ("controlplane_ingest_batch_size_sum", "controlplane_ingest_batch_size_count"):
            values[name.rsplit("_", 1)[1]] = float(value)
    return round(values["sum"] / values["count"], 1) if values.get("count") else 0.0


def server_log_summary(replicas: Sequence[Replica]) -> dict[str, int]:
    """Warning and error lines by level and event; lines that are not JSON log events (tracebacks) as "other"."""
    seen: Counter[str] = Counter()
    for r in replicas:
        for line in r.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                seen["other"] += bool(line.strip())
                continue
            if isinstance(event, dict):
                seen[f"{event.get('level', '?')} {str(event.get('event', '?'))[:100]}"] += 1
    return dict(seen.most_common())


# The run's alerts: those whose fingerprint starts with one of its load processes' prefixes.
RUN_ALERTS = """
    WITH run AS (
        SELECT id, fingerprint, starts_at, substring(fingerprint from '^[^.]*[.]') AS prefix,
               regexp_replace(fingerprint, '-[0-9]+$', '') AS notification
        FROM alerts WHERE fingerprint LIKE ANY (:patterns)
    )
"""
COUNTS = {
    "stored": "SELECT count(*) FROM run",
    "episodes": "SELECT count(DISTINCT (fingerprint, starts_at)) FROM run",
    "partial": "SELECT count(*) FROM (SELECT 1 FROM run GROUP BY notification HAVING count(*) <> :k) AS p",
    "unlinked": "SELECT count(*) FROM run WHERE NOT EXISTS (SELECT FROM incident_alerts l WHERE l.alert_id = run.id)",
    "incidents": "SELECT count(DISTINCT l.incident_id) FROM run JOIN incident_alerts l ON l.alert_id = run.id",
    "audits": "SELECT count(*) FROM audit_events WHERE action = 'alert.firing'"
    " AND detail->>'fingerprint' LIKE ANY (:patterns)",
    "unaudited": "SELECT count(*) FROM run WHERE NOT EXISTS (SELECT FROM audit_events e"
    " WHERE e.action = 'alert.firing' AND e.detail->>'fingerprint' = run.fingerprint)",
    "unexecuted": "SELECT count(*) FROM run WHERE NOT EXISTS (SELECT FROM executions e WHERE e.alert_id = run.id)",
}
BY_PREFIX = "SELECT prefix, count(*) FROM run GROUP BY prefix"
EXECUTIONS = "SELECT e.status, count(*) FROM executions e JOIN run ON run.id = e.alert_id GROUP BY 1 ORDER BY 2 DESC"


def verify(url: str, scenario: str, loads: Sequence[Load], k: int) -> tuple[bool, str, dict[str, Any]]:
    """Every acknowledged alert stored exactly once, whole notifications, linked, audited (and with its execution).

    Per load process, its prefix's alerts lie between its 2xx and its sent notifications (times k):
    wrk stops with requests in flight, which may or may not have been committed.
    """
    prefixes = sorted({load.prefix for load in loads})
    params = {"patterns": [p + "%" for p in prefixes], "k": k}
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            c = {name: int(conn.execute(text(RUN_ALERTS + sql), params).scalar_one()) for name, sql in COUNTS.items()}
            by_prefix = {row[0]: int(row[1]) for row in conn.execute(text(RUN_ALERTS + BY_PREFIX), params)}
            executions = {row[0]: int(row[1]) for row in conn.execute(text(RUN_ALERTS + EXECUTIONS), params)}
    finally:
        engine.dispose()
    stored, executed = c["stored"], sum(executions.values())
    failures = []
    for load in loads:
        got = by_prefix.get(load.prefix, 0)
        if not load.ok * k <= got <= load.sent * k:
            failures.append(f"{load.prefix}* {got} alerts outside [acked {load.ok * k}, sent {load.sent * k}]")
    if stored != c["episodes"]:
        failures.append(f"{stored - c['episodes']} duplicate episodes")
    for name, what in (("partial", "notifications stored in part"), ("unlinked", "alerts without incident")):
        if c[name]:
            failures.append(f"{c[name]} {what}")
    if c["audits"] != stored or c["unaudited"]:
        failures.append(f"{c['audits']} alert.firing audits for {stored} alerts, {c['unaudited']} alerts without one")
    if scenario == "rule" and (executed != stored or c["unexecuted"]):
        failures.append(f"{executed} executions for {stored} alerts, {c['unexecuted']} alerts without one")
    if scenario == "plain" and executed:
        failures.append(f"{executed} executions for alerts that match no rule")
    acked, sent = sum(load.ok for load in loads) * k, sum(load.sent for load in loads) * k
    summary = (
        f"alerts {stored} in [acked {acked}, sent {sent}], {stored - c['episodes']} duplicates,"
        f" {c['partial']} partial notifications, {stored - c['unlinked']} linked to {c['incidents']} incidents,"
        f" {c['audits']} alert.firing audits, {executed} executions"
        + (f" ({', '.join(f'{n} {status}' for status, n in executions.items())})" if executions else "")
    )
    check = f"ok: {summary}" if not failures else f"FAILED: {'; '.join(failures)} ({summary})"
    return not failures, check, {"incidents": c["incidents"], "executions": executions}


def bench_one(scenario: str, n: int, args: argparse.Namespace, wrk: str | None, admin: Engine, workdir: Path) -> Result:
    run_dir = workdir / f"{scenario}-{n}"
    run_dir.mkdir()
    body = run_dir / "body.json"
    body.write_text(payload(scenario, args.alerts_per_notification))
    progress(
        f"{scenario}/{n} replica(s): warm-up {args.warmup}s, then {args.duration}s at {args.connections} connections"
        f" ({'/'.join(map(str, split(args.connections, n)))})"
    )
    with fresh_schema(admin, args.keep_schema) as schema:
        url = schema_url(args.database_url, schema)
        with serving(n, url, f"bench-{scenario}-{n}", run_dir) as replicas:
            loads = run_loads(wrk, replicas, body, "w", args.warmup, args) if args.warmup else []
            measured = run_loads(wrk, replicas, body, "m", args.duration, args)
            mean_batch = [scrape_mean_batch(r) for r in replicas]
        loads += measured
        check_ok, check, counts = verify(url, scenario, loads, args.alerts_per_notification)
    per_replica = [round(load.ok / load.duration_s, 1) for load in measured]
    per_second = sum(per_replica)
    ok = sum(load.ok for load in measured)
    result = Result(
        scenario=scenario,
        replicas=n,
        notifications_per_s=round(per_second, 1),
        alerts_per_s=round(per_second * args.alerts_per_notification, 1),
        p50_ms=round(merged_percentile_ms(measured, 50), 2),
        p99_ms=round(merged_percentile_ms(measured, 99), 2),
        ok=ok,
        non2xx=sum(load.non2xx for load in measured),
        errors=sum(load.errors for load in measured),
        per_replica_notifications_per_s=per_replica,
        mean_batch=mean_batch,
        incidents=counts["incidents"],
        executions=counts["executions"],
        stopped=[r.stop for r in replicas],
        server_log=server_log_summary(replicas),
        check_ok=check_ok and ok > 0,
        check=check if ok > 0 else f"FAILED: no 2xx in the measured run; {check}",
        loads=[{k: v for k, v in asdict(load).items() if k != "quantiles_us"} for load in loads],
    )
    progress(
        f"  {result.alerts_per_s:.0f} new alerts/s ({result.notifications_per_s:.0f} notifications/s:"
        f" {' + '.join(f'{x:.0f}' for x in per_replica)}), p99 {result.p99_ms:.1f} ms, mean batch {mean_batch},"
        f" stopped {', '.join(result.stopped)}"
    )
    progress(f"  check {result.check}")
    if result.server_log:
        progress(f"  server log: {result.server_log}")
    return result


def ratios(results: Sequence[Result]) -> dict[str, float]:
    """Per scenario: the most replicas' new alerts/s over one replica's."""
    out = {}
    for scenario in SCENARIOS:
        by_n = {r.replicas: r.alerts_per_s for r in results if r.scenario == scenario}
        if 1 in by_n and len(by_n) > 1 and by_n[1]:
            out[scenario] = round(by_n[max(by_n)] / by_n[1], 3)
    return out


def verdicts(results: Sequence[Result], ratio: dict[str, float]) -> list[str]:
    lines = []
    for scenario in SCENARIOS:
        runs = [r for r in results if r.scenario == scenario]
        if not runs:
            continue
        top = max(runs, key=lambda r: r.replicas)
        met = "meets" if top.alerts_per_s >= TARGET_ALERTS_PER_S else "BELOW"
        scale = f"{top.replicas} replicas / 1 = {ratio[scenario]:.2f}x, " if scenario in ratio else ""
        lines.append(
            f"{scenario}: {scale}{top.replicas} replica(s): {top.alerts_per_s:.0f} new alerts/s"
            f"  [{met} target >= {TARGET_ALERTS_PER_S:.0f} new alerts/s aggregate]"
        )
    return lines


def table(results: Sequence[Result], ratio: dict[str, float]) -> str:
    head = (
        f"{'scenario':<9}{'replicas':>8}{'notif/s':>9}{'alerts/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'2xx':>8}{'non-2xx':>8}{'errors':>7}"
    )
    lines = [head + "  check", "-" * (len(head) + 60)]
    for r in results:
        lines.append(
            f"{r.scenario:<9}{r.replicas:>8}{r.notifications_per_s:>9.0f}{r.alerts_per_s:>10.0f}{r.p50_ms:>8.1f}"
            f"{r.p99_ms:>8.1f}{r.ok:>8}{r.non2xx:>8}{r.errors:>7}  {r.check}"
        )
    return "\n".join([*lines, "", *verdicts(results, ratio)])


def machine(wrk: str | None, admin: Engine) -> dict[str, Any]:
    loader = "python bench/loadgen.py"
    if wrk is not None:
        version = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False).stdout
        loader = version.split(" [")[0].strip() or "wrk"
    with admin.connect() as conn:
        pg = {
            name: conn.execute(text(f"SHOW {name}")).scalar_one() for name in ("server_version", "synchronous_commit")
        }
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": pg["server_version"],
        "synchronous_commit": pg["synchronous_commit"],
        "load": loader,
        "code": code_version(),
    }


def code_version() -> str:
    """The commit the replicas run, and whether controlplane/ differs from it (the tree is shared)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return out.stdout.rstrip()  # porcelain lines start with a space

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "controlplane").splitlines() if line.strip()]
    if not changed:
        return head
    # Tells runs apart while someone edits those files: the same names can hold different code.
    digest = hashlib.sha256(git("diff", "HEAD", "--", "controlplane").encode()).hexdigest()[:8]
    return f"{head} + uncommitted changes (diff {digest}) to {', '.join(changed)}"


def command_line() -> str:
    python = sys.executable
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(python)
        python = relative if not relative.startswith("..") else python
    return shlex.join([python, *sys.argv])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2", help="comma-separated replica counts, e.g. 1,2")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both")
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per scenario and replica count")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each measured run (0: none)")
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections in all, split over replicas"
    )
    parser.add_argument("--alerts-per-notification", type=int, default=10, help="alerts in each notification")
    parser.add_argument("--incidents", type=int, default=50, help="namespace/service values notifications cycle over")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installable")
    parser.add_argument("--database-url", default=PG, help="PostgreSQL to create the run's schemas in")
    parser.add_argument("--keep-schema", action="store_true", help="leave each run's schema for inspection")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        args.replica_counts = [int(x) for x in args.replicas.split(",") if x.strip()]
    except ValueError:
        parser.error("--replicas: comma-separated integers, e.g. 1,2")
    if not args.replica_counts or min(args.replica_counts) < 1:
        parser.error("--replicas: at least one count, each >= 1")
    if args.connections < max(args.replica_counts):
        parser.error("--connections must be at least the largest replica count")
    if args.duration < 1 or args.warmup < 0 or args.alerts_per_notification < 1 or args.incidents < 1:
        parser.error("--duration, --alerts-per-notification and --incidents must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so replicas and schemas are cleaned up
    command = command_line()
    wrk = find_wrk(args.loadgen)
    admin = create_engine(args.database_url)
    try:
        info = machine(wrk, admin)
        progress(
            f"bench: {info['cpus']} CPUs, load average {' '.join(map(str, info['load_average']))} (1/5/15 min),"
            f" Python {info['python']}, PostgreSQL {info['postgresql']}"
            f" (synchronous_commit={info['synchronous_commit']}),"
            f" load from {info['load']}"
        )
        progress(f"command: {command}")
        progress(f"code: {info['code']}")
        scenarios = SCENARIOS if args.scenario == "both" else (args.scenario,)
        with tempfile.TemporaryDirectory(prefix="cp-bench-replicas-") as tmp:
            results = [bench_one(s, n, args, wrk, admin, Path(tmp)) for s in scenarios for n in args.replica_counts]
    finally:
        admin.dispose()
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    ratio = ratios(results)
    passed = all(r.check_ok for r in results)
    if args.json:
        config = {
            "replicas": args.replica_counts,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "alerts_per_notification": args.alerts_per_notification,
            "incidents": args.incidents,
        }
        doc = {"command": command, "machine": info, "config": config, "results": [asdict(r) for r in results]}
        print(
            json.dumps({**doc, "ratios": ratio, "target_alerts_per_s": TARGET_ALERTS_PER_S, "passed": passed}, indent=2)
        )
    else:
        print(table(results, ratio))
        print(f"load average at the end: {' '.join(map(str, info['load_average_end']))}")
    if not passed:
        progress("bench: FAILED: acknowledged alerts missing, duplicated or incomplete, or a run answered none")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("bench: interrupted: replicas stopped, schemas dropped")
        sys.exit(130)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # a replica or a load process failed
        progress(f"bench: error: {exc}")
        sys.exit(2)
