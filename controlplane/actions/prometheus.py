"""Owns the Prometheus actions: `prometheus.query` and `prometheus.top`, read-only PromQL for playbook steps.

Both query the service's Prometheus (CONTROLPLANE_PROMETHEUS_URL, the `prometheus` port) at the
time the step runs. They only read, so they run in dry-run mode too: later steps' templates
need their values.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.integrations.prometheus import PrometheusError, Reduce, Sample

RANKING_LIMIT = 50  # keeps a step's recorded output small on a query returning thousands of series


class QueryParams(Params):
    query: str = Field(min_length=1)
    # Unset: the value is every sample. Set: one number ("single" refuses several series).
    reduce: Reduce | None = None


class TopParams(Params):
    query: str = Field(min_length=1)
    label: str = Field(min_length=1)
    order: Literal["desc", "asc"] = "desc"


def _target(ctx: ActionContext, _params: Any) -> str:
    # Both actions' breakers are keyed by the one Prometheus the service queries.
    return ctx.ports.prometheus_url


def _number(value: float | None) -> float | str | None:
    """A JSON-safe number: NaN is no value; infinities are written as Prometheus writes them."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def _sample(sample: Sample) -> dict[str, Any]:
    return {"labels": sample.labels, "value": _number(sample.value)}


def _failed(exc: PrometheusError, query: str, url: str) -> ActionError:
    return ActionError(str(exc), retriable=exc.retriable, output={"query": query, "prometheus": url})


def _queried(params: QueryParams, output: dict[str, Any]) -> str:
    if params.reduce is None:
        count = len(output.get("samples") or [])
        return f"Queried Prometheus: {count} series"
    return f"Queried Prometheus: {params.reduce} = {_shown(output.get('value'))}"


def _shown(value: Any) -> str:
    """A sample's value short enough to read: 0.4231 for 0.42312345, `no value` for NaN."""
    if value is None:
        return "no value"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ran(name: str, func: Any, describe: Any, ctx: ActionContext, params: Any) -> Plan:
    """The plan of a query: it only reads, so it runs, and later steps' templates see its value."""
    result: ActionResult = func(ctx, params)
    found = describe(params, {"value": result.value, **result.output})
    sentence = f"query Prometheus (runs during the plan): {found[0].lower()}{found[1:]}"
    change = {"query": params.query, "value": result.value}
    url = ctx.ports.prometheus_url
    return Plan(action=name, target=url, change=change, sentence=sentence, noop=True, ran=result)


@action(
    "prometheus.query",
    params=QueryParams,
    target=_target,
    describe_effect=_queried,
    reads_only=True,
    plan=lambda ctx, params: _plan_query(ctx, params),
)
def query(ctx: ActionContext, params: QueryParams) -> ActionResult:
    """Run an instant PromQL query; the value is its samples [{labels, value}], or one number with `reduce`."""
    url, client = ctx.ports.prometheus_url, ctx.ports.prometheus
    try:
        if params.reduce is None:
            samples = [_sample(s) for s in client.query_vector(params.query)]
            return ActionResult(value=samples, output={"query": params.query, "samples": samples})
        value = _number(client.query_scalar(params.query, reduce=params.reduce))
    except PrometheusError as exc:
        raise _failed(exc, params.query, url) from exc
    return ActionResult(value=value, output={"query": params.query, "reduce": params.reduce, "value": value})


def _ranked(params: TopParams, output: dict[str, Any]) -> str:
    which = "highest" if params.order == "desc" else "lowest"
    series = output.get("series", 0)
    of = f" of {series} series" if series != 1 else ""
    return f"Found {params.label} {output.get('value')} {which}{of} ({_shown(output.get('top_value'))})"


@action(
    "prometheus.top",
    params=TopParams,
    target=_target,
    describe_effect=_ranked,
    reads_only=True,
    plan=lambda ctx, params: _plan_top(ctx, params),
)
def top(ctx: ActionContext, params: TopParams) -> ActionResult:
    """Rank a query's series by value; the value is the `label` of the highest (or lowest, order: asc)."""
    url, client = ctx.ports.prometheus_url, ctx.ports.prometheus
    try:
        samples = [s for s in client.query_vector(params.query) if not math.isnan(s.value)]
    except PrometheusError as exc:
        raise _failed(exc, params.query, url) from exc
    output: dict[str, Any] = {"query": params.query, "label": params.label, "order": params.order}
    if not samples:
        raise ActionError("query returned no data", retriable=False, output=output)
    sign = -1.0 if params.order == "desc" else 1.0
    # Ties broken by the label value, so the same data always names the same target.
    samples.sort(key=lambda s: (sign * s.value, s.labels.get(params.label, "")))
    best = samples[0]
    if params.label not in best.labels:
        carried = ", ".join(sorted(best.labels)) or "none"
        raise ActionError(
            f"label {params.label!r} is not on the top series (its labels: {carried}); "
            f"keep it in the query, e.g. `sum by ({params.label}) (...)`",
            retriable=False,
            output=output,
        )
    value = best.labels[params.label]
    output |= {
        "value": value,
        "top_value": _number(best.value),
        "ranking": [
            {"label": s.labels.get(params.label), "value": _number(s.value), "labels": s.labels}
            for s in samples[:RANKING_LIMIT]
        ],
        "series": len(samples),
    }
    return ActionResult(value=value, output=output)


def _plan_query(ctx: ActionContext, params: QueryParams) -> Plan:
    return _ran("prometheus.query", query, _queried, ctx, params)


def _plan_top(ctx: ActionContext, params: TopParams) -> Plan:
    return _ran("prometheus.top", top, _ranked, ctx, params)
