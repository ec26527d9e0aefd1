"""Owns graceful degradation of an http target (seed 001): `service.degrade` and `service.restore`.

They act through the deployment's admin API (the sample service's `sample/degradation.py` is the
contract): `GET /degradation` says the service level (`full`, `degraded`, `minimal`) and the features
switched off (each answers its fallback, not an error); `POST /degrade` goes down, never up (features
off as well, the level lowered), `POST /restore` goes up, each with the step's idempotency key. Both
are idempotent on the service, and two degradations at once (one per failed dependency) add up
rather than undo each other. service.restore declares no inverse: going back up is never undone.

The bound lives on the target: `min_service_level` is the lowest level service.degrade may bring it
to, checked before the step (refused, audited) and in the plan by `degrade_refusal`. service.restore
is never refused: going back up is always allowed.

A degrade records what it changed as `output.undo`, two strings a rollback passes on as they are:
`features`, the features it switched off (comma-separated; ones already off are not in it), and
`level`, `degraded` when it brought the service down to minimal (else empty). So
`rollback: {action: service.restore, with: {target: t, features: "{{ steps.<id>.output.undo.features }}",
level: "{{ steps.<id>.output.undo.level }}"}}` restores the previous level and features exactly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from controlplane.actions.base import (
    ActionContext,
    ActionError,
    ActionResult,
    BlastRadiusExceeded,
    Params,
    Plan,
    action,
)
from controlplane.actions.graph import GRAPH_NAME, TIMEOUT_SECONDS, target_name
from controlplane.actions.llm import refusal_of
from controlplane.rules.schema import ServiceLevel, Target

LEVELS: tuple[ServiceLevel, ...] = get_args(ServiceLevel)  # best first: full, degraded, minimal


def _names(value: Any) -> Any:
    """Features as a list, or as one comma-separated string (what a template renders: `output.undo.features`)."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _level(value: Any) -> Any:
    return None if value == "" else value  # an empty template (`output.undo.level` of a degrade that kept the level)


Features = Annotated[list[Annotated[str, Field(pattern=GRAPH_NAME)]], BeforeValidator(_names)]


def rank(level: str) -> int:
    """0 for full, 1 degraded, 2 minimal: a higher rank is a lower level."""
    return [str(known) for known in LEVELS].index(level)


# -- what GET /degradation answers ------------------------------------------------------------------


class DegradationView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    level: ServiceLevel
    features: list[str]  # switched off by name
    catalogue: dict[str, Any] = Field(default_factory=dict)  # the degradable features


def degradation_target(ctx: ActionContext, name: str, action_name: str) -> Target:
    target = ctx.target(name)
    if target.kind != "http":
        raise ActionError(
            f"{action_name} works on http targets only: target {target.name!r} is {target.kind}, and service "
            "levels live in the service (its admin API's /degradation)"
        )
    return target


def read_degradation(ctx: ActionContext, target: Target) -> DegradationView:
    answer = ctx.ports.admin_api.request(target, "GET", "/degradation", timeout=ctx.time_left(TIMEOUT_SECONDS))
    try:
        return DegradationView.model_validate(answer)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ActionError(
            f"target {target.name!r}: GET /degradation answered an unexpected shape ({where}: {first['msg']})"
        ) from None


def _unknown_features(target: Target, view: DegradationView, features: list[str]) -> None:
    unknown = [f for f in features if view.catalogue and f not in view.catalogue]
    if unknown:
        raise ActionError(
            f"no feature named {', '.join(map(repr, unknown))} on target {target.name!r} "
            f"(features: {', '.join(view.catalogue)})"
        )


def _text(level: str, features: list[str]) -> str:
    if level == "full":
        return "full"
    return f"{level} ({', '.join(features) or 'no feature named'} off)" if features else level


# -- service.degrade --------------------------------------------------------------------------------


class DegradeParams(Params):
    target: str = "default"
    level: Literal["degraded", "minimal"]
    features: Features = Field(default_factory=list)  # switched off too; `degraded` needs at least one

    @model_validator(mode="after")
    def _something(self) -> DegradeParams:
        if self.level == "degraded" and not self.features:
            raise ValueError("level `degraded` needs `features`: the features to switch off")
        return self


def degrade_refusal(target: Target, level: str) -> str | None:
    """Why degrading to `level` would go below what the target allows, or None."""
    if rank(level) <= rank(target.min_service_level):
        return None
    if target.min_service_level == "full":
        return f"target {target.name!r} has min_service_level full: it is never degraded automatically"
    return f"level {level} is below target {target.name!r}'s min_service_level of {target.min_service_level}"


def _after_degrade(view: DegradationView, params: DegradeParams) -> tuple[str, list[str]]:
    level = view.level if rank(view.level) >= rank(params.level) else params.level
    return level, sorted({*view.features, *params.features})


def _plan_degrade(ctx: ActionContext, params: DegradeParams) -> Plan:
    target = degradation_target(ctx, params.target, "service.degrade")
    view = read_degradation(ctx, target)
    _unknown_features(target, view, params.features)
    level, features = _after_degrade(view, params)
    noop = (level, features) == (view.level, sorted(view.features))
    bound = f"at least {target.min_service_level}"
    before, after = _text(view.level, view.features), _text(level, features)
    if noop:
        sentence = f"leave {target.name} {before}: already as low ({bound})"
    else:
        sentence = f"degrade {target.name} {before} → {after} ({bound})"
    change = {
        "from": {"level": view.level, "features": sorted(view.features)},
        "to": {"level": level, "features": features},
        "min_service_level": target.min_service_level,
    }
    refused = degrade_refusal(target, params.level)
    return Plan(action="service.degrade", target=target.name, change=change, sentence=sentence, refused=refused,
                noop=noop)  # fmt: skip


def _degraded(params: DegradeParams, output: dict[str, Any]) -> str:
    target = output.get("target", params.target)
    now = _text(str(output.get("level", params.level)), list(output.get("features", params.features)))
    if output.get("changed") is False:
        return f"{target} was already {now}; left as it was"
    previous = dict(output.get("previous") or {})
    return f"Degraded {target} to {now} (was {_text(str(previous.get('level')), list(previous.get('features', [])))})"


@action(
    "service.degrade",
    params=DegradeParams,
    inverse="service.restore",
    blast_radius=refusal_of(lambda ctx, params: degrade_refusal(ctx.target(params.target), params.level)),
    blast_radius_doc="never below the target's min_service_level",
    target=target_name,
    describe_effect=_degraded,
    plan=_plan_degrade,
)
def degrade(ctx: ActionContext, params: DegradeParams) -> ActionResult:
    """Lower a service's level (degraded or minimal) and switch features to their fallbacks; never raises it."""
    target = degradation_target(ctx, params.target, "service.degrade")
    refusal = degrade_refusal(target, params.level)
    if refusal:
        raise BlastRadiusExceeded(refusal)
    answer = ctx.ports.admin_api.request(
        target,
        "POST",
        "/degrade",
        json={"level": params.level, "features": params.features},
        idempotency_key=ctx.idempotency_key,
        timeout=ctx.time_left(TIMEOUT_SECONDS),
    )
    previous = dict(answer.get("previous") or {})
    level, features = str(answer.get("level")), sorted(answer.get("features", []))
    added = sorted(set(features) - set(previous.get("features", [])))
    undo_level = "degraded" if level == "minimal" and previous.get("level") != "minimal" else ""
    return ActionResult(
        value=level,
        output={
            "target": target.name,
            "level": level,
            "features": features,
            "previous": previous,
            "changed": bool(answer.get("changed")),
            "undo": {"level": undo_level, "features": ",".join(added)},
        },
    )


# -- service.restore --------------------------------------------------------------------------------


class RestoreParams(Params):
    """Neither given: everything back to full. `features`: those back on. `level: degraded`: up from minimal."""

    target: str = "default"
    level: Annotated[Literal["full", "degraded"] | None, BeforeValidator(_level)] = None
    features: Features | None = None


def _after_restore(view: DegradationView, params: RestoreParams) -> tuple[str, list[str]]:
    if (params.level is None and params.features is None) or params.level == "full":
        return "full", []
    features = sorted(set(view.features) - set(params.features or ()))
    level = view.level
    if params.level == "degraded" and level == "minimal":
        level = "degraded"
    if level == "degraded" and not features:
        level = "full"
    return level, features


def _plan_restore(ctx: ActionContext, params: RestoreParams) -> Plan:
    target = degradation_target(ctx, params.target, "service.restore")
    view = read_degradation(ctx, target)
    _unknown_features(target, view, params.features or [])
    level, features = _after_restore(view, params)
    noop = (level, features) == (view.level, sorted(view.features))
    before, after = _text(view.level, view.features), _text(level, features)
    sentence = (
        f"leave {target.name} {before}: nothing to restore" if noop else f"restore {target.name} {before} → {after}"
    )
    change = {
        "from": {"level": view.level, "features": sorted(view.features)},
        "to": {"level": level, "features": features},
    }
    return Plan(action="service.restore", target=target.name, change=change, sentence=sentence, noop=noop)


def _restored(params: RestoreParams, output: dict[str, Any]) -> str:
    target = output.get("target", params.target)
    now = _text(str(output.get("level")), list(output.get("features", [])))
    if output.get("changed") is False:
        return f"{target} was already {now}; left as it was"
    return f"Restored {target} to {now}"


@action(
    "service.restore",
    params=RestoreParams,
    target=target_name,
    describe_effect=_restored,
    plan=_plan_restore,
)
def restore(ctx: ActionContext, params: RestoreParams) -> ActionResult:
    """Bring a degraded service back up: named features back on, up from minimal, or all the way to full."""
    target = degradation_target(ctx, params.target, "service.restore")
    body: dict[str, Any] = {}
    if params.level is not None:
        body["level"] = params.level
    if params.features is not None:
        body["features"] = params.features
    answer = ctx.ports.admin_api.request(
        target,
        "POST",
        "/restore",
        json=body,
        idempotency_key=ctx.idempotency_key,
        timeout=ctx.time_left(TIMEOUT_SECONDS),
    )
    level = str(answer.get("level"))
    return ActionResult(
        value=level,
        output={
            "target": target.name,
            "level": level,
            "features": sorted(answer.get("features", [])),
            "previous": dict(answer.get("previous") or {}),
            "changed": bool(answer.get("changed")),
        },
    )
