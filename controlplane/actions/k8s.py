"""Owns the Kubernetes actions: `k8s.scale`, `k8s.rollout_restart` and `k8s.patch_hpa` on a kubernetes target.

Each names a target from the rule files (`with: {target: prod}`); the target's namespace,
workload, HPA and replica bounds come from there, so a rule can never scale or widen an
autoscaler past what the target allows. Breakers are keyed by `namespace/deployment`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import Field, model_validator

from controlplane.actions import capacity
from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.actions.capacity import CapacityParams
from controlplane.rules.schema import Target

BOUNDS_DOC = "replicas stay within the target's [min_replicas, max_replicas]: a request outside is clamped"


class TargetParams(Params):
    target: str = "default"


class ScaleParams(TargetParams):
    replicas: int | None = Field(default=None, ge=0)  # an absolute count
    delta: int | None = None  # added to the current count (negative scales in)
    factor: float | None = Field(default=None, gt=0)  # multiplies the current count
    capacity: CapacityParams | None = None  # seed 004's capacity model on two PromQL queries (capacity.py)

    @model_validator(mode="after")
    def _exactly_one(self) -> ScaleParams:
        given = [name for name in ("replicas", "delta", "factor", "capacity") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `replicas`, `delta`, `factor` or `capacity`")
        return self


class HpaParams(TargetParams):
    min_replicas: int | None = Field(default=None, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _something(self) -> HpaParams:
        if self.min_replicas is None and self.max_replicas is None:
            raise ValueError("give `min_replicas`, `max_replicas` or both")
        return self


def _breaker_key(ctx: ActionContext, params: TargetParams) -> str | None:
    # Runs before the step's error handling, so it must not raise: an unknown target fails
    # with a clear error once the action runs, without a breaker of its own (labels could
    # otherwise add one per name).
    found = ctx.targets.get(params.target)
    if found is None or found.kind != "kubernetes":
        return None
    return f"{found.namespace}/{found.deployment or found.name}"


def _workload(ctx: ActionContext, params: TargetParams) -> tuple[Target, str, str]:
    """The target, its namespace and its workload's name."""
    target = ctx.target(params.target, "kubernetes")
    if not target.deployment:
        raise ActionError(f"target {target.name!r} names no `deployment` to act on")
    assert target.namespace is not None  # a kubernetes target always has one (schema)
    return target, target.namespace, target.deployment


def _bounded(value: int, target: Target) -> int:
    return min(max(value, target.min_replicas), target.max_replicas)


def requested_replicas(current: int, params: ScaleParams) -> int:
    """What the step asks for, before the bounds. A factor rounds in the direction it scales.

    Not for `capacity`, whose count comes from Prometheus: see `_request`.
    """
    if params.replicas is not None:
        return params.replicas
    if params.delta is not None:
        return current + params.delta
    assert params.factor is not None
    scaled = round(current * params.factor, 6)  # 3 * 1.1 is 3.3000000000000003: not a 5th pod
    return math.ceil(scaled) if params.factor >= 1 else math.floor(scaled)


def _request(ctx: ActionContext, params: ScaleParams) -> tuple[Callable[[int], int], capacity.CapacityEstimate | None]:
    """The count the step asks for from the current one, and the capacity estimate it came from (if any).

    The capacity queries run once, here: a re-read of the replicas (a conflicting write) does not re-query.
    """
    if params.capacity is None:
        return (lambda current: requested_replicas(current, params)), None
    estimate = capacity.estimate(ctx, params.capacity)
    return (lambda _current: estimate.replicas), estimate


def _where(output: dict[str, Any], name: str) -> str:
    """`agents/langgraph`: the namespace and the workload's name (its kind is nearly always a Deployment)."""
    return f"{output.get('namespace')}/{name.rpartition('/')[2]}"


def _scaled(_params: ScaleParams, output: dict[str, Any]) -> str:
    where, replicas = _where(output, str(output.get("workload", ""))), output.get("replicas")
    if output.get("changed") is False:
        text = f"{where} already had {replicas} replicas; left as it was"
    else:
        text = f"Scaled {where} {output.get('previous')} → {replicas} replicas"
    if output.get("clamped"):
        low, high = output.get("bounds") or [None, None]
        requested = output.get("requested")
        bound = (
            f"max_replicas {high}"
            if high is not None and requested is not None and requested > high
            else f"min_replicas {low}"
        )
        text += f" (asked for {requested}; the target's {bound})"
    model = output.get("capacity")
    if isinstance(model, dict):
        rps, seconds = (model.get(k) for k in ("rps", "execution_time"))
        shown = [f"{v:.4g}" if isinstance(v, int | float) else str(v) for v in (rps, seconds)]
        text += f"; capacity model: {shown[0]} rps x {shown[1]} s"
    return text


@action(
    "k8s.scale",
    params=ScaleParams,
    blast_radius_doc=BOUNDS_DOC,
    target=_breaker_key,
    describe_effect=_scaled,
    plan=lambda ctx, params: plan_scale(ctx, params),
)
def scale(ctx: ActionContext, params: ScaleParams) -> ActionResult:
    """Scale the target's workload to `replicas`, by `delta` or `factor`, or to `capacity`, within the target's bounds.

    `capacity` computes the count from Prometheus (seed 004's model, capacity.py; the output's
    `capacity` holds its inputs and result):

        with:
          target: prod
          capacity: {rps: "sum(rate(langgraph_executions_total[5m]))",
                     execution_time: "sum(rate(langgraph_execution_duration_seconds_sum[5m]))
                                      / sum(rate(langgraph_execution_duration_seconds_count[5m]))"}

    The value is the new replica count; the output records `previous` and `clamped`. The count
    is computed from the replicas read at the time of the write (re-read if someone else
    scales in between), and nothing is written when the workload already has it, so a
    repeated step is harmless. To undo it, roll back with the previous count:

        - id: out
          action: k8s.scale
          with: {target: prod, factor: 2}
          rollback: {action: k8s.scale, with: {target: prod, replicas: "{{ steps.out.output.previous }}"}}

    A workload under an HPA is scaled by the HPA too: use k8s.patch_hpa for those.
    """
    target, namespace, name = _workload(ctx, params)
    request, estimate = _request(ctx, params)
    previous, replicas = ctx.ports.kubernetes.update_scale(
        namespace=namespace,
        name=name,
        kind=target.kind_of_workload,
        compute=lambda current: _bounded(request(current), target),
    )
    requested = request(previous)
    output: dict[str, Any] = {
        "namespace": namespace,
        "workload": f"{target.kind_of_workload}/{name}",
        "previous": previous,
        "replicas": replicas,
        "requested": requested,
        "clamped": requested != replicas,
        "changed": previous != replicas,
        "bounds": [target.min_replicas, target.max_replicas],
    }
    if estimate is not None:
        output["capacity"] = estimate.as_dict()
    ctx.log.info("k8s.scale", **output)
    return ActionResult(value=replicas, output=output)


def _restarted(_params: TargetParams, output: dict[str, Any]) -> str:
    where = _where(output, str(output.get("workload", "")))
    if output.get("already_restarted"):
        return f"Pods of {where} were already restarting for this step; not restarted twice"
    return f"Restarted the pods of {where}"


@action(
    "k8s.rollout_restart",
    params=TargetParams,
    target=_breaker_key,
    describe_effect=_restarted,
    plan=lambda ctx, params: plan_rollout_restart(ctx, params),
)
def rollout_restart(ctx: ActionContext, params: TargetParams) -> ActionResult:
    """Restart the target's pods as `kubectl rollout restart` does; a retried or resumed step restarts once.

    There is no undo: the rollout replaces pods with identical ones.
    """
    target, namespace, name = _workload(ctx, params)
    restarted_at, restarted = ctx.ports.kubernetes.rollout_restart(
        namespace=namespace,
        name=name,
        kind=target.kind_of_workload,
        key=ctx.idempotency_key,
        now=ctx.now(),
    )
    output = {
        "namespace": namespace,
        "workload": f"{target.kind_of_workload}/{name}",
        "restarted_at": restarted_at,
        "already_restarted": not restarted,
    }
    return ActionResult(value=restarted_at, output=output)


def _patched(_params: HpaParams, output: dict[str, Any]) -> str:
    where = _where(output, str(output.get("hpa", "")))
    now = f"min {output.get('min_replicas')}, max {output.get('max_replicas')}"
    before = f"min {output.get('previous_min')}, max {output.get('previous_max')}"
    if now == before:
        return f"Autoscaler {where} already had {now} replicas; left as it was"
    return f"Set autoscaler {where} to {now} replicas (was {before})"


@action(
    "k8s.patch_hpa",
    params=HpaParams,
    blast_radius_doc="the HPA's minReplicas and maxReplicas stay within the target's bounds: outside is clamped",
    target=_breaker_key,
    describe_effect=_patched,
    plan=lambda ctx, params: plan_patch_hpa(ctx, params),
)
def patch_hpa(ctx: ActionContext, params: HpaParams) -> ActionResult:
    """Set the target's HPA minReplicas and/or maxReplicas, clamped to the target's bounds.

    The output records `previous_min` and `previous_max`; roll back with them:

        rollback:
          action: k8s.patch_hpa
          with: {target: prod, min_replicas: "{{ steps.X.output.previous_min }}",
                 max_replicas: "{{ steps.X.output.previous_max }}"}

    (previous values outside the target's bounds come back clamped to them.)
    """
    target = ctx.target(params.target, "kubernetes")
    if not target.hpa:
        raise ActionError(f"target {target.name!r} names no `hpa` to patch")
    assert target.namespace is not None
    new_min = None if params.min_replicas is None else _bounded(params.min_replicas, target)
    new_max = None if params.max_replicas is None else _bounded(params.max_replicas, target)
    previous_min, previous_max = ctx.ports.kubernetes.patch_hpa(
        namespace=target.namespace, name=target.hpa, min_replicas=new_min, max_replicas=new_max
    )
    min_replicas = previous_min if new_min is None else new_min
    max_replicas = previous_max if new_max is None else new_max
    output = {
        "namespace": target.namespace,
        "hpa": target.hpa,
        "previous_min": previous_min,
        "previous_max": previous_max,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "clamped": (new_min, new_max) != (params.min_replicas, params.max_replicas),
        "bounds": [target.min_replicas, target.max_replicas],
    }
    return ActionResult(value={"min_replicas": min_replicas, "max_replicas": max_replicas}, output=output)


# -- plans: what each call would do, read from the cluster without a write -----------------------


def _bounds_note(requested: int, wanted: int, target: Target) -> str:
    if requested > wanted:
        return f"asked for {requested}; clamped to max_replicas {target.max_replicas}"
    if requested < wanted:
        return f"asked for {requested}; clamped to min_replicas {target.min_replicas}"
    return f"bounds {target.min_replicas}..{target.max_replicas}"


def plan_scale(ctx: ActionContext, params: ScaleParams) -> Plan:
    target, namespace, name = _workload(ctx, params)
    request, estimate = _request(ctx, params)  # the capacity queries only read: a plan runs them
    current = ctx.ports.kubernetes.read_scale(namespace=namespace, name=name, kind=target.kind_of_workload)
    requested = request(current)
    wanted = _bounded(requested, target)  # the very computation the call makes on the replicas it reads
    where = f"{namespace}/{name}"
    change: dict[str, Any] = {
        "workload": f"{target.kind_of_workload}/{name}",
        "namespace": namespace,
        "from": current,
        "to": wanted,
        "requested": requested,
        "clamped": requested != wanted,
        "bounds": [target.min_replicas, target.max_replicas],
    }
    note = _bounds_note(requested, wanted, target)
    if estimate is not None:
        change["capacity"] = estimate.as_dict()
        note = f"capacity model: {estimate.sentence()}; {note}"
    if wanted == current:
        sentence = f"leave {where} at {current} replicas: already as wanted ({note})"
    else:
        sentence = f"scale {where} {current} → {wanted} replicas ({note})"
    return Plan(action="k8s.scale", target=target.name, change=change, sentence=sentence, noop=wanted == current)


def plan_rollout_restart(ctx: ActionContext, params: TargetParams) -> Plan:
    target, namespace, name = _workload(ctx, params)
    replicas = ctx.ports.kubernetes.read_scale(namespace=namespace, name=name, kind=target.kind_of_workload)
    change = {"workload": f"{target.kind_of_workload}/{name}", "namespace": namespace, "replicas": replicas}
    plural = "" if replicas == 1 else "s"
    sentence = f"restart the pods of {namespace}/{name} ({replicas} replica{plural}, replaced one by one)"
    return Plan(action="k8s.rollout_restart", target=target.name, change=change, sentence=sentence)


def plan_patch_hpa(ctx: ActionContext, params: HpaParams) -> Plan:
    target = ctx.target(params.target, "kubernetes")
    if not target.hpa:
        raise ActionError(f"target {target.name!r} names no `hpa` to patch")
    assert target.namespace is not None
    old_min, old_max = ctx.ports.kubernetes.read_hpa(namespace=target.namespace, name=target.hpa)
    new_min = old_min if params.min_replicas is None else _bounded(params.min_replicas, target)
    new_max = old_max if params.max_replicas is None else _bounded(params.max_replicas, target)
    where = f"{target.namespace}/{target.hpa}"
    change = {
        "hpa": target.hpa,
        "namespace": target.namespace,
        "from": {"min_replicas": old_min, "max_replicas": old_max},
        "to": {"min_replicas": new_min, "max_replicas": new_max},
        "bounds": [target.min_replicas, target.max_replicas],
    }
    # The call refuses this at the write (integrations/kubernetes.py patch_hpa); the plan says so first.
    refused = f"minReplicas {new_min} would be above maxReplicas {new_max}" if new_min > new_max else None
    noop = (new_min, new_max) == (old_min, old_max)
    bounds = f"bounds {target.min_replicas}..{target.max_replicas}"
    if noop:
        sentence = f"leave autoscaler {where} at min {old_min}, max {old_max}: already as wanted ({bounds})"
    else:
        sentence = f"set autoscaler {where} min {old_min} → {new_min}, max {old_max} → {new_max} ({bounds})"
    return Plan(
        action="k8s.patch_hpa", target=target.name, change=change, sentence=sentence, refused=refused, noop=noop
    )
