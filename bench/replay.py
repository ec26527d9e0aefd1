"""Owns the replay benchmark: `controlplane replay` over 100,000 stored alerts with the shipped rules.

    .venv/bin/python bench/replay.py [--alerts 100000] [--keep DIR]

The history is made by the service's own code (ingest_notification + trigger_for_alerts in one
transaction per notification, as the ingest writer does) over 30 simulated days on a SQLite file:
notifications of 1-8 new alerts of one (alertname, namespace) group, one every ~26 s on average,
half of them named by a shipped rule (LangGraphHighErrorRate critical, LangGraphHighLatency,
LangGraphCheckpointFailures, LangGraphDatabaseConnectionsHigh) over 300 namespaces, half not;
a stand-in worker ends each execution 3 minutes after it was made (running -> succeeded), and the
ledger sweep settles outcomes every 5 minutes. Then `controlplane replay --check --json` runs as a
child process over the whole range with the same rules: alerts/s from its own clock, peak RSS of the
child (getrusage), and whether it reproduced every decision. --keep DIR reuses (or leaves) the database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controlplane.actions.builtin import build_registry  # noqa: E402
from controlplane.db import migrate  # noqa: E402
from controlplane.db.engine import make_engine, write_transaction  # noqa: E402
from controlplane.defaults import RULES_DIR  # noqa: E402
from controlplane.ingest.payload import AlertmanagerNotification  # noqa: E402
from controlplane.ingest.store import ingest_notification  # noqa: E402
from controlplane.playbooks import ledger  # noqa: E402
from controlplane.playbooks.state import transition  # noqa: E402
from controlplane.playbooks.trigger import trigger_for_alerts  # noqa: E402
from controlplane.rules.loader import load_rules  # noqa: E402

START = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 30
GROUP_BY = ["alertname", "namespace"]
MATCHING = [
    ("LangGraphHighErrorRate", "critical"),
    ("LangGraphHighLatency", "warning"),
    ("LangGraphCheckpointFailures", "critical"),
    ("LangGraphDatabaseConnectionsHigh", "warning"),
]
OTHERS = [("KubePodNotReady", "warning"), ("NodeDiskPressure", "critical"), ("TargetDown", "warning")]


def make_history(url: str, alerts: int, rng: random.Random) -> None:
    engine = make_engine(url)
    migrate.upgrade(engine)
    rules = load_rules(RULES_DIR, build_registry())
    per_alert = timedelta(days=DAYS) / alerts
    now, made, running = START, 0, []
    next_settle = START
    began = time.perf_counter()
    while made < alerts:
        size = min(rng.randint(1, 8), alerts - made)
        now += per_alert * size
        alertname, severity = rng.choice(MATCHING if rng.random() < 0.5 else OTHERS)
        namespace = f"ns{rng.randrange(300)}"
        body = {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="{alertname}"}}',
            "status": "firing",
            "receiver": "controlplane",
            "groupLabels": {"alertname": alertname},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": alertname,
                        "severity": severity,
                        "namespace": namespace,
                        "pod": f"p{made + i}",
                    },
                    "annotations": {"summary": f"{alertname} in {namespace}"},
                    "startsAt": now.isoformat(),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph",
                    "fingerprint": f"{made + i:016x}",
                }
                for i in range(size)
            ],
        }
        notification = AlertmanagerNotification.model_validate(body)
        with write_transaction(engine, sync="normal") as conn:
            while running and running[0][0] <= now:
                ends, execution_id = running.pop(0)
                transition(conn, execution_id, "running", actor="bench", now=ends, audit_it=False)
                transition(conn, execution_id, "succeeded", actor="bench", now=ends, audit_it=False)
            if now >= next_settle:
                ledger.settle_due(conn, now=now)
                next_settle = now + timedelta(minutes=5)
            new = ingest_notification(conn, notification, group_by=GROUP_BY, now=now).new_alert_ids
            for t in trigger_for_alerts(conn, alert_ids=new, rules=rules, default_group_by=GROUP_BY, now=now):
                if t.status == "pending":
                    running.append((now + timedelta(minutes=3), t.execution_id))
        made += size
        if made % 10_000 < size:
            print(f"  history: {made:,} alerts ({made / (time.perf_counter() - began):,.0f}/s)", file=sys.stderr)
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="a directory for the database: reused when it holds one")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="cp-bench-replay-"))
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / f"replay-{args.alerts}.db"
    url = f"sqlite:///{database}"
    if not database.exists():
        print(f"making a history of {args.alerts:,} alerts in {database} ...", file=sys.stderr)
        make_history(url, args.alerts, random.Random(15))
    command = [
        sys.executable, "-m", "controlplane", "replay", "--json", "--check",
        "--from", START.isoformat(), "--to", (START + timedelta(days=DAYS + 1)).isoformat(),
        "--database-url", url, "--rules", str(RULES_DIR),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if done.returncode not in (0, 1):
        print(done.stderr, file=sys.stderr)
        return 1
    report = json.loads(done.stdout)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rate = report["alerts"] / report["seconds"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    print(f"replay of {report['alerts']:,} alerts with the shipped rules (commit {commit.strip()}):")
    verdict = "met" if rate >= 20_000 else "BELOW"
    print(f"  {report['seconds']:.2f} s in the replay = {rate:,.0f} alerts/s  [target >= 20,000/s: {verdict}]")
    print(f"  {wall:.2f} s for the whole command (interpreter start, imports, rule loading)")
    print(f"  peak RSS of the command: {peak_mb:.0f} MB")
    for rule in report["per_rule"]:
        suppressed = rule["suppressed"]
        print(f"  {rule['rule']}: would run {rule['would_run']}, suppressed {sum(suppressed.values())} {suppressed}")
    differences = report["differences"]
    check = "reproduces history, decision for decision" if differences == 0 else f"{differences} decisions differ"
    print(f"  self-check: {check}")
    return 0 if report["differences"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
