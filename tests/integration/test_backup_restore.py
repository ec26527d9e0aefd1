"""Backup and restore on PostgreSQL, as the operating guide says to do it.

Incidents and executions are made through the service; `pg_dump -Fc -n <schema>` backs the
schema up; `pg_restore` puts it in a fresh database; `controlplane serve` on that database is
ready at once (migrations current), shows the same incidents and executions through the API,
and goes on working: new ids follow the restored ones, a restored execution awaiting
approval can be approved and runs.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL, make_url

from controlplane.app import create_app
from tests.conftest import ADMIN_TOKEN, AUTH, TOKEN, WEBHOOK, make_settings, require_binary
from tests.helpers import sample_notification, wait_for
from tests.integration.serverproc import ServerProcess, truncate_all

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
RULES = """
rules:
  - name: note-it
    match: {alertname: BackupAuto}
    playbook: note
  - name: ask-first
    match: {alertname: BackupApproval}
    playbook: note
    guards: {approval: true}
playbooks:
  - name: note
    steps:
      - id: noted
        action: incident.annotate
        with: {text: "noted {{ alert.labels.alertname }}"}
"""


def notification(alertname: str, status: str = "firing") -> dict[str, Any]:
    ended = {"endsAt": "2026-11-24T08:30:00Z"} if status == "resolved" else {}
    alert = {"labels": {"alertname": alertname}, "fingerprint": f"backup-{alertname}", "status": status, **ended}
    return sample_notification(alert) | {"status": status}


def snapshot(client: httpx.Client | TestClient) -> dict[str, Any]:
    """Everything an operator reads about incidents and executions, each in full."""

    def get(path: str, **params: Any) -> Any:
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    incidents = get("/api/v1/incidents", limit=500)["items"]
    executions = get("/api/v1/executions", limit=500)["items"]
    return {
        "incidents": [get(f"/api/v1/incidents/{i['id']}") for i in incidents],
        "executions": [get(f"/api/v1/executions/{e['id']}") for e in executions],
        "alerts": get("/api/v1/alerts", limit=500)["items"],
    }


def pg_args(url: URL) -> list[str]:
    return ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]


def run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}"


@pytest.fixture
def fresh_database(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the same server, dropped afterwards; its name."""
    createdb, dropdb = require_binary("createdb"), require_binary("dropdb")
    url = make_url(postgres_url)
    name = f"cp_restore_{uuid.uuid4().hex[:12]}"
    run(createdb, *pg_args(url), name)
    try:
        yield name
    finally:
        run(dropdb, *pg_args(url), "--if-exists", "--force", name)


def test_a_schema_dump_restored_into_a_fresh_database_serves_the_same_incidents_and_executions(
    postgres_url: str, fresh_database: str, tmp_path: Path
) -> None:
    pg_dump, pg_restore = require_binary("pg_dump"), require_binary("pg_restore")
    truncate_all(postgres_url)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULES)

    settings = make_settings(postgres_url, rules_dir=rules, worker_poll_seconds=0.05, ledger_interval_seconds=0.1)
    with TestClient(create_app(settings), headers=AUTH) as client:
        for payload in (notification("BackupAuto"), notification("BackupApproval"), notification("Unmatched")):
            assert client.post(WEBHOOK, json=payload).status_code == 200
        wait_for("the automatic execution succeeds", lambda: _with_status(client, "succeeded"), 15)
        assert _with_status(client, "awaiting_approval")
        assert client.post(WEBHOOK, json=notification("BackupAuto", "resolved")).json()["resolved"] == 1
        # The ledger settles the run once its incident resolved: a backup taken before would differ in that.
        wait_for("the ledger settles the run", lambda: (_with_status(client, "succeeded") or {}).get("outcome"), 15)
        before = snapshot(client)
    assert len(before["incidents"]) == 3 and len(before["executions"]) == 2
    assert {i["status"] for i in before["incidents"]} == {"open", "resolved"}

    source = make_url(postgres_url)
    schema = source.query["options"].removeprefix("-csearch_path=")
    dump = tmp_path / "controlplane.dump"
    run(pg_dump, *pg_args(source), "-Fc", "-n", schema, "-f", str(dump), source.database or "test")
    run(pg_restore, *pg_args(source), "--exit-on-error", "--no-owner", "-d", fresh_database, str(dump))

    restored_url = source.set(database=fresh_database).render_as_string(hide_password=False)
    with ServerProcess(restored_url, tmp_path / "server.log", rules_dir=str(rules), admin_token=ADMIN_TOKEN) as server:
        server.wait_ready()  # `serve` migrates first: nothing to do on a restored current schema
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
            ready = client.get("/ready").json()
            assert ready["checks"] == {"database": "ok", "migrations": "current"}
            assert snapshot(client) == before

            # It goes on from where the backup was: new ids after the restored ones, approvals work.
            new = client.post(WEBHOOK, json=notification("AfterRestore"))
            assert new.status_code == 200, new.text
            assert new.json()["incident_ids"] == [max(i["id"] for i in before["incidents"]) + 1]
            waiting = _with_status(client, "awaiting_approval")
            approved = client.post(f"/api/v1/executions/{waiting['id']}/approve", headers=ADMIN)
            assert approved.status_code == 200, approved.text
            wait_for(
                "the approved execution runs",
                lambda: client.get(f"/api/v1/executions/{waiting['id']}").json()["status"] == "succeeded",
                15,
            )
    # The source schema is untouched by all this.
    with TestClient(create_app(settings), headers=AUTH) as client:
        assert snapshot(client) == before


def _with_status(client: httpx.Client | TestClient, status: str) -> dict[str, Any] | None:
    items = client.get("/api/v1/executions", params={"status": status}).json()["items"]
    return items[0] if items else None
