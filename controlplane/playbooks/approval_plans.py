"""Owns the change an approval is for: the plan of an execution that waits for approval, and its digest.

A person approves a concrete change ("scale agents/langgraph 3 → 6 replicas"), not a playbook's
name. The approval card shows the execution's plan, made from its own snapshot (playbook, params,
alert and incident) against the targets as they are now, and carries the plan's digest. When the
approval comes back, the plan is made again: if the world moved (replicas are 8 now, another graph
was disabled), the digest differs and the approval is refused with the new plan, to approve again.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy import Connection, Engine, select

from controlplane.actions.base import ActionRegistry, AlertView, IncidentView
from controlplane.db.tables import executions_t
from controlplane.errors import Conflict, missing
from controlplane.playbooks.contexts import ActionContexts
from controlplane.playbooks.planning import ExecutionPlan, plan_playbook
from controlplane.rules.schema import Playbook, Rule


def plan_of(
    conn: Connection, *, execution_id: int, registry: ActionRegistry, contexts: ActionContexts
) -> ExecutionPlan:
    """The plan of the execution's own playbook snapshot, for its alert and incident, on the targets now."""
    e = executions_t.c
    row = conn.execute(
        select(e.rule_name, e.status, e.reason, e.playbook, e.params, e.context).where(e.id == execution_id)
    ).first()
    if row is None:
        raise missing("execution", execution_id)
    if not row.playbook:  # a suppressed trigger keeps no playbook copy (trigger.py): there is nothing to plan
        raise Conflict(f"execution {execution_id} was {row.status} ({row.reason}): it has no playbook to plan")
    playbook = Playbook.model_validate(row.playbook)
    # The run's parameters were merged when it was made (playbook defaults, then the rule's): the snapshot is it.
    rule = Rule(name=row.rule_name, match={"alertname": "~"}, playbook=playbook.name, params=row.params)
    incident, alert = row.context.get("incident"), row.context.get("alert")
    return plan_playbook(
        registry=registry,
        contexts=contexts,
        rule=rule,
        playbook=playbook.model_copy(update={"params": {}}),
        alert=AlertView(**alert) if alert else None,
        incident=IncidentView(**incident) if incident else None,
    )


def digest(plan: ExecutionPlan) -> str:
    """What identifies the change a plan describes: each step's action, inputs, status and change (not its
    wording or when it was made), so the same change has the same digest."""
    steps = [
        {
            "action": step.action,
            "status": step.status,
            "inputs": step.inputs,
            "change": dict(step.plan.change) if step.plan else None,
            "refused": step.plan.refused if step.plan else None,
            "noop": step.plan.noop if step.plan else None,
            "error": step.error,
        }
        for step in plan.steps
    ]
    text = json.dumps({"steps": steps, "stopped": plan.stopped}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PlanDrifted(Conflict):
    """The change is not the one the approver saw: approve the new plan instead."""

    def __init__(self, plan: ExecutionPlan) -> None:
        sentences = "; ".join(step.sentence for step in plan.steps)
        super().__init__(f"the change is no longer the one you approved; it is now: {sentences}. Approve it again")
        self.plan = plan


def check_unchanged(
    engine: Engine,
    *,
    execution_id: int,
    seen: str,
    registry: ActionRegistry,
    contexts: ActionContexts,
    recent: RecentPlans | None = None,
) -> ExecutionPlan:
    """The execution's plan made again (reading its targets, outside any write transaction); PlanDrifted when
    its digest is not `seen`, the one the approver saw. The approval that follows is its own transaction: a
    change in the moment between the two is not caught (the step's own bounds still hold then)."""
    with engine.connect() as conn:
        plan = plan_of(conn, execution_id=execution_id, registry=registry, contexts=contexts)
    if recent is not None:  # the approvals page then shows this plan, the one a refusal names
        recent.put(execution_id, plan)
    if digest(plan) != seen:
        raise PlanDrifted(plan)
    return plan


class RecentPlans:
    """Plans of executions awaiting approval, kept `ttl` seconds: the approvals page redraws every few seconds
    and must not read every target of every waiting execution each time. Staleness is safe: an approval with a
    digest makes its plan again (check_unchanged). At most `size` plans are kept."""

    def __init__(self, ttl: float = 30.0, size: int = 500, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._size, self._clock = ttl, size, clock
        self._plans: OrderedDict[int, tuple[float, ExecutionPlan]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, execution_id: int, make: Callable[[], ExecutionPlan]) -> ExecutionPlan:
        now = self._clock()
        with self._lock:
            kept = self._plans.get(execution_id)
            if kept is not None and now - kept[0] < self._ttl:
                return kept[1]
        plan = make()  # outside the lock: it reads targets
        self.put(execution_id, plan, now)
        return plan

    def put(self, execution_id: int, plan: ExecutionPlan, at: float | None = None) -> None:
        with self._lock:
            self._plans[execution_id] = (self._clock() if at is None else at, plan)
            self._plans.move_to_end(execution_id)
            while len(self._plans) > self._size:
                self._plans.popitem(last=False)
