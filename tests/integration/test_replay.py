"""`controlplane replay` on SQLite and PostgreSQL: it reproduces the service's history decision for decision,
shows what a candidate rule set would change, never writes the service's database, stops with a partial report."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from controlplane.actions.builtin import build_registry
from controlplane.app import create_app
from controlplane.cli import main
from controlplane.db import migrate
from controlplane.db.engine import make_engine
from controlplane.replay.report import ReplayReport
from controlplane.replay.run import RangeTooLarge, replay
from controlplane.rules.loader import RuleSet, load_rules
from tests.conftest import ADMIN_TOKEN, AUTH, make_settings
from tests.helpers import T0, post_alert, wait_for
from tests.replay_history import GROUP_BY, History, decisions

RULES = """
rules:
  - name: restart-worker
    match: {alertname: WorkerStuck}
    playbook: note
    guards: {cooldown: %(cooldown)s, max_runs: {count: 8, per: 1h}, max_concurrent: 2}
  - name: drain-queue
    match: {alertname: QueueDeep}
    playbook: note
    guards: {approval: true, cooldown: 15m}
  - name: cheap-fix
    match: {alertname: DiskFull}
    playbook: note
    guards: {%(cheap)s}
playbooks:
  - name: note
    steps:
      - action: notify.log
        with: {text: "fixing {{ alert.labels.namespace }}"}
"""
END = T0 + timedelta(days=1)


def rules_dir(
    tmp_path: Path, name: str, *, cooldown: str = "10m", cheap: str = "loop_breaker: {runs: 3, within: 1h}"
) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "rules.yaml").write_text(RULES % {"cooldown": cooldown, "cheap": cheap})
    return directory


def load(directory: Path) -> RuleSet:
    return load_rules(directory, build_registry())


def run_replay(engine: Engine, directory: Path, **kwargs: object) -> ReplayReport:
    return replay(
        engine,
        rules=load(directory),
        rules_label=str(directory),
        default_group_by=GROUP_BY,
        start=T0,
        end=END,
        **kwargs,  # type: ignore[arg-type]
    )


def busy_history(engine: Engine, directory: Path) -> History:
    """Three hours of the service: a key that fires every 4 minutes (cooldown, max_runs, max_concurrent),
    one that needs approval (approved, rejected), one that loops until the breaker quarantines it and a
    person lifts it, a pause, and failed runs."""
    history = History(engine, load(directory), run_for=timedelta(minutes=12, seconds=30), fail_every=5)
    for minute in range(0, 180, 4):
        history.fire(minute, "WorkerStuck", "a")
        history.fire(minute + 1, "WorkerStuck", f"n{minute % 3}")
    for minute in range(0, 180, 9):
        history.fire(minute, "QueueDeep", "q")
        history.fire(minute + 0.5, "DiskFull", "d")
    history.at(100.25, "lift")
    history.at(120.25, "switch", True)
    history.at(135.25, "switch", False)
    history.fire(2, "Unrelated", "x")
    history.run()
    return history


def fingerprint(engine: Engine) -> str:
    """Everything a replay must leave as it was."""
    digest = hashlib.sha256()
    with engine.connect() as conn:
        for table in ("alerts", "incidents", "executions", "quarantines", "audit_events", "automation_state", "pages"):
            rows = conn.execute(text(f"SELECT * FROM {table} ORDER BY 1")).all()
            digest.update(repr(rows).encode())
    return digest.hexdigest()


def test_replay_with_the_rules_in_force_reproduces_history(engine: Engine, tmp_path: Path) -> None:
    directory = rules_dir(tmp_path, "in-force")
    busy_history(engine, directory)
    made = decisions(engine)
    guards = Counter(guard for *_, guard in made)
    # The history holds what the replay must honour: every guard decided something in it.
    assert {"active", "cooldown", "max_runs", "max_concurrent", "quarantined", "loop_breaker", "paused"} <= set(
        guards
    ), guards
    before = fingerprint(engine)

    report = run_replay(engine, directory)

    assert report.reproduces, report.lines()
    assert not report.partial and report.alerts == report.alerts_in_range
    by_rule = {r.rule: r for r in report.per_rule}
    for rule in ("restart-worker", "drain-queue", "cheap-fix"):
        ran = [d for d in made if d[0] == rule and d[3] == "run"]
        suppressed = Counter(d[4] for d in made if d[0] == rule and d[3] == "suppressed")
        assert by_rule[rule].would_run == by_rule[rule].ran == len(ran)
        assert by_rule[rule].suppressed == by_rule[rule].ran_suppressed == dict(suppressed)
    assert fingerprint(engine) == before  # nothing written to the service's database


@pytest.mark.parametrize("minute", [61, 130])
def test_a_range_that_starts_mid_history_starts_from_the_state_then(
    engine: Engine, tmp_path: Path, minute: int
) -> None:
    # At 61 minutes keys are quarantined and runs in progress; at 130 automation is paused.
    directory = rules_dir(tmp_path, "in-force")
    busy_history(engine, directory)
    start = T0 + timedelta(minutes=minute)

    report = replay(engine, rules=load(directory), rules_label="x", default_group_by=GROUP_BY, start=start, end=END)

    assert report.reproduces, report.lines()
    assert 0 < report.alerts < 131
    suppressed = Counter(guard for r in report.per_rule for guard in r.suppressed)
    assert "paused" in suppressed and "active" in suppressed


def test_a_longer_cooldown_shows_which_runs_it_would_have_stopped(engine: Engine, tmp_path: Path) -> None:
    # One key firing every 7 minutes for an hour, each run lasting a minute. With cooldown 10m the
    # service ran at 0, 14, 28, 42, 56; with 30m it would run at 0 and 35 only.
    history = History(
        engine,
        load(rules_dir(tmp_path, "in-force", cheap="loop_breaker: false, cooldown: 10m")),
        run_for=timedelta(minutes=1),
    )
    for minute in range(0, 60, 7):
        history.fire(minute, "DiskFull", "d")
    history.run()
    candidate = rules_dir(tmp_path, "candidate", cheap="loop_breaker: false, cooldown: 30m")

    report = run_replay(engine, candidate)

    [rule] = [r for r in report.per_rule if r.rule == "cheap-fix"]
    assert (rule.ran, rule.would_run) == (5, 2)
    assert (rule.ran_suppressed, rule.suppressed) == ({"cooldown": 4}, {"cooldown": 7})
    assert not report.reproduces and report.differences == 5
    changed = [(d.actual, d.replayed) for d in report.first_differences]
    assert changed.count(("run", "suppressed by cooldown")) == 4
    assert changed.count(("suppressed by cooldown", "run")) == 1
    assert "5 decisions differ from history" in report.lines()[-1]


def test_replay_of_alerts_the_running_service_took_over_its_webhook(database_url: str, tmp_path: Path) -> None:
    directory = rules_dir(tmp_path, "in-force")
    settings = make_settings(database_url, rules_dir=directory)
    with TestClient(create_app(settings), headers=AUTH) as client:
        for n, namespace in enumerate(("a", "a", "b", "a", "c", "b")):
            post_alert(client, alertname="WorkerStuck", namespace=namespace, attempt=str(n))
        for n in range(3):
            post_alert(client, alertname="DiskFull", namespace="d", n=str(n))
        services = client.app.state.services  # type: ignore[attr-defined]

        def settled() -> bool:
            with services.engine.connect() as conn:
                active = "SELECT count(*) FROM executions WHERE status IN ('pending', 'running', 'waiting')"
                return conn.execute(text(active)).scalar_one() == 0

        wait_for("every execution finished", settled, timeout=20)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        response = client.post("/api/v1/replay", json={"since": "1h"}, headers=admin)
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["differences"] == 0 and report["alerts"] == 9, report["first_differences"]
        restart = next(r for r in report["per_rule"] if r["rule"] == "restart-worker")
        # a, b, c ran (unless c came while a and b ran: max_concurrent 2); the repeats of a and b cool down.
        assert restart["would_run"] == restart["ran"] in (2, 3)
        assert (
            restart["suppressed"] == restart["ran_suppressed"]
            and sum(restart["suppressed"].values()) == 6 - restart["ran"]
        )
        # A candidate rules directory on the server (cheap-fix in dry run: its run would only have been
        # recorded); a directory that does not load is refused with its errors.
        candidate = rules_dir(tmp_path, "candidate", cheap="dry_run: true")
        other = client.post("/api/v1/replay", json={"since": "1h", "rules_dir": str(candidate)}, headers=admin)
        assert other.status_code == 200 and other.json()["rules"] == str(candidate)
        cheap = next(r for r in other.json()["per_rule"] if r["rule"] == "cheap-fix")
        # (how many ran depends on whether a run ended before the next alert came: each did so in dry run)
        assert cheap["would_run"] == cheap["ran"] == cheap["differences"] >= 1, cheap
        differs = [(d["actual"], d["replayed"]) for d in other.json()["first_differences"] if d["rule"] == "cheap-fix"]
        assert differs == [("run", "dry run")] * cheap["ran"]
        broken = client.post(
            "/api/v1/replay", json={"since": "1h", "rules_dir": str(tmp_path / "nowhere")}, headers=admin
        )
        assert broken.status_code == 422 and "nowhere" in broken.json()["error"]
        # Without the admin token, and beyond the bounds: a clear 4xx.
        assert client.post("/api/v1/replay", json={"since": "1d"}).status_code in (401, 403)
        too_long = client.post("/api/v1/replay", json={"since": "90d"}, headers=admin)
        assert too_long.status_code == 422 and "at most 31" in too_long.json()["error"]


def test_too_many_alerts_is_refused_with_the_count(engine: Engine, tmp_path: Path) -> None:
    directory = rules_dir(tmp_path, "in-force")
    history = History(engine, load(directory))
    for minute in range(5):
        history.fire(minute, "DiskFull", "d")
    history.run()
    with pytest.raises(RangeTooLarge, match=r"5 alerts arrived .* at most 4 can be replayed"):
        run_replay(engine, directory, max_alerts=4)


def test_stopped_replay_reports_what_it_had_and_says_it_is_partial(engine: Engine, tmp_path: Path) -> None:
    directory = rules_dir(tmp_path, "in-force")
    history = History(engine, load(directory))
    for minute in range(0, 60, 2):
        history.fire(minute, "WorkerStuck", "a")
    history.run()
    seen: list[tuple[int, int]] = []

    report = run_replay(
        engine,
        directory,
        page=10,
        progress=lambda done, total: seen.append((done, total)),
        should_stop=lambda: len(seen) >= 2,
    )

    assert seen == [(10, 30), (20, 30)]
    assert report.partial and report.alerts == 20 and report.alerts_in_range == 30
    assert report.reproduces  # what it covered, it covered right
    assert report.lines()[0].startswith("PARTIAL (stopped): ")


def test_cli_replays_and_checks(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = rules_dir(tmp_path, "in-force")
    busy_history(engine, directory)
    monkeypatch.setenv("CONTROLPLANE_RULES_DIR", str(directory))
    window = ["--from", T0.isoformat(), "--to", END.isoformat(), "--database-url", database_url]

    assert main(["replay", *window, "--check"]) == 0
    out = capsys.readouterr().out
    assert "same decisions as history, execution for execution" in out
    assert "restart-worker: would run" in out

    candidate = rules_dir(tmp_path, "candidate", cooldown="1h")
    assert main(["replay", *window, "--rules", str(candidate), "--check", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["differences"] > 0 and report["rules"] == str(candidate)


def test_on_a_terminal_ctrl_c_stops_with_a_partial_report(tmp_path: Path) -> None:
    # The real command in a child process, its stderr a terminal: the progress line, then Ctrl-C.
    url = f"sqlite:///{tmp_path / 'history.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    directory = rules_dir(tmp_path, "in-force", cheap="loop_breaker: false")
    history = History(engine, load(directory), run_for=timedelta(seconds=30), resolve_after=None)
    # Three pages (2,000 + 2,000 + 500): after the first progress line a whole page is left, so Ctrl-C
    # arrives before the end even on a loaded machine (with one short page left it could finish first).
    for n in range(4500):
        history.fire(n * 0.25, "DiskFull", f"d{n % 50}")
    history.run()
    engine.dispose()
    controller, terminal = pty.openpty()
    window = ["--from", T0.isoformat(), "--to", END.isoformat(), "--database-url", url, "--rules", str(directory)]
    child = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "replay", *window],
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    os.close(terminal)
    seen = b""
    while b"alerts/s" not in seen:
        seen += os.read(controller, 1024)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    os.close(controller)

    assert b"2,000 / 4,500 alerts" in seen and b"left" in seen
    assert child.returncode == 130
    assert out.startswith("PARTIAL (stopped): replay of")
    assert "2,000 of 4,500 alerts" in out or "4,000 of 4,500 alerts" in out  # stopped at a page's end
