"""Owns what an action is handed when a run calls it: the ActionContext of a step, a rollback or an escalation page,
and the ports behind it (`build_ports`), built once per service.

The idempotency key of a call is stable across retries and resumes: `<execution>:<n>`, where n
is the step's index, or 1000 + its index for its rollback; a page about the execution has
`<execution>:page:<kind>`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog
from pydantic import SecretStr
from sqlalchemy import Engine

from controlplane import audit as audit_trail
from controlplane import notify_threads
from controlplane.actions.base import ActionContext, AlertView, IncidentView
from controlplane.actions.ports import (
    ActionPorts,
    AuditPort,
    FailoverPort,
    IncidentsPort,
    IncidentState,
    SwitchPreview,
    ThreadsPort,
)
from controlplane.config import Settings
from controlplane.db.engine import write_transaction
from controlplane.errors import NotFound
from controlplane.failover.manager import FailoverManager
from controlplane.failover.schemas import SwitchResult
from controlplane.incidents import service as incidents
from controlplane.integrations.admin_api import AdminApiClient
from controlplane.integrations.http import HttpClient
from controlplane.integrations.kubernetes import KubernetesClient
from controlplane.integrations.pagerduty import PagerDutyClient
from controlplane.integrations.prometheus import PrometheusClient
from controlplane.integrations.slack import SlackClient
from controlplane.playbooks.step_store import Phase, Run
from controlplane.rules.schema import FailoverGroup
from controlplane.silences import service as silences

log = structlog.get_logger(__name__)

_ROLLBACK_KEYS = 1000
_NOT_A_STEP = -1  # the step index a page's context carries


@dataclass(frozen=True)
class ActionContexts:
    ports: ActionPorts
    clock: Callable[[], datetime]
    rules: Callable[[], Any] | None = None  # the RuleSet in force: targets and failover groups for actions

    def for_step(
        self, run: Run, phase: Phase, index: int, started_at: datetime, deadline: float | None = None
    ) -> ActionContext:
        if phase == "forward":
            key, step = index, f"step {index + 1}"
        else:
            key, step = _ROLLBACK_KEYS + index, f"rollback of step {index + 1}"
        return self._context(
            run.id, run.rule, run.context, key, str(key), step, started_at, deadline, dry_run=run.dry_run
        )

    def for_page(self, *, execution_id: int, rule: str, context: dict[str, Any], key: str) -> ActionContext:
        """The context of a page about an execution (playbooks/pages.py): its alert and incident, its own key."""
        return self._context(execution_id, rule, context, _NOT_A_STEP, key, "page", self.clock(), None, dry_run=False)

    def for_plan(
        self, *, rule: str, context: dict[str, Any], index: int, ports: ActionPorts, deadline: float | None
    ) -> ActionContext:
        """The context a plan (planning.py) hands step `index`: no execution (id 0), its own key, the given ports."""
        ctx = self._context(0, rule, context, index, f"plan:{index}", f"step {index + 1}", self.clock(), deadline)
        return replace(ctx, ports=ports, dry_run=True)

    def _context(
        self,
        execution_id: int,
        rule: str,
        context: dict[str, Any],
        index: int,
        key: str,
        step: str,
        started_at: datetime,
        deadline: float | None,
        *,
        dry_run: bool = False,
    ) -> ActionContext:
        rules = self.rules() if self.rules is not None else None
        incident = context.get("incident")
        alert = context.get("alert")
        return ActionContext(
            execution_id=execution_id,
            step_index=index,
            step=step,
            idempotency_key=f"{execution_id}:{key}",
            rule=rule,
            incident=IncidentView(**incident) if incident else None,
            alert=AlertView(**alert) if alert else None,
            ports=self.ports,
            now=self.clock,
            step_started_at=started_at,
            dry_run=dry_run,
            log=log.bind(execution_id=execution_id, step=key),
            targets=rules.targets if rules is not None else {},
            failover=rules.failover if rules is not None else {},
            deadline=deadline,
        )


def build_ports(settings: Settings, engine: Engine) -> ActionPorts:
    """The ports every action of one service shares: its database, its clients, the settings actions read."""
    slack_token, pagerduty_key = _secret(settings.slack_token), _secret(settings.pagerduty_routing_key)
    audit, incidents_port, threads, failover = engine_ports(engine)
    return ActionPorts(
        audit=audit,
        incidents=incidents_port,
        threads=threads,
        silences=silences.Silences(engine, settings.alertmanager_url),
        failover=failover,
        kubernetes=KubernetesClient(settings),
        prometheus=PrometheusClient(settings.prometheus_url),
        admin_api=AdminApiClient(),
        http=HttpClient(),
        slack=SlackClient(slack_token, base_url=settings.slack_api_url) if slack_token else None,
        pagerduty=PagerDutyClient(pagerduty_key, url=settings.pagerduty_url) if pagerduty_key else None,
        http_allowed_hosts=tuple(settings.http_allowed_hosts),
        notify_routes=dict(settings.notify_routes),
        slack_channel=settings.slack_channel,
        public_url=settings.public_url,
        prometheus_url=settings.prometheus_url,
        alertmanager_url=settings.alertmanager_url,
    )


def engine_ports(engine: Engine) -> tuple[AuditPort, IncidentsPort, ThreadsPort, FailoverPort]:
    """The ports that are the service's own database: audit, incidents, Slack threads, failover."""
    return _Audit(engine), _Incidents(engine), _Threads(engine), _Failover(engine)


def _secret(value: SecretStr | None) -> str | None:
    return (value.get_secret_value() or None) if value is not None else None  # empty counts as not set


# -- the domains' functions, bound to the service's database -------------------------------------


@dataclass(frozen=True)
class _Audit:
    engine: Engine

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
        with write_transaction(self.engine) as conn:
            audit_trail.audit(
                conn,
                actor=actor,
                action=action,
                incident_id=incident_id,
                execution_id=execution_id,
                detail=detail,
                now=now,
            )

    def details(
        self, action: str, *, execution_id: int | None = None, incident_id: int | None = None
    ) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return audit_trail.details(conn, action=action, execution_id=execution_id, incident_id=incident_id)


@dataclass(frozen=True)
class _Incidents:
    engine: Engine

    def current(self, incident_id: int) -> IncidentState | None:
        with self.engine.connect() as conn:
            try:
                row = incidents.incident_row(conn=conn, incident_id=incident_id)
            except NotFound:
                return None
        return IncidentState(status=row["status"], severity=row["severity"], title=row["title"])


@dataclass(frozen=True)
class _Threads:
    engine: Engine

    def thread_of(self, *, incident_id: int, channel: str) -> str | None:
        with self.engine.connect() as conn:
            return notify_threads.thread_of(conn, incident_id=incident_id, channel=channel)

    def remember(self, *, incident_id: int, channel: str, ts: str, now: datetime) -> str:
        with write_transaction(self.engine) as conn:
            return notify_threads.remember_thread(conn, incident_id=incident_id, channel=channel, ts=ts, now=now)


@dataclass(frozen=True)
class _Failover:
    engine: Engine

    def preview(self, service: str, to: str | None, *, groups: Mapping[str, FailoverGroup]) -> SwitchPreview:
        manager = FailoverManager(self.engine, groups=lambda: groups)
        before, after = manager.preview(service, to)
        group = groups[service]
        regions = {e.name: e.region or None for e in group.endpoints}
        return SwitchPreview(service, before, after, regions.get(before), regions.get(after))

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
        # State lives in the database, so a manager on the service's engine, with the step's groups
        # and clock, is the service's manager; the idempotency key makes a retried step return the first switch.
        manager = FailoverManager(self.engine, groups=lambda: groups, clock=clock)
        return manager.switch(
            service,
            to,
            actor=actor,
            reason=reason,
            incident_id=incident_id,
            execution_id=execution_id,
            idempotency_key=idempotency_key,
        )
