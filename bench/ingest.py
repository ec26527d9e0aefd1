"""Owns the ingest benchmark: the real service against a bare FastAPI+SQLite endpoint, same load, same durability.

    .venv/bin/python bench/ingest.py [--duration 10] [--connections 32] [--scenario both] [--json]

For each scenario, "same" (one single-alert notification repeated: the service dedups it and bumps
a receive count) and "unique" (a new alert every request: alert + incident link + audit row), each
target gets a fresh SQLite database and a free loopback port: `controlplane serve` (one uvicorn
worker) and bench/bare_app.py (one INSERT + commit per request). A separate load process (wrk with
bench/ingest.lua, or bench/loadgen.py when wrk is missing) warms it up, then drives it at a fixed
concurrency for a fixed time. After each run the target is stopped and its database must hold every
acknowledged notification; a failed check exits 1. Only 2xx responses count as notifications.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SAMPLE = ROOT / "tests" / "data" / "alertmanager_firing.json"
WEBHOOK_PATH = "/api/v1/alerts/alertmanager"
SCENARIOS = ("same", "unique")
TARGETS = ("service", "bare")
REQUIRED_RATIO, AIM_RATIO = 0.8, 1.0


@dataclass
class Load:
    """What one load-generator run saw; latencies cover every answered request."""

    sent: int
    ok: int
    non2xx: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class Result:
    scenario: str
    target: str
    per_second: float  # 2xx notifications per second of the measured run
    p50_ms: float
    p99_ms: float
    ok: int
    non2xx: int
    errors: int  # socket errors and timeouts
    check_ok: bool
    check: str


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def payload(scenario: str) -> str:
    """The sample notification cut to its first alert; "unique" gets the placeholders the load generator fills."""
    doc = json.loads(SAMPLE.read_text())
    alert = doc["alerts"][0]
    doc["alerts"] = [alert]
    if scenario == "unique":
        alert["fingerprint"] = "@FINGERPRINT@"
        alert["startsAt"] = "2026-11-24T08:00:00.@MICROS@Z"
    return json.dumps(doc, separators=(",", ":"))


def apt_get(*args: str) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, check=False).returncode


def find_wrk(choice: str) -> str | None:
    """wrk's path, installing the Debian package when missing and root; None means the Python load generator."""
    if choice == "python":
        return None
    path = shutil.which("wrk")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        progress("wrk is missing: installing the Debian package")
        if apt_get("install", "-y", "-q", "wrk") != 0 and apt_get("update", "-q") == 0:
            apt_get("install", "-y", "-q", "wrk")
        path = shutil.which("wrk")
    if path is None and choice == "wrk":
        raise SystemExit("bench: wrk not found and could not be installed")
    return path


def run_load(wrk: str | None, url: str, body: Path, scenario: str, prefix: str, seconds: int, conns: int) -> Load:
    args = [str(body), scenario, prefix]
    if wrk is not None:
        script = str(BENCH / "ingest.lua")
        cmd = [wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script, url, "--", *args]
    else:
        loadgen = [sys.executable, str(BENCH / "loadgen.py"), url, *args]
        cmd = [*loadgen, "--duration", str(seconds), "--connections", str(conns)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, start_new_session=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"load generator failed (exit {out.returncode}): {out.stderr.strip() or out.stdout}")
    d = json.loads(line.removeprefix("BENCH_JSON "))
    return Load(
        d["sent"], d["ok"], d["non2xx"], d["errors"], d["duration_us"] / 1e6, d["p50_us"] / 1e3, d["p99_us"] / 1e3
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(target: str, db: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    if target == "bare":
        return [sys.executable, str(BENCH / "bare_app.py"), "--port", str(port), "--db", str(db)], env
    env |= {
        "CONTROLPLANE_DATABASE_URL": f"sqlite:///{db}",
        "CONTROLPLANE_LOG_LEVEL": "warning",
        "CONTROLPLANE_LISTEN_HOST": "127.0.0.1",
        "CONTROLPLANE_LISTEN_PORT": str(port),
    }
    exe = Path(sys.executable).parent / "controlplane"
    return [str(exe) if exe.exists() else shutil.which("controlplane") or "controlplane", "serve"], env


@contextlib.contextmanager
def serving(cmd: list[str], env: dict[str, str], port: int, log_path: Path) -> Iterator[None]:
    """Run a server until the block ends (also on error or Ctrl-C); it has its own session, so we stop it."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n{log_path.read_text()[-2000:]}")
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response,
                ):
                    if response.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[0]} not ready within 30s:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            yield
        finally:
            if proc.poll() is None:
                proc.terminate()  # graceful: the service commits what its writer still holds
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def verify(target: str, scenario: str, db: Path, acked: int, sent: int) -> tuple[bool, str]:
    """Every 2xx must be stored, and at most every request sent (wrk stops with requests in flight).

    Counts cover the warm-up and the measured run: both went to the same fresh database.
    """
    with contextlib.closing(sqlite3.connect(db)) as conn:

        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        if target == "bare":
            stored, what, shape_ok, shape = one("SELECT count(*) FROM notifications"), "rows", True, ""
        elif scenario == "same":
            alerts = one("SELECT count(*) FROM alerts")
            stored, what = one("SELECT coalesce(sum(receive_count), 0) FROM alerts"), "receive_count sum"
            shape_ok, shape = alerts == 1, f", {alerts} alert row(s)"
        else:
            stored, what = one("SELECT count(*) FROM alerts"), "alerts"
            links = one("SELECT count(*) FROM incident_alerts")
            audits = one("SELECT count(*) FROM audit_events WHERE action = 'alert.firing'")
            shape_ok, shape = links == stored == audits, f", {links} links, {audits} alert.firing audits"
    ok = shape_ok and acked <= stored <= sent
    return ok, f"{'ok' if ok else 'FAILED'}: {what} {stored} in [2xx {acked}, sent {sent}]{shape}"


def bench_one(scenario: str, target: str, args: argparse.Namespace, wrk: str | None, workdir: Path) -> Result:
    run_dir = workdir / f"{scenario}-{target}"
    run_dir.mkdir()
    body = run_dir / "body.json"
    body.write_text(payload(scenario))
    db = run_dir / ("cp.db" if target == "service" else "bare.db")
    port = free_port()
    cmd, env = server_command(target, db, port)
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    progress(f"{scenario}/{target}: warm-up {args.warmup}s, then {args.duration}s at {args.connections} connections")
    with serving(cmd, env, port, run_dir / "server.log"):
        loads = [run_load(wrk, url, body, scenario, "w", args.warmup, args.connections)] if args.warmup else []
        loads.append(run_load(wrk, url, body, scenario, "m", args.duration, args.connections))
    main = loads[-1]
    check_ok, check = verify(target, scenario, db, sum(x.ok for x in loads), sum(x.sent for x in loads))
    check_ok = check_ok and main.ok > 0
    per_second = round(main.ok / main.duration_s, 1)
    p50, p99 = round(main.p50_ms, 2), round(main.p99_ms, 2)
    result = Result(scenario, target, per_second, p50, p99, main.ok, main.non2xx, main.errors, check_ok, check)
    progress(f"  {result.per_second:.0f} notifications/s, p99 {result.p99_ms:.1f} ms; check {check}")
    return result


def ratios(results: list[Result]) -> dict[str, float]:
    by = {(r.scenario, r.target): r.per_second for r in results}
    return {s: by[s, "service"] / by[s, "bare"] for s in SCENARIOS if by.get((s, "bare")) and (s, "service") in by}


def table(results: list[Result], ratio: dict[str, float]) -> str:
    head = f"{'scenario':<9}{'target':<9}{'notif/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'2xx':>8}{'non-2xx':>8}{'errors':>7}"
    lines = [head + "  check", "-" * (len(head) + 40)]
    for r in results:
        lines.append(
            f"{r.scenario:<9}{r.target:<9}{r.per_second:>9.0f}{r.p50_ms:>8.1f}{r.p99_ms:>8.1f}"
            f"{r.ok:>8}{r.non2xx:>8}{r.errors:>7}  {r.check}"
        )
    lines.append("")
    for scenario, value in ratio.items():
        verdict = "meets the aim" if value >= AIM_RATIO else "meets" if value >= REQUIRED_RATIO else "BELOW"
        lines.append(f"service/bare ({scenario}): {value:.2f}x  [{verdict} target >= {REQUIRED_RATIO}x, aim >= 1.0x]")
    return "\n".join(lines)


def machine(wrk: str | None) -> dict[str, Any]:
    loader = "python bench/loadgen.py"
    if wrk is not None:
        version = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False).stdout
        loader = version.split(" [")[0].strip() or "wrk"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load": loader,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per scenario and target")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each measured run (0: none)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installable")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.connections < 1:
        parser.error("--duration and --connections must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so servers are stopped as on Ctrl-C
    wrk = find_wrk(args.loadgen)
    info = machine(wrk)
    progress(f"bench: {info['cpus']} CPUs, Python {info['python']}, load from {info['load']}")
    scenarios = SCENARIOS if args.scenario == "both" else (args.scenario,)
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        results = [bench_one(s, t, args, wrk, Path(tmp)) for s in scenarios for t in TARGETS]
    ratio = {scenario: round(value, 3) for scenario, value in ratios(results).items()}
    passed = all(r.check_ok for r in results)
    if args.json:
        config = {"duration_s": args.duration, "warmup_s": args.warmup, "connections": args.connections}
        doc = {"machine": info, "config": config, "results": [asdict(r) for r in results], "ratios": ratio}
        print(json.dumps({**doc, "passed": passed}, indent=2))
    else:
        print(table(results, ratio))
    if not passed:
        progress("bench: FAILED: a target lost acknowledged notifications or answered none")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # a target or the load generator failed
        progress(f"bench: error: {exc}")
        sys.exit(2)
