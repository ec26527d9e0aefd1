"""Database unavailable: the webhook answers 503 with Retry-After, fast, so Alertmanager retries;
nothing is half-stored; once the database is back the same notification is accepted and stored once.

PostgreSQL goes away behind a fault-injection proxy (tests/integration/serverproc.py FaultProxy);
SQLite is made unavailable by another connection holding its write lock.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from controlplane.app import create_app
from tests.conftest import WEBHOOK, make_settings
from tests.integration.serverproc import (
    AUTH,
    LOOPBACK,
    FaultProxy,
    ServerProcess,
    WebhookLoad,
    fingerprint_counts,
    half_stored,
    run_id,
    table_counts,
    truncate_all,
    unique_notification,
    unique_notifications,
    with_host_port,
)

pytestmark = pytest.mark.slow

# Alertmanager must get its 503 well before its own webhook timeout, and without the service
# waiting out its ingest timeout (5 s by default) on a database that refuses connections.
OUTAGE_ANSWER_SECONDS = 5.0


def upstream_of(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or LOOPBACK, parsed.port or 5432


def post_timed(client: TestClient, payload: dict[str, Any]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post(WEBHOOK, json=payload)
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) > 0, f"Retry-After: {retry_after!r}"


def post_until_accepted(client: TestClient, payload: dict[str, Any], timeout: float) -> httpx.Response:
    """Alertmanager's retries: POST again after each 503 until accepted or the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.post(WEBHOOK, json=payload)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


@pytest.mark.postgres
def test_postgres_outage_answers_503_fast_then_accepts_the_retry_once(postgres_url: str) -> None:
    truncate_all(postgres_url)
    run = run_id()
    fp_before, before = unique_notification(run, 0)
    fingerprint, payload = unique_notification(run, 1)
    proxy = FaultProxy(upstream_of(postgres_url)).start()
    try:
        settings = make_settings(with_host_port(postgres_url, LOOPBACK, proxy.port))
        with TestClient(create_app(settings), headers=AUTH) as client:
            assert client.post(WEBHOOK, json=before).status_code == 200  # through the proxy, pool warm
            stored_before = table_counts(postgres_url)

            proxy.stop()
            for _ in range(3):  # Alertmanager retries; each attempt must fail fast, not hang
                response, elapsed = post_timed(client, payload)
                assert_unavailable(response)
                assert elapsed < OUTAGE_ANSWER_SECONDS, f"503 took {elapsed:.2f}s"
            ready = client.get("/ready")
            assert ready.status_code == 503, ready.text
            # Read past the proxy: not a row of the refused notification anywhere.
            assert table_counts(postgres_url) == stored_before
            assert fingerprint_counts(postgres_url, [fingerprint]) == {fingerprint: 0}

            proxy.start()  # the same port: the database is back
            response = post_until_accepted(client, payload, timeout=10)
            assert response.status_code == 200, response.text
            assert response.json()["new"] == 1
            assert client.get("/ready").status_code == 200
            again = client.post(WEBHOOK, json=payload)  # a late duplicate changes nothing
            assert again.status_code == 200, again.text
            assert (again.json()["new"], again.json()["duplicates"]) == (0, 1)
    finally:
        proxy.stop()
    assert fingerprint_counts(postgres_url, [fp_before, fingerprint]) == {fp_before: 1, fingerprint: 1}
    assert table_counts(postgres_url) == {
        **stored_before,
        "alerts": 2,
        "incidents": 2,
        "incident_alerts": 2,
        "audit_events": 4,
    }
    assert half_stored(postgres_url) == []


@pytest.mark.postgres
def test_postgres_connections_cut_under_load_lose_and_tear_nothing(postgres_url: str, tmp_path: Path) -> None:
    """Connections die mid-transaction: every 2xx is stored, every 503 is stored once Alertmanager retries."""
    truncate_all(postgres_url)
    notifications = unique_notifications(300)
    proxy = FaultProxy(upstream_of(postgres_url)).start()
    server = ServerProcess(with_host_port(postgres_url, LOOPBACK, proxy.port), tmp_path / "server.log")
    load = WebhookLoad(server.url, notifications, threads=8)
    try:
        server.wait_ready()
        load.start()
        load.wait_acked(60, timeout=30)
        proxy.stop()
        time.sleep(1.0)
        proxy.start()
        load.join(60)
        answers = load.answers()
        acked = load.acked()
        assert set(answers) <= {"200", "503"}, f"answers other than 200 and 503: {answers}"
        assert answers.get("503"), f"no webhook saw the outage: {answers}"
        stored = fingerprint_counts(postgres_url, notifications)
        lost = sorted(fp for fp in acked if stored[fp] == 0)
        assert not lost, f"{len(lost)} alerts answered 2xx are not stored: {lost[:10]}"
        assert half_stored(postgres_url) == []

        server.wait_ready()  # Alertmanager backs off; by then the service has seen the database back
        retry = WebhookLoad(server.url, {fp: p for fp, p in notifications.items() if fp not in acked}, threads=8)
        retry.start().join(60)
        assert retry.answers() == {"200": len(notifications) - len(acked)}
    finally:
        load.stop_sending()
        server.close()
        proxy.stop()
    assert fingerprint_counts(postgres_url, notifications) == dict.fromkeys(notifications, 1)
    assert half_stored(postgres_url) == []


def test_sqlite_write_lock_held_answers_503_then_accepts_the_retry_once(tmp_path: Path) -> None:
    db = tmp_path / "controlplane.db"
    timeout = 0.5
    settings = make_settings(f"sqlite:///{db}", ingest_timeout_seconds=timeout)
    fingerprint, payload = unique_notification(run_id(), 0)
    with TestClient(create_app(settings), headers=AUTH) as client:
        holder = sqlite3.connect(db, isolation_level=None, timeout=5)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock: the service's writer now waits on it
            response, elapsed = post_timed(client, payload)
            assert_unavailable(response)
            assert elapsed < timeout + 2.0, f"503 took {elapsed:.2f}s with ingest_timeout_seconds={timeout}"
            time.sleep(timeout)  # hold it well past the ingest timeout
            assert holder.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        response = post_until_accepted(client, payload, timeout=5)
        assert response.status_code == 200, response.text
        assert response.json()["new"] + response.json()["duplicates"] == 1
    # The first attempt may have committed late, after the lock went: still one alert, one incident.
    assert fingerprint_counts(settings.database_url, [fingerprint]) == {fingerprint: 1}
    counts = table_counts(settings.database_url)
    assert {t: counts[t] for t in ("alerts", "incidents", "incident_alerts", "audit_events")} == {
        "alerts": 1,
        "incidents": 1,
        "incident_alerts": 1,
        "audit_events": 2,
    }
    assert half_stored(settings.database_url) == []
