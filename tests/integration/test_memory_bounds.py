"""A request's memory is bounded before it is read: huge incidents and huge form bodies against the real server.

The deployment gives a replica 512 MiB (deploy/kubernetes/base/deployment.yaml). These tests run
`controlplane serve` as a subprocess and read its peak resident set (VmHWM in /proc) around
the load: six concurrent reads of an incident with 20,000 alerts, and a 200 MB chunked form
post (no Content-Length, so the size is only known by reading).
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert

from controlplane.db.models import Alert, AuditEvent, Incident, IncidentAlert
from tests.conftest import ADMIN_TOKEN
from tests.integration.serverproc import ServerProcess

pytestmark = pytest.mark.slow

MEMORY_LIMIT = 512 * 1024 * 1024  # the deployment's limit
ALERTS = 20_000
READERS = 6
FORM_BYTES = 200 * 1024 * 1024
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def peak_rss(pid: int) -> int:
    """The process's peak resident set so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def storm_incident(engine: Engine, alerts: int) -> int:
    """One incident holding `alerts` alerts (each with a realistic label set) and an audit row per alert."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    annotations = {"summary": "graph chat is failing", "description": "d" * 600, "runbook_url": "http://runbooks/x"}
    with engine.begin() as conn:
        incident_id = conn.execute(
            insert(Incident.__table__).returning(Incident.__table__.c.id),
            {
                "key": "alertname=Storm",
                "open_key": "alertname=Storm",
                "status": "open",
                "severity": "critical",
                "title": "Storm",
                "group_labels": {"alertname": "Storm"},
                "opened_at": now,
                "updated_at": now,
            },
        ).scalar_one()
        for first in range(0, alerts, 2_000):
            rows = []
            for index in range(first, min(first + 2_000, alerts)):
                labels = {"alertname": "Storm", "pod": f"agent-{index}", "namespace": "agents", "graph_name": "chat"}
                rows.append(
                    {
                        "fingerprint": f"{index:016x}",
                        "alertname": "Storm",
                        "status": "firing",
                        "labels": labels,
                        "annotations": annotations,
                        "starts_at": now + timedelta(seconds=index),
                        "ends_at": None,
                        "generator_url": "http://prometheus:9090/graph",
                        "receiver": "controlplane",
                        "first_received_at": now,
                        "last_received_at": now,
                        "receive_count": 1,
                    }
                )
            ids = conn.execute(insert(Alert.__table__).returning(Alert.__table__.c.id), rows).scalars().all()
            conn.execute(
                insert(IncidentAlert.__table__),
                [{"incident_id": incident_id, "alert_id": i, "attached_at": now} for i in ids],
            )
            conn.execute(
                insert(AuditEvent.__table__),
                [
                    {
                        "at": now,
                        "actor": "alertmanager:controlplane",
                        "action": "alert.firing",
                        "incident_id": incident_id,
                        "detail": {"alert_id": i, "labels": rows[0]["labels"]},
                    }
                    for i in ids
                ],
            )
    return int(incident_id)


def test_concurrent_reads_of_a_storm_incident_stay_bounded(engine: Engine, database_url: str, tmp_path: Path) -> None:
    incident_id = storm_incident(engine, ALERTS)
    with ServerProcess(database_url, tmp_path / "server.log", admin_token=ADMIN_TOKEN) as server:
        server.wait_ready()
        url = f"{server.url}/api/v1/incidents/{incident_id}"
        assert httpx.get(url, headers=ADMIN, timeout=60).status_code == 200  # warm: imports, pools, caches
        before = peak_rss(server.proc.pid)

        def read(_: int) -> dict[str, Any]:
            response = httpx.get(url, headers=ADMIN, timeout=120)
            assert response.status_code == 200, response.text[:300]
            return dict(response.json())

        with ThreadPoolExecutor(READERS) as pool:
            answers = list(pool.map(read, range(READERS)))
        peak = peak_rss(server.proc.pid)
        print(f"peak RSS {before / 2**20:.0f} MiB before, {peak / 2**20:.0f} MiB after {READERS} concurrent reads")
        assert peak < MEMORY_LIMIT
        assert peak - before < 64 * 2**20, "a read of a big incident should cost a bounded page, not the whole incident"

        detail = answers[0]
        assert detail["alerts_total"] == ALERTS
        assert 0 < len(detail["alerts"]) <= 500 and detail["alerts_next_cursor"] is not None
        assert 0 < len(detail["timeline"]) <= 500 and detail["timeline_next_cursor"] is not None
        # Every alert is still reachable, page by page.
        seen, cursor = len(detail["alerts"]), detail["alerts_next_cursor"]
        with httpx.Client(headers=ADMIN, timeout=60) as client:
            while cursor is not None:
                page = client.get(f"{url}/alerts", params={"after": cursor, "limit": 500}).json()
                seen += len(page["items"])
                cursor = page["next_cursor"]
        assert seen == ALERTS


def _post_chunked(url: str, path: str, total: int) -> tuple[int | None, int]:
    """POST `total` bytes of form as chunks without a Content-Length; (status answered or None, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    answer = bytearray()
    answered = threading.Event()

    def receive() -> None:
        try:
            while chunk := sock.recv(65536):
                answer.extend(chunk)
                if b"\r\n" in answer:
                    answered.set()
        except OSError:
            pass
        answered.set()

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    sent = 0
    chunk = b"note=" + b"a" * (1024 * 1024 - 5)
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        while sent < total and not answered.is_set():
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        if not answered.is_set():
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server closed the connection on us: what it answered first is what counts
    answered.wait(60)
    reader.join(1)
    sock.close()
    status_line = bytes(answer).split(b"\r\n", 1)[0].split()
    return (int(status_line[1]) if len(status_line) > 1 else None), sent


@pytest.mark.parametrize("path", ["/login", "/incidents/1/notes", "/logout", "/api/v1/executions/1/approve"])
def test_a_huge_chunked_form_is_refused_while_streaming(database_url: str, tmp_path: Path, path: str) -> None:
    with ServerProcess(database_url, tmp_path / "server.log") as server:
        server.wait_ready()
        assert httpx.get(f"{server.url}/login", timeout=10).status_code == 200  # warm
        before = peak_rss(server.proc.pid)
        started = time.monotonic()
        status, sent = _post_chunked(server.url, path, FORM_BYTES)
        took = time.monotonic() - started
        peak = peak_rss(server.proc.pid)
        assert status == 413, f"answered {status} after {sent} bytes"
        assert sent < FORM_BYTES, "the server read the whole body before refusing it"
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    mib = 2**20
    print(f"{path}: 413 after {sent / mib:.0f} MiB in {took:.1f}s; peak RSS {before / mib:.0f} -> {peak / mib:.0f} MiB")
    assert peak < MEMORY_LIMIT
    assert peak - before < 32 * 2**20
