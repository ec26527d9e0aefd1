"""Owns what came of a scenario (runner.py makes it, expect.py compares it): its executions, incidents, pages.

Times are offsets from the scenario's 0s, written as durations (`4m`), as the scenario file writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from controlplane.durations import format_duration
from controlplane.playbooks.planning import ExecutionPlan


@dataclass
class Execution:
    """One execution as the scenario saw it; `plan` is its plan when it started (None: it never did), the steps
    after a verify.resolved as planned when its incident resolved."""

    id: int
    at: timedelta
    rule: str
    playbook: str
    alert: str | None
    key: str
    decision: str  # run, dry_run, awaiting_approval, suppressed
    guard: str | None
    reason: str
    status: str
    ended_at: timedelta | None = None
    plan: ExecutionPlan | None = None
    incident_id: int | None = None
    verify_within: timedelta | None = None
    verify_index: int | None = None  # its verify.resolved step: the steps after it are made when it resolves

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": format_duration(self.at),
            "rule": self.rule,
            "playbook": self.playbook,
            "alert": self.alert,
            "key": self.key,
            "decision": self.decision,
            "guard": self.guard,
            "reason": self.reason,
            "status": self.status,
            "ended_at": format_duration(self.ended_at) if self.ended_at is not None else None,
        }
        if self.plan is not None:
            out["stopped"] = self.plan.stopped
            out["steps"] = [
                {
                    "action": s.action,
                    "status": s.status,
                    "sentence": s.sentence.split(": ", 1)[-1],
                    "change": dict(s.plan.change) if s.plan else {},
                    "refused": s.plan.refused if s.plan else None,
                    "target": s.plan.target if s.plan else None,
                }
                for s in self.plan.steps
            ]
        return out


@dataclass
class Outcome:
    """What came of a scenario: incidents, executions and pages in order, and the world at the end."""

    incidents: list[dict[str, Any]] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)
    pages: list[dict[str, Any]] = field(default_factory=list)
    world: dict[str, Any] = field(default_factory=dict)
