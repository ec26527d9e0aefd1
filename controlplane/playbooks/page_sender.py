"""Owns how a page (playbooks/pages.py) reaches a person: `notify.escalate`, in the context of its execution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, select

from controlplane.actions.base import ActionRegistry
from controlplane.db.tables import executions_t
from controlplane.playbooks.contexts import ActionContexts
from controlplane.playbooks.pages import DuePage, Send, Sent
from controlplane.playbooks.slack_approvals import ApprovalRequestSender, Planner

ESCALATE = "notify.escalate"  # the action that tells on-call automation failed (actions/paging.py)


@dataclass(frozen=True)
class EscalationSender:
    """Sends a page through the registry's `notify.escalate`, in the context of the execution it is about."""

    engine: Engine
    contexts: ActionContexts
    registry: ActionRegistry

    def __call__(self, page: DuePage) -> Sent:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(executions_t.c.rule_name, executions_t.c.context).where(executions_t.c.id == page.execution_id)
            ).one()
        ctx = self.contexts.for_page(
            execution_id=page.execution_id, rule=row.rule_name, context=row.context, key=f"page:{page.kind}"
        )
        spec = self.registry.get(ESCALATE)
        result = spec.func(ctx, spec.params.model_validate({"reason": page.reason}))
        error = result.output.get("error")
        return Sent(route=str(result.output.get("route", "log")), delivered=result.value is True, error=error)


@dataclass(frozen=True)
class PageSenders:
    """Sends each page with the sender of its kind (an approval request is not an escalation), else `default`."""

    by_kind: Mapping[str, Send]
    default: Send

    def __call__(self, page: DuePage) -> Sent:
        return self.by_kind.get(page.kind, self.default)(page)


def page_sender(engine: Engine, contexts: ActionContexts, registry: ActionRegistry) -> PageSenders:
    """The Pager's sender: approval requests to Slack (or the log), every other page through `notify.escalate`."""
    ports = contexts.ports
    return PageSenders(
        {
            "approval_requested": ApprovalRequestSender(
                engine, ports.slack, ports.slack_channel, ports.incident_url, Planner(registry, contexts)
            )
        },
        default=EscalationSender(engine, contexts, registry),
    )
