"""Owns the long-lived parts one running service shares: settings, engine, metrics, ingest writer."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from sqlalchemy import Engine

from controlplane.config import Settings
from controlplane.db import migrate
from controlplane.db.engine import make_engine
from controlplane.incidents.service import count_open_incidents
from controlplane.ingest.writer import IngestWriter
from controlplane.telemetry import Metrics

log = structlog.get_logger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    metrics: Metrics
    writer: IngestWriter
    head_revision: str | None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = make_engine(settings.database_url)
        metrics = Metrics()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            metrics.registry.register(collector)
        writer = IngestWriter(
            engine,
            group_by=settings.incident_group_by,
            metrics=metrics,
            max_batch=settings.ingest_max_batch,
            commit_timeout=settings.ingest_timeout_seconds,
        )
        services = cls(settings, engine, metrics, writer, migrate.head_revision(engine))
        metrics.watch_open_incidents(services.open_incidents_or_none)
        return services

    def start(self) -> None:
        before = migrate.current_revision(self.engine)
        migrate.upgrade(self.engine)
        if before != self.head_revision:
            log.info("database.migrated", from_revision=before, to_revision=self.head_revision)
        self.writer.start()

    def stop(self) -> None:
        self.writer.stop()
        self.engine.dispose()

    def open_incidents_or_none(self) -> int | None:
        try:
            with self.engine.connect() as conn:
                return count_open_incidents(conn=conn)
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("metrics.open_incidents_unavailable", error=str(exc).splitlines()[0])
            return None
