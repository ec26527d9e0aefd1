"""Owns the checkpoint-storage actions: `storage.check`, `storage.switch` and `storage.cleanup_corrupted`.

Seed 004's checkpoint_failures strategy: check the storage backends, switch to the backup,
clean the corrupted checkpoints. http targets use the admin API (`GET /storage`,
`POST /storage/switch`, `POST /storage/cleanup`, integrations/admin_api.py). A kubernetes
target can only be switched, by writing its ConfigMap key `checkpoint_storage` (unset means
primary): the cluster API does not show the backends' health, so check and cleanup refuse it.

A switch records the backend it left as `output.previous`; undo it with
`rollback: {action: storage.switch, with: {backend: "{{ steps.<id>.output.previous }}"}}`.
"""

from __future__ import annotations

from typing import Any, Literal

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.actions.graph import TIMEOUT_SECONDS, kube_target, target_name
from controlplane.rules.schema import Target

Backend = Literal["primary", "backup"]
STORAGE_KEY = "checkpoint_storage"
DEFAULT_BACKEND: Backend = "primary"  # what a deployment uses while its ConfigMap key is unset


class StorageParams(Params):
    target: str = "default"


class SwitchParams(StorageParams):
    backend: Backend = "backup"


class CleanupParams(StorageParams):
    backend: Backend | None = None  # None: every backend


def _http_target(ctx: ActionContext, params: StorageParams, action_name: str) -> Target:
    target = ctx.target(params.target)
    if target.kind != "http":
        raise ActionError(
            f"{action_name} works on http targets only: target {target.name!r} is {target.kind}, and the "
            "cluster API does not show the storage backends; define an http target for the deployment's admin API"
        )
    return target


def _health(state: dict[str, Any]) -> dict[str, bool]:
    return {name: bool(info.get("healthy")) for name, info in dict(state.get("backends", {})).items()}


def _checked(params: StorageParams, output: dict[str, Any]) -> str:
    unhealthy = ", ".join(output.get("unhealthy") or []) or "none"
    target = output.get("target", params.target)
    return f"Checked checkpoint storage on {target}: {output.get('active')} active, unhealthy: {unhealthy}"


def _plan_check(ctx: ActionContext, params: StorageParams) -> Plan:
    """A check only reads: it runs during a plan, so later steps' templates see what it found."""
    result = check(ctx, params)
    sentence = "check checkpoint storage on {}: {} active, unhealthy: {}".format(
        result.output["target"], result.output["active"], ", ".join(result.output["unhealthy"]) or "none"
    )
    return Plan(action="storage.check", target=params.target, sentence=sentence, change={}, noop=True, ran=result)


@action(
    "storage.check",
    params=StorageParams,
    target=target_name,
    describe_effect=_checked,
    reads_only=True,
    plan=_plan_check,
)
def check(ctx: ActionContext, params: StorageParams) -> ActionResult:
    """Report each checkpoint backend's health and which one is active; the value is the active backend."""
    target = _http_target(ctx, params, "storage.check")
    state = ctx.ports.admin_api.request(target, "GET", "/storage", timeout=ctx.time_left(TIMEOUT_SECONDS))
    health = _health(state)
    return ActionResult(
        value=state.get("active"),
        output={
            "target": target.name,
            "active": state.get("active"),
            "backends": state.get("backends", {}),
            "healthy": [name for name, ok in health.items() if ok],
            "unhealthy": [name for name, ok in health.items() if not ok],
        },
    )


def _refuse_unhealthy(ctx: ActionContext, params: SwitchParams) -> str | None:
    """The pre-step check: never move checkpoints onto a backend the service reports unhealthy.

    It runs outside the step's error handling, so it never raises; when the state cannot be read
    the step runs and fails with the real error (and the service refuses an unhealthy switch too).
    """
    try:
        target = ctx.target(params.target)
        if target.kind != "http":
            return None  # health is not visible through the cluster API
        state = ctx.ports.admin_api.request(target, "GET", "/storage", timeout=ctx.time_left(TIMEOUT_SECONDS))
    except Exception as exc:
        ctx.log.info("storage.health_unread", target=params.target, error=str(exc))
        return None
    return unhealthy_refusal(target, state, params.backend)


def unhealthy_refusal(target: Target, state: dict[str, Any], backend: str) -> str | None:
    """Why switching to `backend` is refused on the target's storage `state` (GET /storage), or None."""
    if state.get("active") == backend:
        return None  # already there: nothing moves
    if not _health(state).get(backend, False):
        return f"checkpoint storage {backend!r} of target {target.name!r} is unhealthy; not switching to it"
    return None


def _switched(params: SwitchParams, output: dict[str, Any]) -> str:
    target, active = output.get("target", params.target), output.get("active", params.backend)
    if output.get("changed") is False:
        return f"Checkpoint storage on {target} was already {active}; left as it was"
    return f"Switched checkpoint storage on {target} {output.get('previous')} → {active}"


@action(
    "storage.switch",
    params=SwitchParams,
    inverse="storage.switch",
    blast_radius=_refuse_unhealthy,
    blast_radius_doc="never onto a backend the target reports unhealthy (http targets; the service refuses too)",
    target=target_name,
    describe_effect=_switched,
    plan=lambda ctx, params: _plan_switch(ctx, params),
)
def switch(ctx: ActionContext, params: SwitchParams) -> ActionResult:
    """Make `backend` the active checkpoint storage; the value is the new backend, output.previous the old."""
    target = ctx.target(params.target)
    if target.kind == "http":
        # No read-then-decide here: a retried step replays the first answer under its idempotency
        # key, so `previous` stays the backend it really left.
        answer = ctx.ports.admin_api.request(
            target,
            "POST",
            "/storage/switch",
            json={"backend": params.backend},
            idempotency_key=ctx.idempotency_key,
            timeout=ctx.time_left(TIMEOUT_SECONDS),
        )
        previous, changed, backends = answer.get("previous"), bool(answer.get("changed")), answer.get("backends")
    else:
        namespace, configmap = kube_target(target)
        old, _new = ctx.ports.kubernetes.update_configmap_key(
            namespace=namespace, name=configmap, key=STORAGE_KEY, update=lambda _old: params.backend
        )
        previous = old or DEFAULT_BACKEND
        changed, backends = previous != params.backend, None
    output = {"target": target.name, "active": params.backend, "previous": previous, "changed": changed}
    if backends is not None:
        output["backends"] = backends
    return ActionResult(value=params.backend, output=output)


def _cleaned(params: CleanupParams, output: dict[str, Any]) -> str:
    removed = int(output.get("removed", 0))
    where = f"{params.backend} on " if params.backend else ""
    plural = "" if removed == 1 else "s"
    return f"Removed {removed} corrupted checkpoint{plural} from {where}{output.get('target', params.target)}"


@action(
    "storage.cleanup_corrupted",
    params=CleanupParams,
    target=target_name,
    describe_effect=_cleaned,
    plan=lambda ctx, params: _plan_cleanup(ctx, params),
)
def cleanup_corrupted(ctx: ActionContext, params: CleanupParams) -> ActionResult:
    """Remove the checkpoints corrupted while storage was failing; the value is how many were removed."""
    target = _http_target(ctx, params, "storage.cleanup_corrupted")
    body = {"backend": params.backend} if params.backend else None
    answer = ctx.ports.admin_api.request(
        target,
        "POST",
        "/storage/cleanup",
        json=body,
        idempotency_key=ctx.idempotency_key,
        timeout=ctx.time_left(TIMEOUT_SECONDS),
    )
    removed = int(answer.get("removed", 0))
    return ActionResult(
        value=removed, output={"target": target.name, "removed": removed, "by_backend": answer.get("by_backend", {})}
    )


# -- plans: the backends as they are, and what the call would change ---------------------------------


def _plan_switch(ctx: ActionContext, params: SwitchParams) -> Plan:
    target = ctx.target(params.target)
    change: dict[str, Any] = {"to": params.backend}
    refused = None
    if target.kind == "http":
        state = ctx.ports.admin_api.request(target, "GET", "/storage", timeout=ctx.time_left(TIMEOUT_SECONDS))
        current = str(state.get("active"))
        change["health"] = _health(state)
        refused = unhealthy_refusal(target, state, params.backend)
    else:
        namespace, configmap = kube_target(target)
        value = ctx.ports.kubernetes.read_configmap_key(namespace=namespace, name=configmap, key=STORAGE_KEY)
        current = value or DEFAULT_BACKEND
    change["from"] = current
    noop = current == params.backend
    if noop:
        sentence = f"leave checkpoint storage on {target.name} at {current}: already as wanted"
    else:
        sentence = f"switch checkpoint storage on {target.name} {current} → {params.backend}"
    return Plan(
        action="storage.switch", target=target.name, change=change, sentence=sentence, refused=refused, noop=noop
    )


def _plan_cleanup(ctx: ActionContext, params: CleanupParams) -> Plan:
    target = _http_target(ctx, params, "storage.cleanup_corrupted")
    state = ctx.ports.admin_api.request(target, "GET", "/storage", timeout=ctx.time_left(TIMEOUT_SECONDS))
    which = params.backend or "every backend"
    change = {"backend": params.backend, "active": state.get("active"), "health": _health(state)}
    sentence = f"remove corrupted checkpoints from {which} on {target.name} (active: {state.get('active')})"
    return Plan(action="storage.cleanup_corrupted", target=target.name, change=change, sentence=sentence)
