"""Owns approvals in Slack: the message asking for one (sent as a page of kind `approval_requested`), who may
click it (console users with a `slack_user`), and what the message says once decided.

While it waits, the message shows the change approving would make (the execution's plan, approval_plans.py)
and its Approve button carries that plan's digest: a click approves the change it showed, or is refused
with the new one, the message then showing it (flows.decide_from_slack).

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
from controlplane.playbooks.planning import ExecutionPlan
from controlplane.playbooks.schemas import ExecutionDetail

log = structlog.get_logger(__name__)

IncidentUrl = Callable[[int], str | None]  # Ports.incident_url
DECIDERS = ("operator", "admin")  # console roles that may approve or reject


def card(
    conn: Connection, execution_id: int, *, incident_url: IncidentUrl, planner: Planner | None = None
) -> ApprovalCard:
    """The approval message as it should read now: buttons while it waits, its outcome once decided.

    `planner`: while it waits, the change approving would make (the execution's plan) is shown above the
    buttons, and Approve carries its digest.
    """
    run = service.get_execution(conn=conn, execution_id=execution_id)
    title = (
        conn.execute(select(incidents_t.c.title).where(incidents_t.c.id == run.incident_id)).scalar()
        if run.incident_id is not None
        else None
    )
    waiting = run.status == "awaiting_approval"
    change = planner(conn, execution_id) if waiting and planner is not None else None
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
        change=change.text if change else None,
        plan_digest=change.digest if change else None,
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
class Change:
    """A plan as the approval message shows it: its steps as lines, and its digest for the Approve button."""

    text: str | None
    digest: str

    @classmethod
    def of(cls, plan: ExecutionPlan) -> Change:
        lines = "\n".join(f"• {step.sentence.split(': ', 1)[-1]}" for step in plan.steps)
        return cls(lines or None, approval_plans.digest(plan))


@dataclass(frozen=True)
class Planner:
    """The plan of an execution awaiting approval (approval_plans.py) as the approval message shows it; None
    when it cannot be planned (the message then asks for the playbook, as the console says).

    With `recent`, a plan made in the last seconds is reused: the one a click's check has just made again
    (flows.decide_from_slack), so the updated message shows the change that check compared against."""

    registry: ActionRegistry
    contexts: ActionContexts
    recent: approval_plans.RecentPlans | None = None

    def __call__(self, conn: Connection, execution_id: int) -> Change | None:
        def make() -> ExecutionPlan:
            return approval_plans.plan_of(
                conn, execution_id=execution_id, registry=self.registry, contexts=self.contexts
            )

        try:
            plan = self.recent.get(execution_id, make) if self.recent is not None else make()
        except Exception as exc:  # a target that cannot be read must not keep the question from being asked
            log.warning("approval.plan_failed", execution_id=execution_id, error=f"{type(exc).__name__}: {exc}")
            return None
        return Change.of(plan)

    def check(self, engine: Engine, execution_id: int, seen: str | None) -> None:
        """Raises approval_plans.PlanDrifted, with the plan as it is now, unless its digest is `seen`.

        A click without a digest (a message sent before Approve carried one) is taken as not seen, and
        refused: nobody can tell which change that message showed, and approving blind is what this check
        is here to prevent. The refusal updates the message with the change and its digest, so the next
        click approves it (approving fails safe: one more click, never an unseen change)."""
        approval_plans.check_unchanged(
            engine,
            execution_id=execution_id,
            seen=seen or "",
            registry=self.registry,
            contexts=self.contexts,
            recent=self.recent,
        )


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
            shown = card(conn, page.execution_id, incident_url=self.incident_url, planner=self.planner)
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
    planner: Planner  # the change a click approves, checked and shown again

    @classmethod
    def build(
        cls,
        signing_secret: str,
        *,
        slack: SlackClient | None,
        users: Sequence[ConsoleUser],
        incident_url: IncidentUrl,
        api_url: str,
        planner: Planner,
    ) -> SlackApprovals:
        by_slack = {user.slack_user: user for user in users if user.slack_user}
        return cls(InteractionVerifier(signing_secret), slack, by_slack, incident_url, api_url, planner)

    def trusted_response_url(self, url: str | None) -> bool:
        """Only Slack's own hosts: the URL is in the (signed) payload, but a bug must not make us post elsewhere."""
        if not url:
            return False
        origin = "/".join(self.api_url.split("/", 3)[:3]) + "/"
        return url.startswith(("https://hooks.slack.com/", origin))
