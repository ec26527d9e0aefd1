"""Two replicas' ingest writers on the real PostgreSQL, fed the same alerts in opposite orders.

This is what an HA Alertmanager pair does to replicas behind no load balancer. Each writer has
its own engine (its own connections), as two processes would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from controlplane.db.engine import make_engine
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.writer import IngestWriter
from controlplane.telemetry import Metrics

pytestmark = pytest.mark.postgres

GROUP_BY = ["alertname", "namespace"]
ROUNDS = 25


def alert(namespace: str, n: int) -> dict[str, Any]:
    return {
        "status": "firing",
        "fingerprint": f"{namespace}-{n}",
        "startsAt": "2026-11-24T08:00:00Z",
        "labels": {"alertname": "OrderTest", "namespace": namespace, "severity": "warning"},
        "annotations": {},
    }


def notification(alerts: list[dict[str, Any]]) -> AlertmanagerNotification:
    return AlertmanagerNotification.model_validate(
        {
            "version": "4",
            "groupKey": "g",
            "status": "firing",
            "receiver": "r",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "",
            "alerts": alerts,
        }
    )


def deadlocks(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_replicas_given_the_same_alerts_in_opposite_orders_never_deadlock(postgres_url: str) -> None:
    before = deadlocks(postgres_url)
    engines = [make_engine(postgres_url) for _ in range(2)]
    writers = [IngestWriter(e, group_by=GROUP_BY, metrics=Metrics(CollectorRegistry())) for e in engines]
    for writer in writers:
        writer.start()
    # Every round opens three new incidents; one replica gets their alerts in one order, the other reversed.
    rounds = [[alert(f"r{r}-{ns}", n) for ns in "abc" for n in range(3)] for r in range(ROUNDS)]
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def replica(index: int) -> None:
        async def run() -> None:
            for alerts in rounds:
                barrier.wait()
                await writers[index].submit(notification(alerts if index == 0 else alerts[::-1]))

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported below, with the replica that saw it
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(2)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - began
    for writer in writers:
        writer.stop()
    for engine in engines:
        engine.dispose()  # a backend flushes its statistics (the deadlock count) when it exits
    assert failures == []
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM alerts WHERE alertname = 'OrderTest'")).scalar_one()
            opened = conn.execute(text("SELECT count(*) FROM incidents WHERE key LIKE '%OrderTest%'")).scalar_one()
    finally:
        engine.dispose()
    assert (stored, opened) == (ROUNDS * 9, ROUNDS * 3)
    time.sleep(0.5)
    # Each deadlock would cost deadlock_timeout (1 s) before a retry: none may happen.
    assert deadlocks(postgres_url) == before, f"deadlocks detected ({elapsed:.1f} s for {ROUNDS} rounds)"
