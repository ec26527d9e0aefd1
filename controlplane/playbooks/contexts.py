"""Owns what an action is handed when a run calls it: the ActionContext of a step, a rollback or an escalation page.

The idempotency key of a call is stable across retries and resumes: `<execution>:<n>`, where n
is the step's index, 1000 + its index for its rollback, and 2000 + the failed step's index for
the page of an escalation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine

from controlplane.actions.base import ActionContext, AlertView, IncidentView
from controlplane.config import Settings
from controlplane.playbooks.step_store import Phase, Run

log = structlog.get_logger(__name__)

_ROLLBACK_KEYS = 1000
_ESCALATION_KEYS = 2000


@dataclass(frozen=True)
class ActionContexts:
    settings: Settings
    engine: Engine
    clock: Callable[[], datetime]
    rules: Callable[[], Any] | None = None  # the RuleSet in force: targets and failover groups for actions

    def for_step(
        self, run: Run, phase: Phase, index: int, started_at: datetime, deadline: float | None = None
    ) -> ActionContext:
        return self._context(run, index if phase == "forward" else _ROLLBACK_KEYS + index, started_at, deadline)

    def for_escalation(self, run: Run, failed_index: int) -> ActionContext:
        return self._context(run, _ESCALATION_KEYS + failed_index, self.clock(), None)

    def _context(self, run: Run, key: int, started_at: datetime, deadline: float | None) -> ActionContext:
        rules = self.rules() if self.rules is not None else None
        incident = run.context.get("incident")
        alert = run.context.get("alert")
        return ActionContext(
            execution_id=run.id,
            step_index=key,
            idempotency_key=f"{run.id}:{key}",
            rule=run.rule,
            incident=IncidentView(**incident) if incident else None,
            alert=AlertView(**alert) if alert else None,
            settings=self.settings,
            engine=self.engine,
            now=self.clock,
            step_started_at=started_at,
            dry_run=run.dry_run,
            log=log.bind(execution_id=run.id, step=key),
            targets=rules.targets if rules is not None else {},
            failover=rules.failover if rules is not None else {},
            deadline=deadline,
        )
