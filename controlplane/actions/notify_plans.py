"""Owns the plans of the paging actions (actions/paging.py): who would be told, through what, and how.

A plan sends nothing: it reads the incident as it is now and the Slack thread it has, and says
where the message would go, with the same routing (notify_routing.py) and the same fallbacks
as the call. A channel that is not configured is not a refusal: the call records "not
delivered" and the playbook goes on, so the plan says that.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controlplane.actions.base import ActionContext, IncidentView, Plan, clip
from controlplane.actions.http import allowed_target
from controlplane.integrations import pagerduty
from controlplane.integrations.http import check_url, host_of
from controlplane.notify_routing import route


def incident_now(ctx: ActionContext) -> IncidentView | None:
    """The incident as it is now: the context holds a copy from when the execution was created."""
    if ctx.incident is None:
        return None
    state = ctx.ports.incidents.current(ctx.incident.id)
    if state is None:
        return ctx.incident
    return replace(ctx.incident, status=state.status, severity=state.severity, title=state.title)


def severity(ctx: ActionContext, incident: IncidentView | None) -> str:
    return incident.severity if incident else (ctx.alert.labels.get("severity", "none") if ctx.alert else "none")


def configured_route(ctx: ActionContext, target: str) -> str:
    """The routed channel if it is configured, else the other paging channel that is, else the log: a page
    about failed automation must not be lost to a channel nobody set up."""
    configured = {"pagerduty": ctx.ports.pagerduty is not None, "slack": ctx.ports.slack is not None, "log": True}
    if configured[target]:
        return target
    return next(name for name in ("pagerduty", "slack", "log") if configured[name])


def _unconfigured(name: str, setting: str) -> str:
    return f"{name} is not configured (CONTROLPLANE_{setting}): the step would record it as not delivered"


def slack_plan(ctx: ActionContext, action: str, text: str, channel: str) -> Plan:
    incident = incident_now(ctx)
    thread = ctx.ports.threads.thread_of(incident_id=incident.id, channel=channel) if incident else None
    change: dict[str, Any] = {"via": "slack", "channel": channel, "thread": thread, "text": text}
    if ctx.ports.slack is None:
        return Plan(action=action, target=channel, change=change, sentence=_unconfigured("Slack", "SLACK_TOKEN"))
    if thread is not None:
        where = f"reply in the incident's thread in {channel} on Slack"
    elif incident is not None:
        where = f"post incident #{incident.id}'s message to {channel} on Slack"
    else:
        where = f"post to {channel} on Slack"
    return Plan(action=action, target=channel, change=change, sentence=f"{where}: {clip(text, 60)}")


def pagerduty_plan(ctx: ActionContext, action: str, event: str, summary: str | None, level: str | None) -> Plan:
    incident = incident_now(ctx)
    # Without an incident the key is the run's own; a plan has no run yet (execution 0).
    run = str(ctx.execution_id) if ctx.execution_id else "<run id>"
    dedup = pagerduty.dedup_key(incident.id) if incident else f"controlplane-execution-{run}"
    chosen = level or pagerduty.severity_of(incident.severity if incident else "error")
    change = {"via": "pagerduty", "event_action": event, "dedup_key": dedup, "severity": chosen, "summary": summary}
    if ctx.ports.pagerduty is None:
        sentence = _unconfigured("PagerDuty", "PAGERDUTY_ROUTING_KEY")
    elif event == "trigger":
        sentence = f"page PagerDuty ({chosen}) with dedup key {dedup}"
    else:
        sentence = f"{event} the PagerDuty alert with dedup key {dedup}"
    return Plan(action=action, target="pagerduty", change=change, sentence=sentence)


def log_plan(action: str, text: str, level: str, why: str = "") -> Plan:
    return Plan(
        action=action,
        target=None,
        change={"via": "log", "level": level, "text": text},
        sentence=f"write to the service log ({level}){why}: {clip(text, 60)}",
    )


def routed_plan(ctx: ActionContext, action: str, text: str, *, fallback: bool) -> Plan:
    """notify.oncall's and notify.escalate's plan: the route by the incident's severity, as the call takes it."""
    level = severity(ctx, incident_now(ctx))
    routed = route(level, ctx.ports.notify_routes)
    target = configured_route(ctx, routed) if fallback else routed
    if target == "pagerduty":
        plan = pagerduty_plan(ctx, action, "trigger", text, None)
    elif target == "slack":
        plan = slack_plan(ctx, action, text, ctx.ports.slack_channel)
    else:
        plan = log_plan(action, text, "warning", f" only: severity {level} routes there")
    change = {**plan.change, "route": target, "routed": routed, "incident_severity": level}
    return replace(plan, change=change)


def webhook_plan(ctx: ActionContext, url: str) -> Plan:
    try:
        check_url(url)
    except ValueError as exc:
        return Plan(
            action="notify.webhook",
            change={"via": "webhook", "delivered": False},
            sentence=f"send no webhook: url: {exc} (the step would record it as not delivered)",
        )
    host = host_of(url)
    if allowed_target(url, ctx.ports.http_allowed_hosts) is None:
        return Plan(
            action="notify.webhook",
            change={"via": "webhook", "host": host, "delivered": False},
            sentence=f"send no webhook: host {host!r} is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS (not delivered)",
        )
    change = {"via": "webhook", "host": host}
    return Plan(action="notify.webhook", target=host, change=change, sentence=f"POST the webhook to {host}")


def escalation_text(ctx: ActionContext, reason: str) -> str:
    """What notify.escalate sends: the rule, the run, the reason, and the incident's link last (kept when cut)."""
    text = f"Remediation escalated to a human: rule {ctx.rule}, execution #{ctx.execution_id}: {reason}"
    url = ctx.ports.incident_url(ctx.incident.id) if ctx.incident else None
    return f"{text[:39_000]} {url}" if url else text[:40_000]


# The actions' plans, by their parameters (paging.py's models: typed there, read here by name).


def plan_slack(ctx: ActionContext, params: Any) -> Plan:
    return slack_plan(ctx, "notify.slack", params.text, params.channel or ctx.ports.slack_channel)


def plan_pagerduty(ctx: ActionContext, params: Any) -> Plan:
    return pagerduty_plan(ctx, "notify.pagerduty", params.action, params.summary, params.severity)


def plan_webhook(ctx: ActionContext, params: Any) -> Plan:
    return webhook_plan(ctx, params.url)


def plan_oncall(ctx: ActionContext, params: Any) -> Plan:
    return routed_plan(ctx, "notify.oncall", params.text, fallback=False)


def plan_escalate(ctx: ActionContext, params: Any) -> Plan:
    return routed_plan(ctx, "notify.escalate", escalation_text(ctx, params.reason), fallback=True)
