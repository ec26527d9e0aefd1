"""Owns silences the control plane creates in Alertmanager: `alertmanager.silence`, its inverse, and expiry on resolve.

Every silence is recorded in the `silences` table with the Alertmanager it went to, so a
rollback or the incident's resolution can expire it there even after the settings change.
A rule rolls a silence back with
`rollback: {action: alertmanager.expire_silence, with: {silence_id: "{{ steps.<id>.value }}"}}`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pydantic import Field
from sqlalchemy import Engine, select, update

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, action
from controlplane.audit import audit
from controlplane.config import Settings
from controlplane.db.engine import write_transaction
from controlplane.db.tables import dialect_insert, silences_t
from controlplane.durations import Duration, format_duration
from controlplane.integrations.alertmanager import CREATED_BY, AlertmanagerClient, AlertmanagerError, equality_matchers

log = structlog.get_logger(__name__)

MAX_SILENCE = timedelta(days=7)


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


def _url(ctx: ActionContext, incident_id: int) -> str | None:
    base = ctx.settings.public_url
    return f"{base.rstrip('/')}/incidents/{incident_id}" if base else None


def _comment(ctx: ActionContext, params: SilenceParams) -> str:
    parts = [params.comment or f"Silenced by controlplane rule {ctx.rule} while it remediates"]
    if ctx.incident is not None:
        parts.append(
            f"incident #{ctx.incident.id}" + (f" {_url(ctx, ctx.incident.id)}" if ctx.settings.public_url else "")
        )
    # The marker lets a retried step find the silence an earlier try created but did not record.
    parts.append(_marker(ctx))
    return " - ".join(parts)


def _action_error(exc: AlertmanagerError) -> ActionError:
    return ActionError(str(exc), retriable=exc.retriable)


@action(
    "alertmanager.silence",
    params=SilenceParams,
    inverse="alertmanager.expire_silence",
    blast_radius=_too_wide,
    blast_radius_doc="at least one matcher with a value; at most 7 days",
    target=lambda ctx, _params: ctx.settings.alertmanager_url,
)
def silence(ctx: ActionContext, params: SilenceParams) -> ActionResult:
    """Silence the incident's alerts (or the given matchers) in Alertmanager for a while; value: the silence id."""
    labels = _matchers(ctx, params)
    client = AlertmanagerClient(ctx.settings.alertmanager_url)
    now = ctx.now()
    ends_at = now + params.duration
    try:
        earlier = [
            s
            for s in client.list_silences()
            if s.created_by == CREATED_BY and _marker(ctx) in s.comment and s.state != "expired"
        ]
        silence_id = (
            earlier[0].id
            if earlier
            else client.create_silence(
                matchers=equality_matchers(labels), starts_at=now, ends_at=ends_at, comment=_comment(ctx, params)
            )
        )
    except AlertmanagerError as exc:
        raise _action_error(exc) from None
    with write_transaction(ctx.engine) as conn:
        conn.execute(
            dialect_insert(conn, silences_t)
            .values(
                silence_id=silence_id,
                incident_id=ctx.incident.id if ctx.incident else None,
                execution_id=ctx.execution_id,
                alertmanager_url=client.url,
                matchers=labels,
                created_by=f"rule:{ctx.rule}",
                created_at=now,
                ends_at=ends_at,
                expired_at=None,
            )
            .on_conflict_do_nothing(index_elements=["silence_id"])
        )
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


def _expire(engine: Engine, settings: Settings, silence_id: str, now: datetime) -> bool:
    """Expire one silence where it was created; True if Alertmanager still knew it."""
    with engine.connect() as conn:
        url = conn.execute(select(silences_t.c.alertmanager_url).where(silences_t.c.silence_id == silence_id)).scalar()
    known = AlertmanagerClient(url or settings.alertmanager_url).expire(silence_id)
    with write_transaction(engine) as conn:
        conn.execute(
            update(silences_t)
            .where(silences_t.c.silence_id == silence_id, silences_t.c.expired_at.is_(None))
            .values(expired_at=now)
        )
    return known


@action(
    "alertmanager.expire_silence",
    params=ExpireParams,
    target=lambda ctx, _params: ctx.settings.alertmanager_url,
)
def expire_silence(ctx: ActionContext, params: ExpireParams) -> ActionResult:
    """Expire a silence (the rollback of alertmanager.silence); one already expired or gone counts as done."""
    try:
        known = _expire(ctx.engine, ctx.settings, params.silence_id, ctx.now())
    except AlertmanagerError as exc:
        raise _action_error(exc) from None
    return ActionResult(value=params.silence_id, output={"silence_id": params.silence_id, "known": known})


def expire_silences_for_incident(
    engine: Engine, settings: Settings, incident_id: int, actor: str, *, now: datetime | None = None
) -> int:
    """Expire every silence the control plane created for the incident that may still mute; returns how many.

    For when the incident resolves: its silences must not hide the next episode. Makes network
    calls, so run it after the resolving transaction commits, off the webhook's request path.
    Never raises for one silence: a failure is audited (`silence.expire_failed`) and the rest go on.
    """
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        rows = conn.execute(
            select(silences_t.c.silence_id, silences_t.c.execution_id).where(
                silences_t.c.incident_id == incident_id,
                silences_t.c.expired_at.is_(None),
                silences_t.c.ends_at > now,
            )
        ).all()
    expired = 0
    for row in rows:
        detail: dict[str, Any] = {"silence_id": row.silence_id, "reason": "incident resolved"}
        try:
            _expire(engine, settings, row.silence_id, now)
            what = "silence.expired"
            expired += 1
        except AlertmanagerError as exc:
            what = "silence.expire_failed"
            detail["error"] = str(exc)
            log.error("silence.expire_failed", incident_id=incident_id, silence_id=row.silence_id, error=str(exc))
        with write_transaction(engine) as conn:
            audit(
                conn,
                actor=actor,
                action=what,
                incident_id=incident_id,
                execution_id=row.execution_id,
                detail=detail,
                now=now,
            )
    return expired
