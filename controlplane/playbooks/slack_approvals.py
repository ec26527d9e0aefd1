"""Owns approvals in Slack: the message asking for one (sent as a page of kind `approval_requested`), who may
click it (console users with a `slack_user`), and what the message says once decided.

The message is queued in the transaction that made the execution wait (playbooks/trigger.py), so it goes out
after the commit, off the webhook's path, from any replica, and survives a crash in between (pages.py).
Clicks come back through api/slack.py and flows.decide_from_slack, the same approval as the console's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection, Engine, select

from controlplane.actions.base import ActionRegistry
from controlplane.actions.paging import with_retries
from controlplane.config import ConsoleUser
from controlplane.db.tables import incidents_t
from controlplane.integrations.slack import ApprovalCard, SlackClient, SlackError, approval_blocks, approval_text
from controlplane.integrations.slack_interactions import InteractionVerifier
from controlplane.playbooks import approval_plans, service
from controlplane.playbooks.contexts import ActionContexts
from controlplane.playbooks.pages import DuePage, Sent
from controlplane.playbooks.schemas import ExecutionDetail

log = structlog.get_logger(__name__)

IncidentUrl = Callable[[int], str | None]  # Ports.incident_url
DECIDERS = ("operator", "admin")  # console roles that may approve or reject


def card(conn: Connection, execution_id: int, *, incident_url: IncidentUrl, change: str | None = None) -> ApprovalCard:
    """The approval message as it should read now: buttons while it waits, its outcome once decided.

    `change`: what approving would do (the execution's plan), shown above the buttons when given.
    """
    run = service.get_execution(conn=conn, execution_id=execution_id)
    title = (
        conn.execute(select(incidents_t.c.title).where(incidents_t.c.id == run.incident_id)).scalar()
        if run.incident_id is not None
        else None
    )
    waiting = run.status == "awaiting_approval"
    progress = run.approval_progress or service.approval_progress(run.approvals_required, run.approved_by)
    return ApprovalCard(
        execution_id=run.id,
        rule=run.rule_name,
        playbook=run.playbook_name,
        reason="" if not waiting else run.reason,
        progress=progress,
        incident_id=run.incident_id,
        incident_title=title,
        url=incident_url(run.incident_id) if run.incident_id is not None else None,
        change=change,
        outcome=None if waiting else _outcome(run),
    )


def _outcome(run: ExecutionDetail) -> str:
    # Said from the approvals, not the reason: a worker may already have run it and changed the reason.
    status = run.status.replace("_", " ")
    if run.approved_by and len(run.approved_by) >= run.approvals_required:
        names = ", ".join(actor.removeprefix("user:") for actor in run.approved_by)
        return f"Approved by {names}; execution #{run.id} is {status}"
    return f"Execution #{run.id} is {status}: {run.reason}"


@dataclass(frozen=True)
class Planner:
    """The plan of an execution awaiting approval (approval_plans.py) as lines for the approval message; None
    when it cannot be planned (the message then asks for the playbook, as the console says)."""

    registry: ActionRegistry
    contexts: ActionContexts

    def __call__(self, conn: Connection, execution_id: int) -> str | None:
        try:
            plan = approval_plans.plan_of(
                conn, execution_id=execution_id, registry=self.registry, contexts=self.contexts
            )
        except Exception as exc:  # a target that cannot be read must not keep the question from being asked
            log.warning("approval.plan_failed", execution_id=execution_id, error=f"{type(exc).__name__}: {exc}")
            return None
        return "\n".join(f"• {step.sentence.split(': ', 1)[-1]}" for step in plan.steps) or None


@dataclass(frozen=True)
class ApprovalRequestSender:
    """Sends a page of kind `approval_requested`: the Slack message with Approve/Reject, or a log line
    when Slack is not configured (the console's approvals page lists it either way)."""

    engine: Engine
    slack: SlackClient | None
    channel: str
    incident_url: IncidentUrl
    planner: Planner | None = None  # the change approving would make, shown above the buttons

    def __call__(self, page: DuePage) -> Sent:
        with self.engine.connect() as conn:
            change = self.planner(conn, page.execution_id) if self.planner is not None else None
            shown = card(conn, page.execution_id, incident_url=self.incident_url, change=change)
        if shown.outcome is not None:  # decided (in the console) before the message went out: nothing to ask
            return Sent(route="log", delivered=True, error=None)
        if self.slack is None:
            log.warning(
                "approval.requested",
                execution_id=page.execution_id,
                rule=page.rule,
                approvals=shown.progress,
                url=shown.url,
                note="Slack is not configured: approve in the console (/approvals) or the API",
            )
            return Sent(route="log", delivered=True)
        slack = self.slack
        try:
            with_retries(
                lambda: slack.post(channel=self.channel, text=approval_text(shown), blocks=approval_blocks(shown))
            )
        except SlackError as exc:
            return Sent(route="slack", delivered=False, error=str(exc))
        return Sent(route="slack", delivered=True)


@dataclass(frozen=True)
class SlackApprovals:
    """What the interactions endpoint needs: the verifier (with its replay memory), the Slack client
    to answer and update with, and the console users by Slack member ID."""

    verifier: InteractionVerifier
    slack: SlackClient | None
    users: dict[str, ConsoleUser]
    incident_url: IncidentUrl
    api_url: str  # Slack's; a response_url on its host (or hooks.slack.com) is Slack's own

    @classmethod
    def build(
        cls,
        signing_secret: str,
        *,
        slack: SlackClient | None,
        users: Sequence[ConsoleUser],
        incident_url: IncidentUrl,
        api_url: str,
    ) -> SlackApprovals:
        by_slack = {user.slack_user: user for user in users if user.slack_user}
        return cls(InteractionVerifier(signing_secret), slack, by_slack, incident_url, api_url)

    def trusted_response_url(self, url: str | None) -> bool:
        """Only Slack's own hosts: the URL is in the (signed) payload, but a bug must not make us post elsewhere."""
        if not url:
            return False
        origin = "/".join(self.api_url.split("/", 3)[:3]) + "/"
        return url.startswith(("https://hooks.slack.com/", origin))
