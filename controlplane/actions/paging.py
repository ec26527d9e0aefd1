"""Owns paging actions: `notify.slack`, `notify.pagerduty`, `notify.webhook`, `notify.oncall` (routes by
severity) and `notify.escalate` (the executor's page when a playbook gives up, routed like notify.oncall).

A failed notification never fails the remediation: each call is retried (3 tries, backoff under
a few seconds, Slack's and PagerDuty's Retry-After honoured up to a cap), and when it still
fails, or the channel is not configured, the step succeeds with value False and output
`{"delivered": false, "error": ...}`, audited as `notify.failed` on the incident's timeline.
Deliveries are audited as `notify.sent`. The Slack thread of each incident is kept by
notify_threads.py (the `threads` port).

Idempotency: the executor never re-runs a step it recorded as succeeded, so a duplicate needs
a crash between the send and that record. Before sending, a step looks for its own
`notify.sent` (same idempotency key), which narrows the window to the moment between the send
and that audit row. PagerDuty needs no more: every event of an incident carries its dedup key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import tenacity
from pydantic import Field

from controlplane import runbooks
from controlplane.actions.base import ActionContext, ActionResult, IncidentView, Params, action, clip
from controlplane.actions.http import allowed_target
from controlplane.actions.notify_plans import (
    configured_route,
    escalation_text,
    incident_now,
    plan_escalate,
    plan_oncall,
    plan_pagerduty,
    plan_slack,
    plan_webhook,
)
from controlplane.actions.notify_plans import severity as incident_severity
from controlplane.integrations import pagerduty, slack
from controlplane.integrations.http import check_url, host_of, url_parts
from controlplane.integrations.pagerduty import PagerDutyClient, PagerDutyError
from controlplane.integrations.slack import IncidentCard, SlackClient, SlackError
from controlplane.notify_routing import route
from controlplane.resilience.retry import is_retriable

T = TypeVar("T")
Client = TypeVar("Client", SlackClient, PagerDutyClient)

ATTEMPTS = 3
_BACKOFF_FIRST = 0.25  # seconds before the second try; doubles, capped below
_BACKOFF_MAX = 2.0
# A notification late by more than this is not worth holding the playbook for.
_RETRY_AFTER_MAX = 5.0


class NotDelivered(Exception):
    """A notification that no retry can deliver: the channel is not configured or not allowed."""


# -- the delivery rule: bounded retries, never raising, always audited -------------------------


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, SlackError | PagerDutyError):
        return exc.retriable
    return is_retriable(exc)


def _wait(state: tenacity.RetryCallState) -> float:
    backoff = min(_BACKOFF_FIRST * 2 ** (state.attempt_number - 1), _BACKOFF_MAX)
    error = state.outcome.exception() if state.outcome is not None else None
    hint = getattr(error, "retry_after", None)
    return max(backoff, min(float(hint), _RETRY_AFTER_MAX)) if hint else backoff


def with_retries(call: Callable[[], T]) -> T:
    """Run one outside call with the notification retry policy; raises its last error."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=_wait,
        retry=tenacity.retry_if_exception(_worth_retrying),
        reraise=True,
    )
    return retrying(call)


def _audit(ctx: ActionContext, what: str, detail: dict[str, Any]) -> None:
    try:
        ctx.audit(what, detail)
    except Exception as exc:  # the audit of a notification must not fail the remediation either
        ctx.log.error("notify.audit_failed", audit=what, error=f"{type(exc).__name__}: {exc}")


def _already_sent(ctx: ActionContext) -> dict[str, Any] | None:
    for detail in ctx.ports.audit.details("notify.sent", execution_id=ctx.execution_id):
        if detail.get("idempotency_key") == ctx.idempotency_key:
            return detail
    return None


def deliver(ctx: ActionContext, via: str, send: Callable[[], dict[str, Any]]) -> ActionResult:
    """Run `send` once per step: value True and its output when delivered, value False when not. Never raises."""
    prior = _already_sent(ctx)
    if prior is not None:
        prior.pop("idempotency_key", None)
        return ActionResult(value=True, output={**prior, "repeat": True})
    try:
        output = send()
    except Exception as exc:
        error = str(exc) or type(exc).__name__
        ctx.log.error("notify.failed", via=via, error=error)
        _audit(ctx, "notify.failed", {"via": via, "error": error, "idempotency_key": ctx.idempotency_key})
        return ActionResult(value=False, output={"delivered": False, "via": via, "error": error})
    output = {"delivered": True, "via": via, **output}
    _audit(ctx, "notify.sent", {**output, "idempotency_key": ctx.idempotency_key})
    return ActionResult(value=True, output=output)


def _configured(client: Client | None, service: str, setting: str) -> Client:
    if client is None:
        raise NotDelivered(f"{service} is not configured: set CONTROLPLANE_{setting} or CONTROLPLANE_{setting}_FILE")
    return client


def _runbook(ctx: ActionContext) -> str | None:
    """The alert's runbook_url as an absolute http(s) link (controlplane/runbooks.py), when it has one: a path
    opens nowhere from Slack or PagerDuty, so without CONTROLPLANE_PUBLIC_URL only absolute ones are linked."""
    if ctx.alert is None:
        return None
    url = runbooks.link(ctx.alert.annotations.get("runbook_url"), public_url=ctx.ports.public_url)
    return url if url and url.startswith(("http://", "https://")) else None


# -- Slack ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Root:
    """What the incident's root message in a channel shows, as our audit trail recorded it."""

    channel_id: str
    status: str
    summary: str


def _root_shown(ctx: ActionContext, incident_id: int, channel: str) -> _Root | None:
    # The thread keeps only the root message's ts; which status the message shows and its
    # channel ID are in the `notify.sent` events of the posts and updates that set them.
    details = ctx.ports.audit.details("notify.sent", incident_id=incident_id)
    mine = [d for d in details if d.get("via") == "slack" and d.get("channel") == channel]
    shown = next((d for d in mine if "shown_status" in d), None)
    root = next((d for d in mine if d.get("root")), None)
    if shown is None or root is None:
        return None
    return _Root(channel_id=str(root["channel_id"]), status=str(shown["shown_status"]), summary=str(root["summary"]))


def send_slack(ctx: ActionContext, text: str, channel: str) -> dict[str, Any]:
    """Post `text`: the incident's first message in `channel` is its root, later ones are thread replies."""
    client = _configured(ctx.ports.slack, "Slack", "SLACK_TOKEN")
    incident = incident_now(ctx)
    if incident is None:
        message = with_retries(lambda: client.post(channel=channel, text=slack.escape(text)))
        return {"channel": channel, "channel_id": message.channel, "ts": message.ts}
    card = IncidentCard(
        id=incident.id,
        title=incident.title,
        severity=incident.severity,
        status=incident.status,
        summary=text,
        url=ctx.ports.incident_url(incident.id),
        runbook_url=_runbook(ctx),
    )
    root_ts = ctx.ports.threads.thread_of(incident_id=incident.id, channel=channel)
    if root_ts is None:
        message = with_retries(
            lambda: client.post(channel=channel, text=slack.incident_text(card), blocks=slack.incident_blocks(card))
        )
        ctx.ports.threads.remember(incident_id=incident.id, channel=channel, ts=message.ts, now=ctx.now())
        return {
            "channel": channel,
            "channel_id": message.channel,
            "ts": message.ts,
            "root": True,
            "shown_status": incident.status,
            "summary": text,
        }
    shown = _root_shown(ctx, incident.id, channel)
    reply = with_retries(
        lambda: client.post(channel=shown.channel_id if shown else channel, text=slack.escape(text), thread_ts=root_ts)
    )
    output: dict[str, Any] = {"channel": channel, "channel_id": reply.channel, "ts": reply.ts, "thread_ts": root_ts}
    if shown is None or shown.status != incident.status:
        card = replace(card, summary=shown.summary if shown else "")
        try:
            with_retries(
                lambda: client.update(
                    channel=reply.channel,
                    ts=root_ts,
                    text=slack.incident_text(card),
                    blocks=slack.incident_blocks(card),
                )
            )
            output["shown_status"] = incident.status
        except SlackError as exc:
            # The reply went out, so this was delivered; the root shows the old status until the next update.
            output["root_update_error"] = str(exc)
    return output


class SlackParams(Params):
    text: str = Field(min_length=1, max_length=40_000)
    channel: str | None = Field(default=None, description="Default: CONTROLPLANE_SLACK_CHANNEL")


def _undelivered(what: str, output: dict[str, Any]) -> str | None:
    """The description of a notification that did not go out, or None when it did."""
    if output.get("delivered") is not False:
        return None
    return f"Could not {what}: {clip(str(output.get('error') or 'not delivered'), 160)}"


def _posted(params: SlackParams, output: dict[str, Any]) -> str:
    channel = output.get("channel") or params.channel or "the default channel"
    where = "in the incident's thread in " if output.get("thread_ts") else "to "
    return _undelivered("post to Slack", output) or f"Posted {where}{channel} on Slack"


@action("notify.slack", params=SlackParams, describe_effect=_posted, plan=plan_slack)
def notify_slack(ctx: ActionContext, params: SlackParams) -> ActionResult:
    """Post to Slack: the incident's message first, then replies in its thread; never fails the playbook."""
    channel = params.channel or ctx.ports.slack_channel
    return deliver(ctx, "slack", lambda: send_slack(ctx, params.text, channel))


# -- PagerDuty -----------------------------------------------------------------------------


def _source(ctx: ActionContext, incident: IncidentView | None) -> str:
    labels = {**(incident.group_labels if incident else {}), **(ctx.alert.labels if ctx.alert else {})}
    return labels.get("instance") or labels.get("namespace") or "controlplane"


def _pagerduty_links(
    incident: IncidentView | None, url: str | None, runbook: str | None
) -> list[dict[str, str]] | None:
    links = [{"href": url, "text": f"Incident #{incident.id} in controlplane"}] if url and incident else []
    if runbook:
        links.append({"href": runbook, "text": "Runbook"})
    return links or None


def _dedup_without_incident(ctx: ActionContext) -> str:
    # A page outside any run (execution 0: failover/recovery.py) has its own alert: one PagerDuty
    # alert per failed recovery, not one for every page that has no execution.
    if ctx.execution_id == 0 and ctx.alert is not None:
        return f"controlplane-{ctx.alert.fingerprint}"[:255]
    return f"controlplane-execution-{ctx.execution_id}"


def send_pagerduty(
    ctx: ActionContext,
    event_action: pagerduty.EventAction,
    summary: str | None = None,
    severity: pagerduty.Severity | None = None,
) -> dict[str, Any]:
    client = _configured(ctx.ports.pagerduty, "PagerDuty", "PAGERDUTY_ROUTING_KEY")
    incident = incident_now(ctx)
    dedup = pagerduty.dedup_key(incident.id) if incident else _dedup_without_incident(ctx)
    url = ctx.ports.incident_url(incident.id) if incident else None
    alert_summary = ctx.alert.annotations.get("summary", "") if ctx.alert else ""
    answer = with_retries(
        lambda: client.send(
            action=event_action,
            dedup_key=dedup,
            summary=summary or (incident.title if incident else "") or alert_summary or f"rule {ctx.rule}",
            source=_source(ctx, incident),
            severity=severity or pagerduty.severity_of(incident.severity if incident else "error"),
            custom_details={
                "incident_id": incident.id if incident else None,
                "incident_status": incident.status if incident else None,
                "labels": incident.group_labels if incident else {},
                "rule": ctx.rule,
                "execution_id": ctx.execution_id,
            },
            links=_pagerduty_links(incident, url, _runbook(ctx)),
            client_url=ctx.ports.public_url,
        )
    )
    return {"event_action": event_action, "dedup_key": answer.get("dedup_key", dedup), "status": answer.get("status")}


class PagerDutyParams(Params):
    action: pagerduty.EventAction = "trigger"
    summary: str | None = Field(default=None, description="Default: the incident's title")
    severity: pagerduty.Severity | None = Field(default=None, description="Default: from the incident's severity")


_EVENT_VERB = {"trigger": "Triggered", "acknowledge": "Acknowledged", "resolve": "Resolved"}


def _paged(params: PagerDutyParams, output: dict[str, Any]) -> str:
    event = str(output.get("event_action") or params.action)
    severity = f" ({params.severity})" if params.severity and event == "trigger" else ""
    described = f"{_EVENT_VERB.get(event, event)} the incident's PagerDuty alert{severity}"
    return _undelivered(f"{event} the PagerDuty alert", output) or described


@action("notify.pagerduty", params=PagerDutyParams, describe_effect=_paged, plan=plan_pagerduty)
def notify_pagerduty(ctx: ActionContext, params: PagerDutyParams) -> ActionResult:
    """Trigger, acknowledge or resolve the incident's PagerDuty alert (one per incident); never fails the playbook."""
    return deliver(ctx, "pagerduty", lambda: send_pagerduty(ctx, params.action, params.summary, params.severity))


# -- webhook -------------------------------------------------------------------------------


class WebhookParams(Params):
    url: str  # checked when sent: a notification never fails the playbook, a bad URL included
    body: dict[str, Any] | str = Field(default_factory=dict, description="JSON object, or text sent as text/plain")
    timeout: float = Field(default=10.0, gt=0, le=60)


def send_webhook(ctx: ActionContext, params: WebhookParams) -> dict[str, Any]:
    try:
        check_url(params.url)
    except ValueError as exc:
        raise NotDelivered(f"url: {exc}") from None
    parts = url_parts(params.url)
    if parts is None or allowed_target(params.url, ctx.ports.http_allowed_hosts) is None:
        raise NotDelivered(f"host {host_of(params.url)!r} is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS")

    def post() -> int:
        timeout = ctx.time_left(params.timeout)  # each try ends by the step's deadline; none starts after it
        return ctx.ports.http.post_webhook(
            params.url, params.body, idempotency_key=ctx.idempotency_key, timeout=timeout
        )

    # Only the host is recorded: webhook URLs often carry their secret in the path.
    return {"host": parts.host, "status_code": with_retries(post)}


def _webhook_target(ctx: ActionContext, params: WebhookParams) -> str | None:
    # None for a host off the allow-list: it is refused (not delivered) without a breaker of its own.
    return allowed_target(params.url, ctx.ports.http_allowed_hosts)


def _posted_webhook(_params: WebhookParams, output: dict[str, Any]) -> str:
    described = f"Sent the webhook to {output.get('host')} (HTTP {output.get('status_code')})"
    return _undelivered("send the webhook", output) or described


@action(
    "notify.webhook", params=WebhookParams, target=_webhook_target, describe_effect=_posted_webhook, plan=plan_webhook
)
def notify_webhook(ctx: ActionContext, params: WebhookParams) -> ActionResult:
    """POST a templated body to a host or host:port in CONTROLPLANE_HTTP_ALLOWED_HOSTS; never fails the playbook."""
    return deliver(ctx, "webhook", lambda: send_webhook(ctx, params))


# -- on-call routing -----------------------------------------------------------------------


class OncallParams(Params):
    text: str = Field(min_length=1, max_length=40_000)


def _log_only(ctx: ActionContext, text: str, severity: str) -> dict[str, Any]:
    ctx.log.warning("notify.oncall", text=text, severity=severity, rule=ctx.rule)
    return {"level": "warning"}


_ROUTE_NAME = {"pagerduty": "PagerDuty", "slack": "Slack", "log": "the service log"}


def _routed(output: dict[str, Any], *, paged: str, posted: str, logged: str) -> str:
    """What a message routed by severity did: `paged` via PagerDuty, `posted` to Slack, `logged` (the message) only."""
    route, severity = str(output.get("route") or output.get("via") or "log"), output.get("severity", "?")
    failed = _undelivered(f"reach on-call via {_ROUTE_NAME.get(route, route)}", output)
    if failed:
        return failed
    if route == "pagerduty":
        return f"{paged} via PagerDuty ({severity})"
    if route == "slack":
        return f"{posted} in {output.get('channel')} on Slack ({severity})"
    return f"Paged nobody: {logged} went to the service log only (severity {severity} routes there)"


def _told(_params: OncallParams, output: dict[str, Any]) -> str:
    return _routed(output, paged="Paged on-call", posted="Notified on-call", logged="the on-call message")


def _send_to(ctx: ActionContext, target: str, text: str, severity: str) -> ActionResult:
    senders: dict[str, Callable[[], dict[str, Any]]] = {
        "pagerduty": lambda: send_pagerduty(ctx, "trigger", text),
        "slack": lambda: send_slack(ctx, text, ctx.ports.slack_channel),
        "log": lambda: _log_only(ctx, text, severity),
    }
    result = deliver(ctx, target, senders[target])
    result.output = {**result.output, "route": target, "severity": severity}
    return result


@action("notify.oncall", params=OncallParams, describe_effect=_told, plan=plan_oncall)
def notify_oncall(ctx: ActionContext, params: OncallParams) -> ActionResult:
    """Tell on-call by the incident's severity (CONTROLPLANE_NOTIFY_ROUTES): PagerDuty, Slack or the log."""
    severity = incident_severity(ctx, incident_now(ctx))
    return _send_to(ctx, route(severity, ctx.ports.notify_routes), params.text, severity)


class EscalateParams(Params):
    reason: str = Field(min_length=1, description="Why the playbook gave up")


def _escalated(_params: EscalateParams, output: dict[str, Any]) -> str:
    return _routed(output, paged="Escalated to on-call", posted="Escalated to on-call", logged="the escalation")


@action("notify.escalate", params=EscalateParams, describe_effect=_escalated, plan=plan_escalate)
def notify_escalate(ctx: ActionContext, params: EscalateParams) -> ActionResult:
    """Tell on-call that automation failed, routed like notify.oncall, with the incident's link: sent for
    every page of playbooks/pages.py (a failed run, an expired approval, a loop breaker that tripped).
    When the routed channel is not configured, the other one is used, else the log (at error level)."""
    text = escalation_text(ctx, params.reason)
    severity = incident_severity(ctx, incident_now(ctx))
    routed = route(severity, ctx.ports.notify_routes)
    target = configured_route(ctx, routed)
    result = _send_to(ctx, target, text, severity)
    if target != routed:
        result.output["routed"] = routed  # where it should have gone: that channel is not configured
    return result
