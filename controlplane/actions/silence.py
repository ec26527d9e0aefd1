"""Owns the silence actions: `alertmanager.silence` and its inverse, thin over the silences domain (silences/).

A rule rolls a silence back with
`rollback: {action: alertmanager.expire_silence, with: {silence_id: "{{ steps.<id>.value }}"}}`.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from pydantic import Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.durations import Duration, format_duration, spoken
from controlplane.integrations.alertmanager import AlertmanagerError
from controlplane.silences.service import MAX_SILENCE


class SilenceParams(Params):
    duration: Duration = Field(default=timedelta(hours=1), gt=timedelta(0), le=MAX_SILENCE)
    comment: str | None = Field(default=None, max_length=2000)
    matchers: dict[str, str] | None = Field(
        default=None, description="Label equality matchers; default: the incident's group labels"
    )


def _matchers(ctx: ActionContext, params: SilenceParams) -> dict[str, str]:
    if params.matchers is not None:
        return params.matchers
    return dict(ctx.incident.group_labels) if ctx.incident else {}


def _too_wide(ctx: ActionContext, params: SilenceParams) -> str | None:
    # Alertmanager itself refuses matchers that all match the empty string; an empty set would
    # mute every alert it knows, which no remediation should be able to do.
    if not any(_matchers(ctx, params).values()):
        return "a silence needs at least one matcher with a non-empty value (no incident group labels to default to)"
    return None


def _marker(ctx: ActionContext) -> str:
    # Execution ids repeat across databases (staging and production on one Alertmanager, a test
    # suite), so the step's first start, kept across retries and resumes, makes the marker unique.
    return f"[controlplane step {ctx.idempotency_key} started {ctx.step_started_at.astimezone(UTC).isoformat()}]"


def _comment(ctx: ActionContext, params: SilenceParams) -> str:
    parts = [params.comment or f"Silenced by controlplane rule {ctx.rule} while it remediates"]
    if ctx.incident is not None:
        url = ctx.ports.incident_url(ctx.incident.id)
        parts.append(f"incident #{ctx.incident.id}" + (f" {url}" if url else ""))
    # The marker lets a retried step find the silence an earlier try created but did not record.
    parts.append(_marker(ctx))
    return " - ".join(parts)


def _action_error(exc: AlertmanagerError) -> ActionError:
    return ActionError(str(exc), retriable=exc.retriable)


def _silenced(params: SilenceParams, output: dict[str, Any]) -> str:
    matchers = ", ".join(f"{name}={value}" for name, value in sorted(dict(output.get("matchers") or {}).items()))
    return f"Silenced {matchers} in Alertmanager for {spoken(params.duration)}"


def _plan_silence(ctx: ActionContext, params: SilenceParams) -> Plan:
    labels = _matchers(ctx, params)
    shown = ",".join(f"{name}={value}" for name, value in sorted(labels.items()))
    try:
        firing: int | None = ctx.ports.silences.firing(labels) if any(labels.values()) else None
    except AlertmanagerError as exc:
        raise _action_error(exc) from None
    change = {"matchers": labels, "duration": format_duration(params.duration), "firing": firing}
    counted = "" if firing is None else f" (matches {firing} firing alert{'' if firing == 1 else 's'})"
    sentence = f"silence {shown or 'nothing'} for {format_duration(params.duration)}{counted}"
    return Plan(action="alertmanager.silence", target=ctx.ports.alertmanager_url, change=change, sentence=sentence)


@action(
    "alertmanager.silence",
    params=SilenceParams,
    inverse="alertmanager.expire_silence",
    blast_radius=_too_wide,
    blast_radius_doc="at least one matcher with a value; at most 7 days",
    target=lambda ctx, _params: ctx.ports.alertmanager_url,
    describe_effect=_silenced,
    plan=_plan_silence,
)
def silence(ctx: ActionContext, params: SilenceParams) -> ActionResult:
    """Silence the incident's alerts (or the given matchers) in Alertmanager for a while; value: the silence id."""
    labels = _matchers(ctx, params)
    now = ctx.now()
    ends_at = now + params.duration
    try:
        silence_id = ctx.ports.silences.for_step(
            matchers=labels,
            now=now,
            ends_at=ends_at,
            comment=_comment(ctx, params),
            marker=_marker(ctx),
            rule=ctx.rule,
            incident_id=ctx.incident.id if ctx.incident else None,
            execution_id=ctx.execution_id,
        )
    except AlertmanagerError as exc:
        raise _action_error(exc) from None
    return ActionResult(
        value=silence_id,
        output={
            "silence_id": silence_id,
            "matchers": labels,
            "ends_at": ends_at.isoformat(),
            "duration": format_duration(params.duration),
        },
    )


class ExpireParams(Params):
    # A path segment of DELETE /api/v2/silence/{id}; Alertmanager's ids are UUIDs.
    silence_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


def _expired(params: ExpireParams, output: dict[str, Any]) -> str:
    if output.get("known") is False:
        return f"Silence {params.silence_id} was already expired or gone"
    return f"Expired silence {params.silence_id} in Alertmanager"


@action(
    "alertmanager.expire_silence",
    params=ExpireParams,
    target=lambda ctx, _params: ctx.ports.alertmanager_url,
    describe_effect=_expired,
    plan=lambda ctx, params: Plan(
        action="alertmanager.expire_silence",
        target=ctx.ports.alertmanager_url,
        change={"silence_id": params.silence_id},
        sentence=f"expire silence {params.silence_id} in Alertmanager",
    ),
)
def expire_silence(ctx: ActionContext, params: ExpireParams) -> ActionResult:
    """Expire a silence (the rollback of alertmanager.silence); one already expired or gone counts as done."""
    try:
        known = ctx.ports.silences.expire(params.silence_id, now=ctx.now())
    except AlertmanagerError as exc:
        raise _action_error(exc) from None
    return ActionResult(value=params.silence_id, output={"silence_id": params.silence_id, "known": known})
