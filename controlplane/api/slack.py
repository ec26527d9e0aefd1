"""Slack's interactive requests: the Approve and Reject buttons of approval messages."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from fastapi import APIRouter, BackgroundTasks, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from controlplane import flows
from controlplane.api.deps import ServicesDep
from controlplane.api.errors import error_responses
from controlplane.errors import NotFound
from controlplane.integrations.slack import SlackError, approval_blocks, approval_text
from controlplane.integrations.slack_interactions import Click, InteractionRefused, parse_click
from controlplane.playbooks.slack_approvals import SlackApprovals

log = structlog.get_logger(__name__)

# No token: Slack cannot send one. The request's signature (the app's signing secret) is its authentication.
router = APIRouter(prefix="/api/v1/slack", tags=["slack"])


@router.post(
    "/interactions",
    summary="Slack's interactivity Request URL: Approve/Reject clicked on an approval message",
    responses=error_responses(400, 401, 404),
)
async def interactions(request: Request, services: ServicesDep, background: BackgroundTasks) -> Response:
    slack = services.slack_approvals
    if slack is None:
        raise NotFound("Slack interactions are not configured: set CONTROLPLANE_SLACK_SIGNING_SECRET")
    body = await request.body()
    try:
        slack.verifier.verify(body, request.headers)
        click = parse_click(body)
    except InteractionRefused as exc:
        log.warning("slack.interaction_refused", status=exc.status, reason=str(exc))
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)
    answer = await run_in_threadpool(
        flows.decide_from_slack,
        engine=services.engine,
        click=click,
        users=slack.users,
        now=datetime.now(UTC),
        wake=services.wake_workers,
        incident_url=slack.incident_url,
        planner=slack.planner,
    )
    # Slack wants its 200 within 3 seconds: the answers to Slack go after it.
    background.add_task(_tell_slack, slack, click, answer)
    return Response(status_code=200)


def _tell_slack(slack: SlackApprovals, click: Click, answer: flows.SlackAnswer) -> None:
    """Tell the person who clicked why it was refused (them alone), and make the message say where it stands."""
    if slack.slack is None:
        log.warning("slack.no_token", note="set CONTROLPLANE_SLACK_TOKEN to answer and update approval messages")
        return
    try:
        if answer.refusal is not None and slack.trusted_response_url(click.response_url):
            slack.slack.respond(str(click.response_url), answer.refusal)
        if answer.card is not None and click.channel and click.message_ts:
            slack.slack.update(
                channel=click.channel,
                ts=click.message_ts,
                text=approval_text(answer.card),
                blocks=approval_blocks(answer.card),
            )
    except (SlackError, OSError) as exc:
        log.warning("slack.answer_failed", execution_id=click.execution_id, error=str(exc))
