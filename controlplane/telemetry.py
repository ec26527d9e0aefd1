"""Owns the service's own observability: Prometheus metrics and structured JSON logs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from controlplane.playbooks.guards import automation

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _OpenIncidentsCollector(Collector):
    """Reads the open-incident count from the database at scrape time, so every replica agrees."""

    def __init__(self, count_open: Callable[[], int | None]) -> None:
        self._count_open = count_open

    def collect(self) -> Iterable[GaugeMetricFamily]:
        value = self._count_open()
        family = GaugeMetricFamily("controlplane_open_incidents", "Incidents not yet resolved.")
        if value is not None:
            family.add_metric([], float(value))
        yield family


class _AutomationCollector(Collector):
    """Reads the global switches from the database at scrape time: another replica or the console may flip them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        paused = GaugeMetricFamily(
            "controlplane_automation_paused", "1 while automation is paused (every new execution is suppressed)."
        )
        dry_run = GaugeMetricFamily(
            "controlplane_automation_dry_run", "1 while global dry-run is on (executions record steps, act on nothing)."
        )
        try:
            with self._engine.connect() as conn:
                state = automation(conn)
        except Exception as exc:  # a scrape must not fail because the database is down; no sample says "unknown"
            structlog.get_logger(__name__).warning("metrics.automation_unavailable", error=str(exc).splitlines()[0])
        else:
            paused.add_metric([], float(state.paused))
            dry_run.add_metric([], float(state.dry_run))
        yield paused
        yield dry_run


class Metrics:
    """The service's metrics on a registry of their own (one per app, so tests stay independent)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.webhook_requests = Counter(
            "controlplane_webhook_requests",
            "Alertmanager webhook requests by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        # Exported at 0 from the start: `increase()` sees no increase in a series born at 1, so the
        # first webhook of a fresh replica would not count against ControlPlaneWebhookSilent.
        self.webhook_requests.labels("accepted")
        self.alerts_received = Counter(
            "controlplane_alerts_received",
            "Alerts received in webhook notifications, by their status (duplicates included).",
            ["status"],
            registry=self.registry,
        )
        self.ingest_duration = Histogram(
            "controlplane_ingest_duration_seconds",
            "Time from a webhook body being read to its alerts being committed.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingest_lane = Counter(
            "controlplane_ingest_lane_notifications",
            "Webhook notifications by the ingest lane they took: express (groups quiet lately) or bulk.",
            ["lane"],
            registry=self.registry,
        )
        self.ingest_batch_size = Histogram(
            "controlplane_ingest_batch_size",
            "Notifications committed together in one transaction (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )

        self.executions = Counter(
            "controlplane_executions",
            "Playbook executions that ended, by rule and outcome.",
            ["rule", "outcome"],
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "controlplane_step_duration_seconds",
            "Duration of playbook steps (all attempts), by action and outcome.",
            ["action", "outcome"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.retry_attempts = Counter(
            "controlplane_retry_attempts",
            "Step attempts retried after a retriable error, by action.",
            ["action"],
            registry=self.registry,
        )
        self.guard_suppressions = Counter(
            "controlplane_guard_suppressions",
            "Executions a guard suppressed, by guard (paused, active, cooldown, max_runs, max_concurrent).",
            ["rule", "guard"],
            registry=self.registry,
        )
        self.remediation_outcomes = Counter(
            "controlplane_remediation_outcomes",
            "Finished remediations by rule and outcome when it was settled (playbooks/ledger.py): resolved, "
            "not_resolved, rolled_back, failed; recurred when a resolved run's alert came back within the window.",
            ["rule", "outcome"],
            registry=self.registry,
        )
        self.pages = Counter(
            "controlplane_pages",
            "Pages telling on-call that automation failed, by kind and route (not_delivered when none got through).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.pruned_rows = Counter(
            "controlplane_pruned_rows",
            "Rows retention deleted (controlplane/retention/), by table; archived first when an archive is set.",
            ["table"],
            registry=self.registry,
        )
        self.retention_failures = Counter(
            "controlplane_retention_failures",
            "Retention rounds stopped by an error (database, archive write); a failed batch deletes nothing.",
            registry=self.registry,
        )
        self.escalations = Counter(
            "controlplane_escalations", "Executions escalated to people, by rule.", ["rule"], registry=self.registry
        )
        self.connections_closed = Counter(
            "controlplane_http_connections_closed",
            "Client connections the server ended itself (controlplane.connections), by reason: "
            "header_timeout, body_timeout, head_too_large, evicted, refused.",
            ["reason"],
            registry=self.registry,
        )

    def watch_open_incidents(self, count_open: Callable[[], int | None]) -> None:
        self.registry.register(_OpenIncidentsCollector(count_open))

    def watch_automation(self, engine: Engine) -> None:
        self.registry.register(_AutomationCollector(engine))


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """structlog to stdout, one JSON object per line; stdlib loggers (uvicorn, alembic) go the same way."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every MigrationContext (each /ready); the service logs migrations itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
