"""Owns the graph actions `graph.disable` / `graph.enable` (each the other's inverse).

http targets: the deployment's admin API (integrations/admin_api.py): `GET /graphs`,
`POST /graphs/{graph}/disable|enable`, sent with the step's idempotency key. kubernetes targets: the
comma-separated `disabled_graphs` key of the target's ConfigMap, which the deployment reads.

Bounds (seed 004's "disable the problem graph" must not become "disable everything"): at most
`max_disabled_graphs` disabled at once, and never the last enabled graph. They are checked
before the step (to refuse early, audited) and again where the write happens: in the disable
request the service checks atomically, or inside the ConfigMap's read-modify-write, so two
replicas racing cannot both pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from controlplane.actions.base import (
    ActionContext,
    ActionError,
    ActionResult,
    BlastRadiusExceeded,
    Params,
    Plan,
    action,
)
from controlplane.rules.schema import Target

# A graph name is a URL path segment and a ConfigMap list item: no '/', ',' or spaces, whatever
# an alert label (untrusted) carries, and not made of dots only ('.' and '..' change the path).
GRAPH_NAME = r"^[A-Za-z0-9_.-]{1,128}$"
DISABLED_KEY = "disabled_graphs"
TIMEOUT_SECONDS = 10.0  # at most; a step's deadline makes it shorter (ctx.time_left)
BOUNDS_DOC = "at most the target's max_disabled_graphs disabled at once, and never its last enabled graph"


def _not_dots(value: str) -> str:
    if not value.strip("."):
        raise ValueError(f"{value!r} is not a graph name: a name of dots only would change the request path")
    return value


GraphName = Annotated[str, Field(pattern=GRAPH_NAME), AfterValidator(_not_dots)]


class GraphParams(Params):
    target: str = "default"
    graph: GraphName


def target_name(ctx: ActionContext, params: Any) -> str | None:
    """Keys the circuit breaker: one per target and action; None for a name no rule file defines (refused)."""
    return str(params.target) if params.target in ctx.targets else None


def kube_target(target: Target) -> tuple[str, str]:
    """(namespace, ConfigMap name) of a kubernetes target, or an error saying what its definition lacks."""
    if not target.configmap:
        raise ActionError(f"target {target.name!r} has no `configmap` (it holds disabled_graphs, checkpoint_storage)")
    return target.namespace or "", target.configmap


# -- bounds -------------------------------------------------------------------------------------


def split_graphs(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def disable_refusal(target: Target, graph: str, disabled: list[str], enabled: list[str] | None) -> str | None:
    """Why disabling `graph` would exceed the target's bounds, or None. `enabled` None: not known (kubernetes)."""
    if graph in disabled:
        return None  # already disabled: nothing changes
    limit = target.max_disabled_graphs
    if len(disabled) + 1 > limit:
        already = ", ".join(disabled) or "none"
        return (
            f"disabling {graph!r} would make {len(disabled) + 1} disabled graphs on target {target.name!r}, "
            f"over its max_disabled_graphs of {limit} (already disabled: {already})"
        )
    if enabled is not None and set(enabled) == {graph}:
        return f"{graph!r} is the last enabled graph of target {target.name!r}"
    return None


def _refuse_too_many(ctx: ActionContext, params: GraphParams) -> str | None:
    """The pre-step check, on the target's current state.

    It runs outside the step's error handling, so it never raises: when the state cannot be read
    (target down, unknown target) it lets the step run, and the step fails with the real error.
    """
    try:
        target = ctx.target(params.target)
        return disable_refusal(target, params.graph, *graph_state(ctx, target))
    except Exception as exc:
        ctx.log.info("graph.bounds_unread", target=params.target, error=str(exc))
        return None


# -- what a call did -----------------------------------------------------------------------------


def _described(verb: str, state: str) -> Callable[[GraphParams, dict[str, Any]], str]:
    def describe(params: GraphParams, output: dict[str, Any]) -> str:
        graph, target = output.get("graph", params.graph), output.get("target", params.target)
        if output.get("changed") is False:
            return f"Graph {graph} was already {state} on {target}; left as it was"
        return f"{verb} graph {graph} on {target}"

    return describe


# -- the actions ----------------------------------------------------------------------------------


@action(
    "graph.disable",
    params=GraphParams,
    inverse="graph.enable",
    blast_radius=_refuse_too_many,
    blast_radius_doc=BOUNDS_DOC,
    target=target_name,
    describe_effect=_described("Disabled", "disabled"),
    plan=lambda ctx, params: _planner(enabled=False)(ctx, params),
)
def disable(ctx: ActionContext, params: GraphParams) -> ActionResult:
    """Stop running one graph on a target; a graph already disabled is left as it is."""
    return _set(ctx, params, enabled=False)


@action(
    "graph.enable",
    params=GraphParams,
    inverse="graph.disable",
    target=target_name,
    describe_effect=_described("Enabled", "enabled"),
    plan=lambda ctx, params: _planner(enabled=True)(ctx, params),
)
def enable(ctx: ActionContext, params: GraphParams) -> ActionResult:
    """Run one graph again on a target; a graph already enabled is left as it is."""
    return _set(ctx, params, enabled=True)


def _set(ctx: ActionContext, params: GraphParams, *, enabled: bool) -> ActionResult:
    target = ctx.target(params.target)
    verb = "enable" if enabled else "disable"
    if target.kind == "http":
        # The bounds travel with the request: the service applies them under its own lock.
        bounds = None if enabled else {"max_disabled": target.max_disabled_graphs, "keep_one_enabled": True}
        answer = ctx.ports.admin_api.request(
            target,
            "POST",
            f"/graphs/{params.graph}/{verb}",
            json=bounds,
            idempotency_key=ctx.idempotency_key,
            timeout=ctx.time_left(TIMEOUT_SECONDS),
        )
        changed = bool(answer.get("changed"))
        disabled_after = list(answer.get("disabled", []))
    else:

        def update(old: str | None) -> str:
            names = split_graphs(old)
            if enabled:
                return ",".join(n for n in names if n != params.graph)
            refusal = disable_refusal(target, params.graph, names, None)
            if refusal:
                raise BlastRadiusExceeded(refusal)
            return ",".join(names if params.graph in names else [*names, params.graph])

        namespace, configmap = kube_target(target)
        old, new = ctx.ports.kubernetes.update_configmap_key(
            namespace=namespace, name=configmap, key=DISABLED_KEY, update=update
        )
        changed = (params.graph in split_graphs(old)) == enabled
        disabled_after = split_graphs(new)
    after = "enabled" if enabled else "disabled"
    before = ("disabled" if enabled else "enabled") if changed else after
    return ActionResult(
        value=params.graph,
        output={
            "target": target.name,
            "graph": params.graph,
            "before": before,
            "after": after,
            "changed": changed,
            "disabled_graphs": disabled_after,
        },
    )


# -- plans: the graphs as they are, and what the call would change ----------------------------------


def graph_state(ctx: ActionContext, target: Target) -> tuple[list[str], list[str] | None]:
    """(disabled, enabled) graphs of the target as it is now; enabled is None where it is not known (kubernetes)."""
    if target.kind == "http":
        state = ctx.ports.admin_api.request(target, "GET", "/graphs", timeout=ctx.time_left(TIMEOUT_SECONDS))
        return list(state["disabled"]), list(state["enabled"])
    namespace, configmap = kube_target(target)
    current = ctx.ports.kubernetes.read_configmap_key(namespace=namespace, name=configmap, key=DISABLED_KEY)
    return split_graphs(current), None


def _planner(enabled: bool) -> Callable[[ActionContext, GraphParams], Plan]:
    name, verb = ("graph.enable", "enable") if enabled else ("graph.disable", "disable")

    def plan(ctx: ActionContext, params: GraphParams) -> Plan:
        target = ctx.target(params.target)
        disabled, running = graph_state(ctx, target)
        noop = (params.graph not in disabled) == enabled
        after = [g for g in disabled if g != params.graph] if enabled else sorted({*disabled, params.graph})
        change = {
            "graph": params.graph,
            "from": "disabled" if params.graph in disabled else "enabled",
            "to": "enabled" if enabled else "disabled",
            "disabled_before": disabled,
            "disabled_after": disabled if noop else after,
            "max_disabled_graphs": target.max_disabled_graphs,
        }
        counts = f"at most {target.max_disabled_graphs} disabled"
        if running is not None:
            total = len(set(running) | set(disabled))
            counts = f"{len(running)} of {total} enabled; {counts}"
        else:
            counts = f"{len(disabled)} disabled now; {counts}"
        state = "enabled" if enabled else "disabled"
        if noop:
            sentence = f"leave graph {params.graph} on {target.name}: already {state} ({counts})"
        else:
            sentence = f"{verb} graph {params.graph} on {target.name} ({counts})"
        # The same bounds the pre-step check and the write apply (disable_refusal).
        refused = None if enabled else disable_refusal(target, params.graph, disabled, running)
        return Plan(action=name, target=target.name, change=change, sentence=sentence, refused=refused, noop=noop)

    return plan
