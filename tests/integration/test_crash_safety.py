"""Every alert acknowledged with 2xx is in the database after a crash (kill -9) or a shutdown (SIGTERM).

The real service runs as a subprocess (`python -m controlplane serve`) on SQLite and on the
real PostgreSQL; webhooks come from several threads, as from Alertmanager's parallel
notification pipelines, each carrying a new alert.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from controlplane.db.engine import make_engine
from tests.conftest import AUTH
from tests.integration.serverproc import (
    ServerProcess,
    WebhookLoad,
    fingerprint_counts,
    half_stored,
    truncate_all,
    unique_notifications,
)

pytestmark = pytest.mark.slow

NOTIFICATIONS = 400
THREADS = 8
KILL_AFTER_ACKED = 100  # the kill comes once this many were acknowledged, with the rest in flight or unsent
GRACE_SECONDS = 15.0  # uvicorn's graceful shutdown timeout is 10 s


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL the server subprocesses share: a new SQLite file, or the session's PostgreSQL schema emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/controlplane.db"
    url: str = request.getfixturevalue("postgres_url")
    truncate_all(url)
    return url


def assert_stored_once(url: str, fingerprints: set[str], what: str) -> None:
    counts = fingerprint_counts(url, fingerprints)
    lost = sorted(fp for fp, n in counts.items() if n == 0)
    doubled = sorted(fp for fp, n in counts.items() if n > 1)
    assert not lost, f"{len(lost)} of {len(fingerprints)} {what} are not in the database: {lost[:10]}"
    assert not doubled, f"{len(doubled)} of {len(fingerprints)} {what} are stored more than once: {doubled[:10]}"


def test_every_acknowledged_alert_survives_kill_9(server_db: str, tmp_path: Path) -> None:
    """kill -9 mid-load, restart: every 2xx'd alert is there once, whole; retries of the rest store each once."""
    notifications = unique_notifications(NOTIFICATIONS)
    server = ServerProcess(server_db, tmp_path / "server-killed.log")
    load = WebhookLoad(server.url, notifications, threads=THREADS)
    try:
        server.wait_ready()
        load.start()
        load.wait_acked(KILL_AFTER_ACKED, timeout=30)
        in_flight = load.in_flight()
        server.kill()
        load.stop_sending()
        load.join(20)
    finally:
        load.stop_sending()
        server.close()
    acked = load.acked()
    answers = load.answers()
    assert server.proc.returncode == -signal.SIGKILL
    assert len(acked) >= KILL_AFTER_ACKED, answers
    assert in_flight, f"no request was in flight at the kill, so it tested nothing: {answers}"
    assert len(acked) < NOTIFICATIONS, f"the kill came after the load, so it tested nothing: {answers}"
    assert set(answers) <= {"200", "RemoteProtocolError", "ReadError", "ConnectError", "WriteError"}, answers

    restarted = ServerProcess(server_db, tmp_path / "server-restarted.log")
    try:
        restarted.wait_ready()
        assert_stored_once(server_db, acked, "alerts acknowledged before kill -9")
        assert half_stored(server_db) == []
        # What an operator sees through the API, for a sample of them.
        with httpx.Client(base_url=restarted.url, headers=AUTH, timeout=10) as client:
            for fingerprint in sorted(acked)[:25]:
                response = client.get("/api/v1/alerts", params={"fingerprint": fingerprint})
                assert response.status_code == 200, response.text
                assert [a["fingerprint"] for a in response.json()["items"]] == [fingerprint]

        # Alertmanager sends again whatever got no 2xx, including what was committed but not answered.
        unanswered = {fp: payload for fp, payload in notifications.items() if fp not in acked}
        retry = WebhookLoad(restarted.url, unanswered, threads=THREADS).start()
        retry.join(60)
        assert retry.answers() == {"200": len(unanswered)}
    finally:
        restarted.close()
    assert_stored_once(server_db, set(notifications), "alerts sent (and retried after the restart)")
    assert half_stored(server_db) == []


@contextmanager
def write_lock_held(url: str) -> Iterator[None]:
    """Block the service's writer from another connection: its in-flight webhooks wait on the database."""
    if url.startswith("sqlite"):
        holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=5)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            trans = conn.begin()
            conn.execute(text("LOCK TABLE alerts IN SHARE ROW EXCLUSIVE MODE"))  # blocks INSERT, not SELECT
            yield
            trans.rollback()
    finally:
        engine.dispose()


def test_sigterm_answers_webhooks_in_flight_and_loses_nothing(server_db: str, tmp_path: Path) -> None:
    """A rolling restart: webhooks waiting for their commit at SIGTERM are still answered 2xx, and stored."""
    notifications = unique_notifications(NOTIFICATIONS)
    waiting = unique_notifications(THREADS)
    server = ServerProcess(server_db, tmp_path / "server-terminated.log")
    load = WebhookLoad(server.url, notifications, threads=THREADS)
    blocked = WebhookLoad(server.url, waiting, threads=THREADS)
    try:
        server.wait_ready()
        load.start()
        load.wait_acked(KILL_AFTER_ACKED, timeout=30)
        load.stop_sending()
        load.join(20)
        with write_lock_held(server_db):
            blocked.start()  # one webhook per thread, each waiting inside the service for the lock
            time.sleep(0.5)
            in_flight = blocked.in_flight()
            server.signal(signal.SIGTERM)
            time.sleep(1.0)
            assert server.proc.poll() is None, "exited at SIGTERM without waiting for the webhooks in flight"
        returncode = server.wait(GRACE_SECONDS)
        blocked.join(20)
    finally:
        load.stop_sending()
        blocked.stop_sending()
        server.close()
    assert in_flight == set(waiting), f"not all webhooks were in flight at SIGTERM: {blocked.answers()}"
    assert blocked.answers() == {"200": THREADS}, "webhooks in flight at SIGTERM were not all answered 2xx"
    # 0, or the SIGTERM re-raised after a complete graceful shutdown (see the test below).
    assert returncode in (0, -signal.SIGTERM), f"exit status {returncode}:\n{server.log_tail()}"
    acked = load.acked() | blocked.acked()
    assert len(acked) >= KILL_AFTER_ACKED + THREADS
    assert_stored_once(server_db, acked, "alerts acknowledged around SIGTERM")
    assert half_stored(server_db) == []


def test_sigterm_exits_with_status_0(tmp_path: Path) -> None:
    with ServerProcess(f"sqlite:///{tmp_path}/controlplane.db", tmp_path / "server.log") as server:
        server.wait_ready()
        server.signal(signal.SIGTERM)
        returncode = server.wait(GRACE_SECONDS)
    assert returncode == 0, f"exit status {returncode} after SIGTERM:\n{server.log_tail()}"
