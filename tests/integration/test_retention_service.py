"""Retention in the running service, on SQLite and PostgreSQL: a backlog of old incidents is pruned by the
leader in small batches while the webhook keeps acknowledging, /metrics counts the rows, and
`controlplane archive import` reads the archive back into another database."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select

from controlplane.app import create_app
from controlplane.cli import main
from controlplane.db import migrate
from controlplane.db.engine import make_engine, write_transaction
from controlplane.db.tables import alerts_t, audit_t, executions_t, incidents_t, links_t, steps_t
from controlplane.retention.archive import advance_sequences
from tests.conftest import AUTH, WEBHOOK, count_rows, make_settings
from tests.helpers import sample_notification

OLD = datetime.now(UTC) - timedelta(days=200)
INCIDENTS = 300  # each with 3 alerts, 3 links, 8 audit rows, a run with 2 steps: 5,400 rows


def seed(engine: Engine, incidents: int, *, first_id: int = 1) -> int:
    """Old resolved incidents in bulk, as the service leaves them; the number of rows written."""
    ids = range(first_id, first_id + incidents)
    resolved = OLD + timedelta(hours=1)
    incident_rows = [
        {
            "id": n,
            "key": f"GraphErrors/ns-{n}",
            "status": "resolved",
            "severity": "warning",
            "title": "GraphErrors",
            "group_labels": {"alertname": "GraphErrors", "namespace": f"ns-{n}"},
            "opened_at": OLD,
            "updated_at": resolved,
            "resolved_at": resolved,
        }
        for n in ids
    ]
    alert_rows = [
        {
            "id": n * 3 + k,
            "fingerprint": f"old-{n}-{k}",
            "alertname": "GraphErrors",
            "status": "resolved",
            "labels": {"alertname": "GraphErrors", "namespace": f"ns-{n}", "pod": f"p{k}"},
            "annotations": {},
            "starts_at": OLD,
            "ends_at": resolved,
            "first_received_at": OLD,
            "last_received_at": resolved,
        }
        for n in ids
        for k in range(3)
    ]
    links = [{"incident_id": a["id"] // 3, "alert_id": a["id"], "attached_at": OLD} for a in alert_rows]
    runs = [
        {
            "id": n,
            "rule_name": "restart",
            "playbook_name": "restart",
            "trigger_key": f"old-{n}",
            "guard_key": f"ns-{n}",
            "incident_id": n,
            "status": "succeeded",
            "playbook": {},
            "params": {},
            "context": {},
            "created_at": OLD,
            "updated_at": OLD,
            "finished_at": OLD,
        }
        for n in ids
    ]
    steps = [
        {
            "execution_id": n,
            "phase": "forward",
            "index": k,
            "action": "notify.log",
            "status": "succeeded",
            "inputs": {},
            "output": {},
            "idempotency_key": f"old-{n}-{k}",
            "started_at": OLD,
        }
        for n in ids
        for k in range(2)
    ]
    audits = [
        {"at": OLD, "actor": "controlplane", "action": action, "incident_id": n, "execution_id": run, "detail": {}}
        for n in ids
        for action, run in [
            ("incident.opened", None),
            *[("alert.firing", None)] * 3,
            *[("alert.resolved", None)] * 2,
            ("incident.resolved", None),
            ("execution.succeeded", n),
        ]
    ]
    with write_transaction(engine) as conn:
        for table, rows in [
            (incidents_t, incident_rows),
            (alerts_t, alert_rows),
            (links_t, links),
            (executions_t, runs),
            (steps_t, steps),
            (audit_t, audits),
        ]:
            conn.execute(insert(table), rows)
    if engine.dialect.name == "postgresql":
        advance_sequences(engine)
    return sum(map(len, (incident_rows, alert_rows, links, runs, steps, audits)))


@pytest.fixture
def backlog(database_url: str) -> Iterator[tuple[Engine, int]]:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    written = seed(engine, INCIDENTS)
    yield engine, written
    engine.dispose()


def pruned_rows(client: TestClient) -> float:
    text = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("controlplane_pruned_rows_total{")
    )


def test_ingest_keeps_acknowledging_while_a_backlog_is_pruned(
    backlog: tuple[Engine, int], database_url: str, tmp_path: Path
) -> None:
    engine, written = backlog
    settings = make_settings(
        database_url, retention_interval_seconds=0.5, retention_batch_rows=50, archive_dir=tmp_path / "archive"
    )
    acks: list[tuple[float, float]] = []  # (rows pruned when it was sent, seconds to its 2xx)
    with TestClient(create_app(settings), headers=AUTH) as client:
        started = time.monotonic()
        pruned = 0.0
        while pruned < written and time.monotonic() - started < 90:
            alert = {
                "labels": {"alertname": "FreshAlert", "namespace": f"live-{len(acks)}"},
                "fingerprint": f"live-{len(acks)}",
            }
            sent = time.monotonic()
            response = client.post(WEBHOOK, json=sample_notification(alert))
            assert response.status_code == 200, response.text
            acks.append((pruned, time.monotonic() - sent))
            pruned = pruned_rows(client)
        assert pruned == written, "the backlog was not pruned within 90 s"
        # An old link (a Slack message, a postmortem) to what went says why it is not there.
        for path in ("/api/v1/incidents/1", "/api/v1/executions/1"):
            gone = client.get(path)
            assert gone.status_code == 404 and "retention deleted it" in gone.text, (path, gone.text)

    # Pruning went batch by batch, and alerts were acknowledged between them, none waiting long.
    progress = {rows for rows, _seconds in acks if 0 < rows < written}
    assert len(progress) >= 20, f"alerts were acknowledged between {len(progress)} batches only"
    slowest = max(seconds for _rows, seconds in acks)
    assert slowest < 1.0, f"an alert waited {slowest:.2f} s for its 2xx while pruning"
    assert count_rows(engine, "incidents") == len(acks)  # every fresh alert's incident, none of the old
    with engine.connect() as conn:
        assert set(conn.scalars(select(alerts_t.c.alertname))) == {"FreshAlert"}
    assert count_rows(engine, "alerts") == len(acks)
    assert any((tmp_path / "archive").iterdir())


def test_archive_import_reads_the_archive_into_another_database(engine: Engine, tmp_path: Path) -> None:
    from tests.integration.test_retention import NOW, snapshot, sweeps

    written = seed(engine, 30)
    before = snapshot(engine)
    directory = tmp_path / "archive"
    done = sweeps(engine, archive_dir=directory, batch_rows=20)[0].sweep_now()
    assert done is not None and done.deleted.total() == written
    [path] = directory.iterdir()
    assert path.name == f"controlplane-archive-{NOW:%Y-%m-%d}.jsonl.gz"
    investigation = f"sqlite:///{tmp_path}/investigation.db"

    imported = run_cli("archive", "import", str(path), "--database-url", investigation)

    assert imported.returncode == 0, imported.stderr
    audit_line = next(line for line in imported.stdout.splitlines() if line.startswith("audit_events"))
    assert audit_line.split()[1:3] == ["240", "240"]  # 30 incidents' 8 audit rows each: read, inserted
    other = make_engine(investigation)
    try:
        assert snapshot(other) == before  # from SQLite or PostgreSQL, the same rows and values
    finally:
        other.dispose()


def test_archive_import_names_the_file_and_line_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = b'{"table": "incidents", "row": {"id": 1}}\n'
    cut_short = tmp_path / "cut.jsonl.gz"
    cut_short.write_bytes(gzip.compress(good * 3)[:-12])
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_bytes(good)
    wrong = tmp_path / "wrong.jsonl.gz"
    wrong.write_bytes(gzip.compress(good + b'{"table": "users", "row": {}}\n'))
    url = f"sqlite:///{tmp_path}/investigation.db"

    for path, expected in [
        (cut_short, "cut short"),
        (not_gzip, "Not a gzipped file"),
        (wrong, f"{wrong}:2: not an archive line"),
        (tmp_path / "missing.jsonl.gz", "no such file"),
    ]:
        assert main(["archive", "import", str(path), "--database-url", url]) == 2, path
        stderr = capsys.readouterr().err
        assert expected in stderr and str(path.name) in stderr, stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
