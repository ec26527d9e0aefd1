"""The ingest writer's two lanes (ingest/writer.py, ingest/lanes.py) with a real database.

A storm batch is made to hang inside its transaction (the writer's hook waits on an event), as a
slow commit of thousands of alerts does: a page from a quiet group must still be stored and
answered (PostgreSQL, where the lanes commit side by side), and a group's later notification must
never overtake its earlier one (both databases).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, bindparam, text

from controlplane.db.engine import make_engine
from controlplane.ingest.lanes import LaneRouter
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import IngestResult
from controlplane.ingest.writer import IngestWriter
from controlplane.telemetry import Metrics

GROUP_BY = ["alertname", "namespace"]


def notification(group: str, names: Sequence[str], alertname: str = "StormAlert") -> AlertmanagerNotification:
    return AlertmanagerNotification.model_validate(
        {
            "version": "4",
            "groupKey": group,
            "status": "firing",
            "receiver": "r",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "",
            "alerts": [
                {
                    "status": "firing",
                    "fingerprint": name,
                    "startsAt": "2026-12-06T08:00:00Z",
                    "labels": {"alertname": alertname, "namespace": group, "pod": name},
                    "annotations": {},
                }
                for name in names
            ],
        }
    )


class HangingHook:
    """Holds the transaction of any batch with `hang_at` or more new alerts until released."""

    def __init__(self, hang_at: int) -> None:
        self.hang_at = hang_at
        self.hanging = threading.Event()
        self.release = threading.Event()

    def in_transaction(self, conn: Connection, new_alert_ids: list[int]) -> None:
        if len(new_alert_ids) >= self.hang_at:
            self.hanging.set()
            assert self.release.wait(30), "the test never released the hanging batch"

    def committed(self, results: Sequence[IngestResult], followups: None) -> None:
        pass


class Loop:
    """An event loop on a thread of its own, as uvicorn's: the test submits to it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, writer: IngestWriter, n: AlertmanagerNotification) -> Any:
        return asyncio.run_coroutine_threadsafe(writer.submit(n), self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


def writer_for(
    engine: Engine, hook: HangingHook, router: LaneRouter | None = None, registry: CollectorRegistry | None = None
) -> IngestWriter:
    metrics = Metrics(registry or CollectorRegistry())
    writer = IngestWriter(engine, group_by=GROUP_BY, metrics=metrics, hook=hook, router=router, commit_timeout=30)
    writer.start()
    return writer


def stored_ids(engine: Engine, fingerprints: Sequence[str]) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT fingerprint, id FROM alerts WHERE fingerprint IN :fps").bindparams(
                bindparam("fps", expanding=True)
            ),
            {"fps": list(fingerprints)},
        )
        return {fp: int(i) for fp, i in rows}


@pytest.mark.postgres
def test_a_quiet_groups_page_is_stored_and_answered_while_a_storm_batch_hangs(postgres_url: str, loop: Loop) -> None:
    engine = make_engine(postgres_url)
    hook = HangingHook(hang_at=10)
    metrics = CollectorRegistry()
    writer = writer_for(engine, hook, registry=metrics)
    try:
        storm = [f"storm-{i}" for i in range(10)]
        stuck = loop.submit(writer, notification("{}:{service=svc-001}", storm))
        assert hook.hanging.wait(10)
        page = loop.submit(writer, notification("{}:{service=checkout}", ["page-1"], alertname="CheckoutDown"))
        result = page.result(5)  # answered while the storm's transaction is still open
        assert len(result.new_alert_ids) == 1
        assert not stuck.done()
        assert stored_ids(engine, ["page-1", *storm]).keys() == {"page-1"}  # durable before its 2xx
        assert metrics.get_sample_value("controlplane_ingest_lane_notifications_total", {"lane": "express"}) == 1
        assert metrics.get_sample_value("controlplane_ingest_lane_notifications_total", {"lane": "bulk"}) == 1
        hook.release.set()
        assert len(stuck.result(10).new_alert_ids) == 10
    finally:
        hook.release.set()
        writer.stop()
        engine.dispose()


def test_a_groups_light_notification_never_overtakes_its_heavy_one(engine: Engine, loop: Loop) -> None:
    """The volume window is 0 here, so each notification alone says which lane it would take: the
    light one would go express and commit first, were the group not held to the lane of the heavy one."""
    hook = HangingHook(hang_at=10)
    writer = writer_for(engine, hook, router=LaneRouter(window_seconds=0.0))
    try:
        heavy = [f"heavy-{i}" for i in range(10)]
        first = loop.submit(writer, notification("{}:{service=svc-001}", heavy))
        assert hook.hanging.wait(10)
        second = loop.submit(writer, notification("{}:{service=svc-001}", ["light-1"]))
        other = loop.submit(writer, notification("{}:{service=other}", ["other-1"]))
        if engine.dialect.name == "postgresql":
            other.result(5)  # the express lane works meanwhile, for other groups
        with pytest.raises(TimeoutError):
            second.result(0.5)
        hook.release.set()
        first.result(10)
        second.result(10)
        other.result(10)
        ids = stored_ids(engine, [*heavy, "light-1"])
        assert max(ids[fp] for fp in heavy) < ids["light-1"]
    finally:
        hook.release.set()
        writer.stop()
