"""Owns what an action may reach beyond its own step: the ports of `ActionPorts`, and the settings it reads.

An action gets no engine and no Settings: it records and reads through these ports, and calls
other systems through the integration clients (integrations/), each built once per service by
playbooks/contexts.py. A port says what an action needs, in its words; the engine, the tables
and the transactions stay behind it, so a test can hand an action a port of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the clients' libraries load when a service builds its ports, not with the contract
    from controlplane.failover.schemas import SwitchResult
    from controlplane.integrations.admin_api import AdminApiClient
    from controlplane.integrations.http import HttpClient
    from controlplane.integrations.kubernetes import KubernetesClient
    from controlplane.integrations.pagerduty import PagerDutyClient
    from controlplane.integrations.prometheus import PrometheusClient
    from controlplane.integrations.slack import SlackClient
    from controlplane.rules.schema import FailoverGroup


class AuditPort(Protocol):
    def record(
        self,
        *,
        actor: str,
        action: str,
        incident_id: int | None,
        execution_id: int | None,
        detail: dict[str, Any],
        now: datetime,
    ) -> None:
        """Write one audit row in a transaction of its own."""
        ...

    def details(
        self, action: str, *, execution_id: int | None = None, incident_id: int | None = None
    ) -> list[dict[str, Any]]:
        """The `detail` of the execution's (or the incident's) `action` events, newest first."""
        ...


@dataclass(frozen=True)
class IncidentState:
    """An incident's status, severity and title as they are now (a run's copy is from its start)."""

    status: str
    severity: str
    title: str


class IncidentsPort(Protocol):
    def current(self, incident_id: int) -> IncidentState | None:
        """None for an incident that does not exist."""
        ...


class ThreadsPort(Protocol):
    """The Slack thread (root message) of each incident in each channel."""

    def thread_of(self, *, incident_id: int, channel: str) -> str | None: ...

    def remember(self, *, incident_id: int, channel: str, ts: str, now: datetime) -> str:
        """Keep `ts` as the incident's thread in `channel` unless one is kept already; the thread in force."""
        ...


class SilencesPort(Protocol):
    """The silences domain (silences/service.py) on the service's database and Alertmanager."""

    def for_step(
        self,
        *,
        matchers: dict[str, str],
        now: datetime,
        ends_at: datetime,
        comment: str,
        marker: str,
        rule: str,
        incident_id: int | None,
        execution_id: int,
    ) -> str: ...

    def expire(self, silence_id: str, *, now: datetime) -> bool: ...

    def firing(self, matchers: dict[str, str]) -> int:
        """How many firing, unsilenced alerts the matchers match now (read only: a plan's count)."""
        ...


class FailoverPort(Protocol):
    def preview(self, service: str, to: str | None, *, groups: Mapping[str, FailoverGroup]) -> SwitchPreview:
        """Where a switch would go from where, read only (a plan); raises DomainError where the switch would."""
        ...

    def switch(
        self,
        service: str,
        to: str | None,
        *,
        groups: Mapping[str, FailoverGroup],
        clock: Callable[[], datetime],
        actor: str,
        reason: str,
        incident_id: int | None,
        execution_id: int,
        idempotency_key: str,
    ) -> SwitchResult:
        """Make `to` (or the best healthy endpoint) active; raises DomainError when it cannot."""
        ...


@dataclass(frozen=True)
class SwitchPreview:
    """A failover switch as a plan sees it: the active endpoint, the one it would make active, their regions."""

    service: str
    from_endpoint: str
    to_endpoint: str
    from_region: str | None
    to_region: str | None


@dataclass(frozen=True, kw_only=True)
class ActionPorts:
    """Everything an action reaches beyond its step; one per service, shared by every step it runs."""

    audit: AuditPort
    incidents: IncidentsPort
    threads: ThreadsPort
    silences: SilencesPort
    failover: FailoverPort
    # The integration clients (integrations/); Slack and PagerDuty are None when not configured.
    kubernetes: KubernetesClient
    prometheus: PrometheusClient
    admin_api: AdminApiClient
    http: HttpClient
    slack: SlackClient | None
    pagerduty: PagerDutyClient | None
    # The settings actions read, and no others.
    http_allowed_hosts: Sequence[str]
    notify_routes: Mapping[str, str]
    slack_channel: str
    public_url: str | None
    prometheus_url: str
    alertmanager_url: str

    def incident_url(self, incident_id: int) -> str | None:
        """The incident's page in the console, when CONTROLPLANE_PUBLIC_URL says where that is."""
        return f"{self.public_url.rstrip('/')}/incidents/{incident_id}" if self.public_url else None
