"""Owns the capacity model `k8s.scale` can take its replica count from (seed 004's capacity planning).

    concurrency = rps x mean execution time x peak factor x (1 + safety margin)
    replicas    = max(min_replicas, ceil(concurrency / per-instance concurrency))

rps and the mean execution time are PromQL queries of the step, read through the `prometheus`
port as the `prometheus.*` actions read it, once per call (a plan runs them too: they only
read). A query with no data, NaN, an infinity or a negative value fails the step: a workload is
never scaled on missing data. The target's bounds apply afterwards, as to any other count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import Field

from controlplane.actions.base import ActionContext, ActionError, Params
from controlplane.errors import ElsewhereError
from controlplane.integrations.prometheus import PrometheusError

# Seed 004's figures.
PEAK_FACTOR = 2.0
SAFETY_MARGIN = 0.3
PER_INSTANCE = 50.0
MIN_REPLICAS = 3


class CapacityParams(Params):
    """`k8s.scale`'s `capacity`: the two queries and the model's factors."""

    rps: str = Field(min_length=1)  # PromQL: requests (graph executions) per second, one number
    execution_time: str = Field(min_length=1)  # PromQL: mean execution time in seconds, one number
    peak_factor: float = Field(default=PEAK_FACTOR, gt=0)
    safety_margin: float = Field(default=SAFETY_MARGIN, ge=0)
    per_instance: float = Field(default=PER_INSTANCE, gt=0)  # concurrent executions one replica takes
    min_replicas: int = Field(default=MIN_REPLICAS, ge=0)


@dataclass(frozen=True)
class CapacityEstimate:
    """The model's inputs and its result: what a plan and a step's output show."""

    rps: float
    execution_time: float
    peak_factor: float
    safety_margin: float
    per_instance: float
    min_replicas: int
    concurrency: float
    replicas: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        """`100 rps x 2 s x peak 2 x (1 + 0.3) = 520 concurrent / 50 per replica → 11`."""
        return (
            f"{self.rps:.4g} rps x {self.execution_time:.4g} s x peak {self.peak_factor:g} x "
            f"(1 + {self.safety_margin:g}) = {self.concurrency:.4g} concurrent / {self.per_instance:g} "
            f"per replica → {self.replicas} (at least {self.min_replicas})"
        )


def capacity_replicas(
    rps: float,
    execution_time: float,
    *,
    peak_factor: float = PEAK_FACTOR,
    safety_margin: float = SAFETY_MARGIN,
    per_instance: float = PER_INSTANCE,
    min_replicas: int = MIN_REPLICAS,
) -> CapacityEstimate:
    """The replicas the model asks for (before the target's bounds), with the concurrency it came from."""
    concurrency = rps * execution_time * peak_factor * (1 + safety_margin)
    # The seed floors this division (int(...)); we round up, so the last partial replica's worth
    # of concurrency still gets a replica instead of being lost. round(): 10.000000000000002
    # (float noise) is 10 replicas, not 11.
    needed = math.ceil(round(concurrency / per_instance, 6))
    return CapacityEstimate(
        rps=rps,
        execution_time=execution_time,
        peak_factor=peak_factor,
        safety_margin=safety_margin,
        per_instance=per_instance,
        min_replicas=min_replicas,
        concurrency=concurrency,
        replicas=max(min_replicas, needed),
    )


def _measure(ctx: ActionContext, name: str, promql: str) -> float:
    """One number of the query, or a step failure saying why there is none (never a guess)."""
    url = ctx.ports.prometheus_url
    output = {"query": promql, "prometheus": url}
    try:
        value = ctx.ports.prometheus.query_scalar(promql)
    except PrometheusError as exc:
        # Not the workload's fault: retried, but kept off the workload's circuit.
        raise ElsewhereError(f"capacity {name}: {exc}", retriable=exc.retriable, output=output) from exc
    if value is None or math.isinf(value) or value < 0:
        found = "no data (no series, or NaN)" if value is None else f"{value:g}"
        raise ActionError(
            f"capacity {name} query {promql!r} returned {found}: not scaling on missing data",
            retriable=False,
            output=output,
        )
    return value


def estimate(ctx: ActionContext, params: CapacityParams) -> CapacityEstimate:
    """Run the step's two queries now and apply the model to their values."""
    return capacity_replicas(
        _measure(ctx, "rps", params.rps),
        _measure(ctx, "execution_time", params.execution_time),
        peak_factor=params.peak_factor,
        safety_margin=params.safety_margin,
        per_instance=params.per_instance,
        min_replicas=params.min_replicas,
    )
