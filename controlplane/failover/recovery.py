"""Owns recovery attempts (seed 003): try to bring a failed endpoint back a few times, then leave it to a human.

A failover group with `recovery` in the rule files names an action of the registry (a restart
through the service's admin API with `http.request`, `k8s.rollout_restart`, ...) and its `with`.
When the health checker marks one of the group's endpoints failed, `RecoveryAttempts.start` runs
the attempts on a thread of their own: attempt n calls the action, then waits `waits[n-1]` (the
last wait repeats: 10, 20, 40 s by default), then checks the endpoint (`is_healthy`, a probe
and/or heartbeat, recorded nowhere). Healthy again stops the attempts; after the last one, on-call
is paged through `notify.oncall`, with the group's `recovery.severity` (critical: PagerDuty in the
default routes). Every attempt, its outcome and the page are audited (`failover.recovery_*`).

The action runs in a context of no execution (id 0) with its own idempotency key per attempt,
and an alert of its own (labels service, endpoint, severity), which the page is routed and
deduplicated by. One endpoint has one set of attempts at a time. It runs on the leader only, as
the checker that starts it does; a replica that stops leading makes no further attempt and pages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import structlog

from controlplane.actions.base import ActionContext, ActionRegistry
from controlplane.actions.ports import ActionPorts
from controlplane.playbooks.contexts import ActionContexts
from controlplane.rules.schema import FailoverGroup, Recovery

log = structlog.get_logger("controlplane.failover")

ACTOR = "controlplane:failover"
PAGE_ACTION = "notify.oncall"

IsHealthy = Callable[[FailoverGroup, str], tuple[bool, str | None]]


@dataclass(frozen=True)
class RecoveryOutcome:
    service: str
    endpoint: str
    result: Literal["recovered", "gave_up"]
    attempts: int
    paged: bool


class RecoveryAttempts:
    """Runs each group's `recovery` on its failed endpoints; `is_healthy` is the check between attempts."""

    def __init__(
        self,
        registry: ActionRegistry,
        contexts: ActionContexts,
        is_healthy: IsHealthy,
        *,
        sleep: Callable[[float], object] = time.sleep,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self._is_leader = is_leader
        self._registry = registry
        self._contexts = contexts
        self._is_healthy = is_healthy
        self._sleep = sleep
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()

    def start(self, group: FailoverGroup, endpoint: str) -> bool:
        """Start the attempts on a thread (the checker's `on_failed`); False when none are configured or some run."""
        if group.recovery is None:
            return False
        key = (group.service, endpoint)
        with self._lock:
            if key in self._running:
                return False
            self._running.add(key)

        def attempts() -> None:
            try:
                self.run(group, endpoint)
            except Exception:  # a crash must not kill anything else; the endpoint stays failed and visible
                log.exception("failover.recovery_crashed", service=group.service, endpoint=endpoint)
            finally:
                with self._lock:
                    self._running.discard(key)

        threading.Thread(target=attempts, name=f"failover-recovery-{group.service}", daemon=True).start()
        return True

    def run(self, group: FailoverGroup, endpoint: str) -> RecoveryOutcome:
        """The attempts, in this thread: until the endpoint is healthy again or they run out (then a page)."""
        recovery = group.recovery
        if recovery is None:
            raise ValueError(f"failover group {group.service!r} has no recovery")
        started = self._contexts.clock()
        base = self._alert(group, endpoint, recovery, started)
        why: str | None = None
        for n in range(1, recovery.attempts + 1):
            if not self._is_leader():
                # No more actions from a replica that may be cut off; nobody else will try (the new
                # leader starts attempts only when it marks an endpoint failed), so a human is paged.
                why = f"recovery stopped after {n - 1} attempts: this replica is no longer the leader"
                paged = self._page(group, endpoint, recovery, base, last_error=why, attempts=n - 1)
                return RecoveryOutcome(group.service, endpoint, "gave_up", n - 1, paged=paged)
            wait = recovery.waits[min(n, len(recovery.waits)) - 1].total_seconds()
            ok, error = self._attempt(group, endpoint, recovery, base, n)
            self._audit(
                "failover.recovery_attempt",
                group,
                endpoint,
                attempt=n,
                of=recovery.attempts,
                action=recovery.action,
                ok=ok,
                error=error,
                wait_seconds=wait,
            )
            self._sleep(wait)
            healthy, why = self._is_healthy(group, endpoint)
            if healthy:
                self._audit("failover.recovery_succeeded", group, endpoint, attempts=n, action=recovery.action)
                log.info("failover.recovered", service=group.service, endpoint=endpoint, attempts=n)
                return RecoveryOutcome(group.service, endpoint, "recovered", n, paged=False)
            log.warning(
                "failover.recovery_attempt_failed", service=group.service, endpoint=endpoint, attempt=n, error=why
            )
        paged = self._page(group, endpoint, recovery, base, last_error=why, attempts=recovery.attempts)
        return RecoveryOutcome(group.service, endpoint, "gave_up", recovery.attempts, paged=paged)

    # -- internals -------------------------------------------------------------------------

    def _attempt(
        self, group: FailoverGroup, endpoint: str, recovery: Recovery, base: dict[str, Any], n: int
    ) -> tuple[bool, str | None]:
        spec = self._registry.get(recovery.action)
        ctx = self._context(base, f"attempt:{n}")
        try:
            params = spec.params.model_validate(recovery.with_)
            refused = spec.blast_radius(ctx, params) if spec.blast_radius is not None else None
            if refused:
                return False, f"refused: {refused}"
            spec.func(ctx, params)
        except Exception as exc:  # an attempt that fails is an attempt: the next one follows its wait
            return False, f"{type(exc).__name__}: {exc}"[:1000]
        return True, None

    def _page(
        self,
        group: FailoverGroup,
        endpoint: str,
        recovery: Recovery,
        base: dict[str, Any],
        *,
        last_error: str | None,
        attempts: int,
    ) -> bool:
        text = (
            f"Failover endpoint {endpoint} of service {group.service} is still failing after {attempts}"
            f" recovery attempts ({recovery.action}); it is left to a human. Last check: {last_error or 'failed'}"
        )
        spec = self._registry.get(PAGE_ACTION)
        ctx = self._context(base, "page")
        error: str | None
        try:
            result = spec.func(ctx, spec.params.model_validate({"text": text}))
        except Exception as exc:
            delivered, route, error = False, "none", f"{type(exc).__name__}: {exc}"
        else:
            delivered, route = result.value is not False, str(result.output.get("route", "log"))
            error = str(result.output["error"]) if result.output.get("error") else None
        self._audit(
            "failover.recovery_gave_up",
            group,
            endpoint,
            attempts=attempts,
            action=recovery.action,
            paged=delivered,
            route=route,
            error=error,
        )
        log.error("failover.recovery_gave_up", service=group.service, endpoint=endpoint, route=route, paged=delivered)
        return delivered

    def _alert(self, group: FailoverGroup, endpoint: str, recovery: Recovery, started: datetime) -> dict[str, Any]:
        """What the context of every call of these attempts carries as its alert: routes and deduplicates the page."""
        return {
            "fingerprint": f"failover-recovery-{group.service}-{endpoint}-{int(started.timestamp())}",
            "status": "firing",
            "labels": {
                "alertname": "FailoverEndpointFailed",
                "service": group.service,
                "endpoint": endpoint,
                "severity": recovery.severity,
            },
            "annotations": {"summary": f"{group.service}/{endpoint} failed and did not recover"},
            "starts_at": started.isoformat(),
        }

    def _context(self, alert: dict[str, Any], key: str) -> ActionContext:
        rule = f"failover-recovery:{alert['labels']['service']}"
        ctx = self._contexts.for_page(
            execution_id=0, rule=rule, context={"alert": alert}, key=f"{alert['fingerprint']}:{key}"
        )
        return replace(ctx, ports=_outside_runs(ctx.ports))

    def _audit(self, what: str, group: FailoverGroup, endpoint: str, **detail: Any) -> None:
        try:
            self._contexts.ports.audit.record(
                actor=ACTOR,
                action=what,
                incident_id=None,
                execution_id=None,
                detail={"service": group.service, "endpoint": endpoint, **detail},
                now=self._contexts.clock(),
            )
        except Exception:  # the audit trail being down must not stop the attempts or the page
            log.exception("failover.recovery_audit_failed", action=what, service=group.service)


@dataclass(frozen=True)
class _NoExecutionAudit:
    """The audit port of a call outside any run: what an action audits is recorded without an execution."""

    inner: Any

    def record(self, **fields: Any) -> None:
        self.inner.record(**{**fields, "execution_id": None})

    def details(self, action: str, *, execution_id: int | None = None, incident_id: int | None = None) -> list[Any]:
        return [] if incident_id is None else self.inner.details(action, incident_id=incident_id)


def _outside_runs(ports: ActionPorts) -> ActionPorts:
    return replace(ports, audit=_NoExecutionAudit(ports.audit))
