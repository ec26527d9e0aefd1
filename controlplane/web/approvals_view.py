"""Owns what the approvals page shows: each execution awaiting approval with its incident, its rule's matchers,
who approved so far, and the plan of the change it would make."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, select

from controlplane.actions.base import ActionRegistry
from controlplane.db.tables import executions_t, incidents_t
from controlplane.playbooks import approval_plans
from controlplane.playbooks import service as executions
from controlplane.playbooks.contexts import ActionContexts
from controlplane.playbooks.planning import ExecutionPlan
from controlplane.playbooks.schemas import ExecutionOut
from controlplane.rules.loader import RuleSet
from controlplane.rules.schema import Rule

# -- approvals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalView:
    execution: ExecutionOut
    incident_title: str | None
    params: dict[str, Any]
    rule_match: dict[str, str] | None = None  # the `match:` of the rule in force by that name, if an alert rule
    approved_by: tuple[str, ...] = ()  # who approved so far, when it needs more than one
    plan: ExecutionPlan | None = None  # the change it would make now (approval_plans.py); None: not planned
    plan_digest: str = ""  # sent back with the approval: a plan that moved since is refused
    plan_error: str = ""  # why it could not be planned (the approver then approves the playbook, unseen)

    @property
    def approval_progress(self) -> str:  # "1 of 2 approvals (alice)"
        return executions.approval_progress(self.execution.approvals_required, self.approved_by)


def with_plans(
    items: list[ApprovalView],
    *,
    engine: Engine,
    registry: ActionRegistry,
    contexts: ActionContexts,
    recent: approval_plans.RecentPlans,
) -> list[ApprovalView]:
    """Each approval with the plan of its change (its targets are read, nothing is written), made at most once
    per `recent`'s time to live: the page redraws every few seconds."""

    def make(execution_id: int) -> ExecutionPlan:
        with engine.connect() as conn:
            return approval_plans.plan_of(conn, execution_id=execution_id, registry=registry, contexts=contexts)

    planned = []
    for item in items:
        run_id = item.execution.id
        try:
            plan = recent.get(run_id, partial(make, run_id))
        except Exception as exc:  # a target that cannot be read: say so on the card, approve without a plan
            planned.append(replace(item, plan_error=f"{type(exc).__name__}: {exc}"[:300]))
            continue
        planned.append(replace(item, plan=plan, plan_digest=approval_plans.digest(plan)))
    return planned


def approvals(*, conn: Connection, ruleset: RuleSet | None = None, limit: int = 200) -> list[ApprovalView]:
    """The executions awaiting approval, each with its incident's title, its params and its rule's matchers."""
    waiting = executions.list_executions(conn=conn, statuses=["awaiting_approval"], limit=limit).items
    incident_ids = {run.incident_id for run in waiting if run.incident_id is not None}
    titles = dict(
        conn.execute(select(incidents_t.c.id, incidents_t.c.title).where(incidents_t.c.id.in_(incident_ids))).all()
        if incident_ids
        else []
    )
    params = dict(
        conn.execute(
            select(executions_t.c.id, executions_t.c.params).where(executions_t.c.id.in_([r.id for r in waiting]))
        ).all()
        if waiting
        else []
    )
    rules = ruleset or RuleSet.empty()
    given = executions.approvers(conn=conn, execution_ids=[run.id for run in waiting])
    return [
        ApprovalView(
            run,
            titles.get(run.incident_id),
            params.get(run.id) or {},
            _match_of(rules.rule(run.rule_name)),
            tuple(given.get(run.id, ())),
        )
        for run in waiting
    ]


def _match_of(rule: Rule | None) -> dict[str, str] | None:
    return dict(rule.match) if rule is not None and rule.match is not None else None
