"""Owns `graph.canary`: a verification step that sends synthetic runs through a graph of an http target.

`POST /graphs/{graph}/canary` sends N runs through the graph's current model (llm.py reads which);
the step fails unless `min_success` of them (default: all) succeed within `max_latency`. It changes
nothing on the target, so a plan only says what it would send.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field, model_validator

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.actions.graph import GraphName, target_name
from controlplane.actions.llm import llm_target, read_llm
from controlplane.durations import Duration, format_duration, spoken

CANARY_TIMEOUT_SECONDS = 120.0  # at most: the runs themselves take time (the step's deadline may cut it shorter)


class CanaryParams(Params):
    target: str = "default"
    graph: GraphName
    runs: int = Field(default=5, ge=1, le=20)
    max_latency: Duration = timedelta(seconds=10)  # a run slower than this does not count as a success
    min_success: int | None = Field(default=None, ge=1)  # default: every run
    retriable: bool = False  # True: a failed canary is retried by the step's `retry` (each attempt sends new runs)

    @model_validator(mode="after")
    def _within_runs(self) -> CanaryParams:
        if self.min_success is not None and self.min_success > self.runs:
            raise ValueError(f"min_success {self.min_success} is more than the {self.runs} runs sent")
        if self.max_latency <= timedelta(0):
            raise ValueError("max_latency must be longer than 0s")
        return self

    @property
    def needed(self) -> int:
        return self.min_success or self.runs

    @property
    def bound(self) -> str:
        """max_latency as a person reads it; under a second in milliseconds (`spoken` would say `0 s`)."""
        return (
            spoken(self.max_latency) if self.max_latency >= timedelta(seconds=1) else format_duration(self.max_latency)
        )


def _canary_passed(params: CanaryParams, output: dict[str, Any]) -> str:
    graph, target = output.get("graph", params.graph), output.get("target", params.target)
    return (
        f"Canary on graph {graph} ({output.get('model')}) on {target}: {output.get('value')} of "
        f"{output.get('runs', params.runs)} runs succeeded within {params.bound}"
    )


def _plan_canary(ctx: ActionContext, params: CanaryParams) -> Plan:
    """A canary sends runs: the plan says what it would send, and sends nothing."""
    target = llm_target(ctx, params.target, "graph.canary")
    view = read_llm(ctx, target)
    model = view.graph(target, params.graph).model
    health = view.health(model)
    sentence = (
        f"send {params.runs} canary runs through graph {params.graph} on {target.name} ({model}, {health} now); "
        f"pass when {params.needed} succeed within {params.bound}"
    )
    change = {
        "graph": params.graph,
        "model": model,
        "model_health": health,
        "runs": params.runs,
        "min_success": params.needed,
        "max_latency_seconds": params.max_latency.total_seconds(),
    }
    return Plan(action="graph.canary", target=target.name, change=change, sentence=sentence)


def count_within(answer: dict[str, Any], limit_seconds: float) -> int:
    """The runs of a canary's answer that succeeded within `limit_seconds`: a failed run may answer fast too.

    `outcomes` ("ok" or the error, one per run, as the sample service answers) pairs each run with its
    latency; without them, no more successes are counted than runs within the bound.
    """
    latencies = [float(x) for x in answer.get("latencies_seconds", [])]
    outcomes = [str(x) for x in answer.get("outcomes", [])]
    if len(outcomes) == len(latencies):
        return sum(1 for ok, x in zip(outcomes, latencies, strict=True) if ok == "ok" and x <= limit_seconds)
    return min(int(answer.get("succeeded", 0)), sum(1 for x in latencies if x <= limit_seconds))


@action(
    "graph.canary",
    params=CanaryParams,
    target=target_name,
    describe_effect=_canary_passed,
    plan=_plan_canary,
)
def canary(ctx: ActionContext, params: CanaryParams) -> ActionResult:
    """Verify a graph works: send synthetic runs through it; fail the step unless enough succeed within max_latency."""
    target = llm_target(ctx, params.target, "graph.canary")
    # No idempotency key: a canary measures now, so a retried step sends new runs rather than replaying old ones.
    answer = ctx.ports.admin_api.request(
        target,
        "POST",
        f"/graphs/{params.graph}/canary",
        json={"runs": params.runs},
        timeout=ctx.time_left(CANARY_TIMEOUT_SECONDS),
    )
    limit_seconds = params.max_latency.total_seconds()
    latencies = [float(x) for x in answer.get("latencies_seconds", [])]
    outcomes = [str(x) for x in answer.get("outcomes", [])]
    succeeded = int(answer.get("succeeded", 0))
    within = count_within(answer, limit_seconds)
    output = {
        "target": target.name,
        "graph": params.graph,
        "model": answer.get("model"),
        "runs": int(answer.get("runs", params.runs)),
        "succeeded": succeeded,
        "within_latency": within,
        "min_success": params.needed,
        "max_latency_seconds": limit_seconds,
        "latencies_seconds": latencies,
        "outcomes": outcomes,
        "slowest_seconds": max(latencies, default=0.0),
    }
    if within < params.needed:
        raise ActionError(
            f"canary on graph {params.graph} ({answer.get('model')}) on {target.name}: {within} of "
            f"{output['runs']} runs succeeded within {params.bound}, {params.needed} needed "
            f"({succeeded} succeeded; slowest {output['slowest_seconds']:.3g} s)",
            retriable=params.retriable,
            output=output,
        )
    return ActionResult(value=within, output=output)
