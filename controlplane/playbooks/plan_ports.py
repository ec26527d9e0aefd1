"""Owns the ports a plan's steps get: the service's, with every write of the control plane's own (audit, Slack
threads, silences, failover) refused with PlanWriteRefused, so a plan function that tried would fail loudly
rather than act. Used by planning.py (a plan asked for) and steps.py (a shadow run's steps)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from controlplane.actions.ports import ActionPorts, AuditPort, FailoverPort, SilencesPort, SwitchPreview, ThreadsPort
from controlplane.failover.schemas import SwitchResult
from controlplane.rules.schema import FailoverGroup


class PlanWriteRefused(RuntimeError):
    """A plan's step tried to write: a plan function must only read."""


def read_only(ports: ActionPorts) -> ActionPorts:
    """The service's ports with every write of the control plane's own refused (PlanWriteRefused)."""
    return replace(
        ports,
        audit=_Audit(ports.audit),
        threads=_Threads(ports.threads),
        silences=_Silences(ports.silences),
        failover=_Failover(ports.failover),
    )


def _refuse(what: str) -> PlanWriteRefused:
    return PlanWriteRefused(f"a plan must not write: {what} was called")


@dataclass(frozen=True)
class _Audit:
    inner: AuditPort

    def record(self, **_kwargs: Any) -> None:
        raise _refuse("audit.record")

    def details(
        self, action: str, *, execution_id: int | None = None, incident_id: int | None = None
    ) -> list[dict[str, Any]]:
        return self.inner.details(action, execution_id=execution_id, incident_id=incident_id)


@dataclass(frozen=True)
class _Threads:
    inner: ThreadsPort

    def thread_of(self, *, incident_id: int, channel: str) -> str | None:
        return self.inner.thread_of(incident_id=incident_id, channel=channel)

    def remember(self, **_kwargs: Any) -> str:
        raise _refuse("threads.remember")


@dataclass(frozen=True)
class _Silences:
    inner: SilencesPort

    def for_step(self, **_kwargs: Any) -> str:
        raise _refuse("silences.for_step")

    def expire(self, silence_id: str, *, now: datetime) -> bool:
        raise _refuse("silences.expire")

    def firing(self, matchers: dict[str, str]) -> int:
        return self.inner.firing(matchers)


@dataclass(frozen=True)
class _Failover:
    inner: FailoverPort

    def preview(self, service: str, to: str | None, *, groups: Mapping[str, FailoverGroup]) -> SwitchPreview:
        return self.inner.preview(service, to, groups=groups)

    def switch(self, service: str, to: str | None, **_kwargs: Any) -> SwitchResult:
        raise _refuse("failover.switch")
