"""Owns the LLM side of an http target (`GET /llm`) and its actions `llm.failover` and `llm.limit`; tools.py has
`tool.disable` / `tool.enable` and canary.py `graph.canary`, which read the target through `read_llm` here.

They act through the deployment's admin API (integrations/admin_api.py): `GET /llm` says which
models there are and whether each is healthy, each graph's model and caps, and the tools; changes
go to `POST /graphs/{graph}/llm`, `/graphs/{graph}/limits`, `/tools/{tool}/disable|enable`, each
with the step's idempotency key, and `POST /graphs/{graph}/canary` sends synthetic runs. A
kubernetes target is refused: the cluster API shows none of this.

Bounds live on the target (rules/schema.py), checked before the step (refused, audited) and in
the plan by the same functions: `llm_models` is the failover order, and llm.failover never moves a
graph onto a model the service reports unhealthy (failing, rate-limited, quota-exhausted);
`min_llm_concurrency` and `min_token_budget` floor llm.limit; `max_disabled_tools` caps tool.disable.

A failover records the model it left as `output.previous`; undo it with
`rollback: {action: llm.failover, with: {graph: ..., to: "{{ steps.<id>.output.previous }}"}}`
(refused too while that model is unhealthy). A limit records the caps it replaced as
`output.previous.concurrency_limit` and `.token_budget`, 0 meaning none (0 is what removes a cap),
so the same form undoes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from controlplane.actions.base import (
    ActionContext,
    ActionError,
    ActionResult,
    BlastRadiusExceeded,
    Params,
    Plan,
    action,
)
from controlplane.actions.graph import GRAPH_NAME, TIMEOUT_SECONDS, GraphName, target_name
from controlplane.rules.schema import LlmModel, Target

CHOSEN = "llm.failover.chosen"  # audited before the switch: a retried step keeps the model it chose


def _not_dots(value: str) -> str:
    if not value.strip("."):
        raise ValueError(f"{value!r} is not a tool name: a name of dots only would change the request path")
    return value


ToolName = Annotated[str, Field(pattern=GRAPH_NAME), AfterValidator(_not_dots)]  # a URL path segment, like a graph


# -- what GET /llm answers ------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ModelState(_Answer):
    model: str
    healthy: bool
    failing: str | None = None  # overloaded | rate_limited | quota_exhausted | timeout


class GraphLlm(_Answer):
    model: str
    concurrency_limit: int | None = None  # None: no cap
    token_budget: int | None = None  # tokens per minute; None: none


class ToolState(_Answer):
    enabled: bool


class LlmView(_Answer):
    """The target's LLM side as `GET /llm` shows it."""

    models: list[ModelState]
    graphs: dict[str, GraphLlm]
    tools: dict[str, ToolState] = Field(default_factory=dict)

    def health(self, model: str) -> str:
        """`healthy`, the failure the service reports (`overloaded`, ...), or why it cannot be used."""
        for known in self.models:
            if known.model == model:
                return "healthy" if known.healthy else (known.failing or "unhealthy")
        return "unknown to the service"

    def graph(self, target: Target, name: str) -> GraphLlm:
        found = self.graphs.get(name)
        if found is None:
            raise ActionError(f"no graph named {name!r} on target {target.name!r} (graphs: {', '.join(self.graphs)})")
        return found

    def disabled_tools(self) -> list[str]:
        return [name for name, tool in self.tools.items() if not tool.enabled]


def llm_target(ctx: ActionContext, name: str, action_name: str) -> Target:
    """The named http target, or an ActionError saying why a kubernetes one cannot do this."""
    target = ctx.target(name)
    if target.kind != "http":
        raise ActionError(
            f"{action_name} works on http targets only: target {target.name!r} is {target.kind}, and the "
            "cluster API does not show the graphs' models, caps or tools; define an http target for the "
            "deployment's admin API"
        )
    return target


def read_llm(ctx: ActionContext, target: Target) -> LlmView:
    answer = ctx.ports.admin_api.request(target, "GET", "/llm", timeout=ctx.time_left(TIMEOUT_SECONDS))
    try:
        return LlmView.model_validate(answer)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ActionError(
            f"target {target.name!r}: GET /llm answered an unexpected shape ({where}: {first['msg']})"
        ) from None


def refusal_of(check: Callable[[ActionContext, Any], str | None]) -> Callable[[ActionContext, Any], str | None]:
    """A pre-step check that never raises: when the state cannot be read, the step runs and fails with the real
    error (the service refuses what it cannot do)."""

    def refuse(ctx: ActionContext, params: Any) -> str | None:
        try:
            return check(ctx, params)
        except Exception as exc:
            ctx.log.info("llm.bounds_unread", target=params.target, error=str(exc))
            return None

    return refuse


# -- llm.failover -----------------------------------------------------------------------------------


class FailoverParams(Params):
    target: str = "default"
    graph: GraphName
    to: LlmModel | None = None  # None: the next healthy model after the graph's own in the target's llm_models


@dataclass(frozen=True)
class FailoverChoice:
    """Where a failover would move a graph: `to` None when it is refused, with `refused` saying why."""

    graph: str
    current: str
    to: str | None
    refused: str | None
    healthy: list[str]  # the target's llm_models the service reports healthy now

    def counts(self, target: Target) -> str:
        return f"{len(self.healthy)} of {len(target.llm_models)} models healthy"


def choose_failover(target: Target, view: LlmView, graph: str, to: str | None) -> FailoverChoice:
    """The model a failover of `graph` goes to, on the target's state `view`, or why it would be refused."""
    current = view.graph(target, graph).model
    order = list(target.llm_models)
    healthy = [m for m in order if view.health(m) == "healthy"]

    def refused(reason: str) -> FailoverChoice:
        return FailoverChoice(graph=graph, current=current, to=None, refused=reason, healthy=healthy)

    if not order:
        return refused(
            f"target {target.name!r} has no llm_models: set it to the failover order, `provider/model` strings "
            "(e.g. [anthropic/claude-sonnet-4, openai/gpt-4o])"
        )
    if to is not None:
        if to not in order:
            return refused(f"model {to!r} is not in target {target.name!r}'s llm_models ({', '.join(order)})")
        if to != current and to not in healthy:
            return refused(f"no healthy model to fail over to: {to} is {view.health(to)}")
        return FailoverChoice(graph=graph, current=current, to=to, refused=None, healthy=healthy)
    start = order.index(current) + 1 if current in order else 0
    candidates = [m for m in (order[(start + i) % len(order)] for i in range(len(order))) if m != current]
    for model in candidates:
        if model in healthy:
            return FailoverChoice(graph=graph, current=current, to=model, refused=None, healthy=healthy)
    if not candidates:
        return refused(f"no healthy model to fail over to: llm_models lists only {current}, the graph's model now")
    states = ", ".join(f"{m} {view.health(m)}" for m in candidates)
    return refused(f"no healthy model to fail over to: {states}")


def _chosen_before(ctx: ActionContext) -> dict[str, Any] | None:
    """What an earlier attempt of this step chose: its switch may have gone through, the graph's model moved."""
    for detail in ctx.ports.audit.details(CHOSEN, execution_id=ctx.execution_id):
        if detail.get("idempotency_key") == ctx.idempotency_key:
            return detail
    return None


def _failover_refusal(ctx: ActionContext, params: FailoverParams) -> str | None:
    target = llm_target(ctx, params.target, "llm.failover")
    if params.to is None and _chosen_before(ctx) is not None:
        return None  # resumed: the model was chosen (and checked) before
    return choose_failover(target, read_llm(ctx, target), params.graph, params.to).refused


def _failed_over(params: FailoverParams, output: dict[str, Any]) -> str:
    graph, target = output.get("graph", params.graph), output.get("target", params.target)
    model = output.get("model", params.to)
    if output.get("changed") is False:
        return f"Graph {graph} on {target} was already on {model}; left as it was"
    return f"Moved graph {graph} on {target} {output.get('previous')} → {model}"


def _plan_failover(ctx: ActionContext, params: FailoverParams) -> Plan:
    target = llm_target(ctx, params.target, "llm.failover")
    choice = choose_failover(target, read_llm(ctx, target), params.graph, params.to)
    where = f"graph {params.graph} on {target.name}"
    change = {"graph": params.graph, "from": choice.current, "to": choice.to, "healthy": choice.healthy}
    noop = choice.to == choice.current
    if choice.to is None:
        sentence = f"move {where} off {choice.current} ({choice.counts(target)})"
    elif noop:
        sentence = f"leave {where} at {choice.current}: already there ({choice.counts(target)})"
    else:
        sentence = f"move {where} {choice.current} → {choice.to} ({choice.counts(target)})"
    return Plan(
        action="llm.failover",
        target=target.name,
        change=change,
        sentence=sentence,
        refused=choice.refused,
        noop=noop,
    )


@action(
    "llm.failover",
    params=FailoverParams,
    inverse="llm.failover",
    blast_radius=refusal_of(_failover_refusal),
    blast_radius_doc="only to a model of the target's llm_models that the service reports healthy",
    target=target_name,
    describe_effect=_failed_over,
    plan=_plan_failover,
)
def failover(ctx: ActionContext, params: FailoverParams) -> ActionResult:
    """Move a graph to the next healthy model of the target's llm_models (or `to`); output.previous is the old one."""
    target = llm_target(ctx, params.target, "llm.failover")
    prior = _chosen_before(ctx) if params.to is None else None
    if prior is not None:
        to, healthy = str(prior["to"]), list(prior.get("healthy", []))
    else:
        choice = choose_failover(target, read_llm(ctx, target), params.graph, params.to)
        if choice.to is None:
            raise BlastRadiusExceeded(choice.refused or "no model to fail over to")
        to, healthy = choice.to, choice.healthy
        if params.to is None:
            # A retry must send the same model: the service replays the first answer for this key, and
            # refuses the key with another body; reading the state again would choose the model after it.
            ctx.audit(
                CHOSEN,
                {"graph": params.graph, "from": choice.current, "to": to, "healthy": healthy,
                 "idempotency_key": ctx.idempotency_key},
            )  # fmt: skip
    answer = ctx.ports.admin_api.request(
        target,
        "POST",
        f"/graphs/{params.graph}/llm",
        json={"model": to},
        idempotency_key=ctx.idempotency_key,
        timeout=ctx.time_left(TIMEOUT_SECONDS),
    )
    return ActionResult(
        value=to,
        output={
            "target": target.name,
            "graph": params.graph,
            "model": answer.get("model", to),
            "previous": answer.get("previous"),
            "changed": bool(answer.get("changed")),
            "healthy": healthy,
        },
    )


# -- llm.limit --------------------------------------------------------------------------------------


class LimitParams(Params):
    target: str = "default"
    graph: GraphName
    concurrency: int | None = Field(default=None, ge=0)  # concurrent runs of the graph; 0 removes the cap
    token_budget: int | None = Field(default=None, ge=0)  # tokens per minute; 0 removes the budget

    @model_validator(mode="after")
    def _something(self) -> LimitParams:
        if self.concurrency is None and self.token_budget is None:
            raise ValueError("give `concurrency` or `token_budget` (or both); 0 removes a cap")
        return self


def limit_refusal(target: Target, params: LimitParams) -> str | None:
    """Why the caps would be tighter than the target allows, or None (0 removes a cap: never refused)."""
    reasons = []
    if params.concurrency and params.concurrency < target.min_llm_concurrency:
        reasons.append(
            f"a concurrency cap of {params.concurrency} on graph {params.graph!r} is below target "
            f"{target.name!r}'s min_llm_concurrency of {target.min_llm_concurrency}"
        )
    if params.token_budget and params.token_budget < target.min_token_budget:
        reasons.append(
            f"a token budget of {params.token_budget} on graph {params.graph!r} is below target "
            f"{target.name!r}'s min_token_budget of {target.min_token_budget}"
        )
    return "; ".join(reasons) or None


def _caps(concurrency: int | None, token_budget: int | None) -> dict[str, int]:
    """Caps as outputs and templates see them: 0 for none, which is also what removes a cap."""
    return {"concurrency_limit": concurrency or 0, "token_budget": token_budget or 0}


def _cap_text(caps: dict[str, int]) -> str:
    concurrency = caps["concurrency_limit"] or "no cap"
    budget = f"{caps['token_budget']} tokens/min" if caps["token_budget"] else "none"
    return f"concurrency {concurrency}, token budget {budget}"


def _limited(params: LimitParams, output: dict[str, Any]) -> str:
    graph, target = output.get("graph", params.graph), output.get("target", params.target)
    now = {k: int(output.get(k) or 0) for k in ("concurrency_limit", "token_budget")}
    if output.get("changed") is False:
        return f"Graph {graph} on {target} already had {_cap_text(now)}; left as it was"
    previous = dict(output.get("previous") or {})
    before = {k: int(previous.get(k) or 0) for k in ("concurrency_limit", "token_budget")}
    return f"Set graph {graph} on {target} to {_cap_text(now)} (was {_cap_text(before)})"


def _plan_limit(ctx: ActionContext, params: LimitParams) -> Plan:
    target = llm_target(ctx, params.target, "llm.limit")
    graph = read_llm(ctx, target).graph(target, params.graph)
    before = _caps(graph.concurrency_limit, graph.token_budget)
    after = dict(before)
    if params.concurrency is not None:
        after["concurrency_limit"] = params.concurrency
    if params.token_budget is not None:
        after["token_budget"] = params.token_budget
    floors = f"floors: concurrency {target.min_llm_concurrency}, token budget {target.min_token_budget}"
    where = f"graph {params.graph} on {target.name}"
    noop = after == before
    if noop:
        sentence = f"leave {where} at {_cap_text(before)}: already as wanted ({floors})"
    else:
        sentence = f"cap {where}: {_cap_text(before)} → {_cap_text(after)} ({floors})"
    change = {
        "graph": params.graph,
        "from": before,
        "to": after,
        "floors": {"min_llm_concurrency": target.min_llm_concurrency, "min_token_budget": target.min_token_budget},
    }
    return Plan(
        action="llm.limit",
        target=target.name,
        change=change,
        sentence=sentence,
        refused=limit_refusal(target, params),
        noop=noop,
    )


@action(
    "llm.limit",
    params=LimitParams,
    inverse="llm.limit",
    blast_radius=refusal_of(lambda ctx, params: limit_refusal(ctx.target(params.target), params)),
    blast_radius_doc="never a concurrency cap below the target's min_llm_concurrency, nor a token budget below "
    "its min_token_budget (0 removes a cap)",
    target=target_name,
    describe_effect=_limited,
    plan=_plan_limit,
)
def limit(ctx: ActionContext, params: LimitParams) -> ActionResult:
    """Cap a graph's concurrent runs and/or its tokens per minute; output.previous holds the caps it replaced."""
    target = llm_target(ctx, params.target, "llm.limit")
    refusal = limit_refusal(target, params)
    if refusal:
        raise BlastRadiusExceeded(refusal)
    answer = ctx.ports.admin_api.request(
        target,
        "POST",
        f"/graphs/{params.graph}/limits",
        json={"concurrency": params.concurrency, "token_budget": params.token_budget},
        idempotency_key=ctx.idempotency_key,
        timeout=ctx.time_left(TIMEOUT_SECONDS),
    )
    now = _caps(answer.get("concurrency_limit"), answer.get("token_budget"))
    previous = dict(answer.get("previous") or {})
    return ActionResult(
        value=now,
        output={
            "target": target.name,
            "graph": params.graph,
            **now,
            "previous": _caps(previous.get("concurrency_limit"), previous.get("token_budget")),
            "changed": bool(answer.get("changed")),
        },
    )
