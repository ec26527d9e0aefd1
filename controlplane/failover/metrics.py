"""Owns the failover metrics: switches by region and endpoint health, read from the database at scrape time.

Read at scrape time, not counted in a process, so switches made by a playbook's own manager,
another replica or before a restart count, and every replica reports the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from controlplane.failover import repository
from controlplane.rules.schema import FailoverGroup

log = structlog.get_logger("controlplane.failover")


class FailoverCollector(Collector):
    """`controlplane_failover_events_total{from_region,to_region}`, `controlplane_endpoint_healthy{service,endpoint}`.

    Register one per registry.
    """

    def __init__(self, engine: Engine, groups: Callable[[], Mapping[str, FailoverGroup]]) -> None:
        self._engine = engine
        self._groups = groups

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "controlplane_failover_events",
                "Switches of a service's active endpoint (failover, failback, manual), by region.",
                labels=["from_region", "to_region"],
            ),
            GaugeMetricFamily(
                "controlplane_endpoint_healthy",
                "1 if the endpoint passes its health checks (by the failover thresholds), else 0.",
                labels=["service", "endpoint"],
            ),
        )

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        switches, healthy = self._families()
        groups = list(self._groups().values())
        if groups:  # without failover groups, a scrape costs no query (and no wait while the database is down)
            try:
                with self._engine.connect() as conn:
                    counts = repository.switch_counts(conn)
                    health = {g.service: repository.read_health(conn, g) for g in groups}
            except Exception as exc:  # a scrape must not fail because the database is down
                log.warning("metrics.failover_unavailable", error=str(exc).splitlines()[0])
            else:
                for from_region, to_region, count in counts:
                    switches.add_metric([from_region or "", to_region or ""], float(count))
                for group in groups:
                    for endpoint in group.endpoints:
                        value = 1.0 if health[group.service][endpoint.name].healthy else 0.0
                        healthy.add_metric([group.service, endpoint.name], value)
        yield switches
        yield healthy
