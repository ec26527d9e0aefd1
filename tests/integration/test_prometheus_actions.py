"""prometheus.query and prometheus.top against the real Prometheus binary scraping a target the test controls."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from controlplane.actions.base import ActionError, ActionResult
from controlplane.actions.builtin import build_registry
from controlplane.actions.prometheus import QueryParams, TopParams
from controlplane.config import Settings
from controlplane.integrations.prometheus import PrometheusClient, PrometheusError
from tests.helpers import action_context
from tests.prometheus_server import PrometheusServer, free_port

registry = build_registry()

pytestmark = pytest.mark.slow


def run(action: str, url: str, engine: Engine, **params: Any) -> ActionResult:
    spec = registry.get(action)
    ctx = action_context(Settings(prometheus_url=url), engine, key="test")
    return spec.func(ctx, spec.params.model_validate(params))


@pytest.fixture(scope="module")
def graphs(prometheus: PrometheusServer) -> str:
    """A gauge per graph (a=1, b=3, c=2) plus one series without graph_name; returns the metric name."""
    name = prometheus.unique_name("graph_errors")
    for graph, value in {"a": 1, "b": 3, "c": 2}.items():
        prometheus.target.set(name, {"graph_name": graph}, value)
    prometheus.target.set(name, {"other": "x"}, 0.5)
    prometheus.wait_for(f"count({name})", 4)
    return name


def test_registered_with_typed_params(unused_engine: Engine) -> None:
    assert registry.get("prometheus.query").params is QueryParams
    assert registry.get("prometheus.top").params is TopParams
    ctx = action_context(Settings(prometheus_url="http://prom:9090"), unused_engine, key="test")
    assert (
        registry.get("prometheus.top").target_of(ctx, TopParams(query="x", label="y"))
        == "prometheus.top:http://prom:9090"
    )
    with pytest.raises(ValueError, match="order"):
        TopParams.model_validate({"query": "x", "label": "y", "order": "up"})


def test_query_returns_samples_or_one_reduced_number(
    prometheus: PrometheusServer, unused_engine: Engine, graphs: str
) -> None:
    url = prometheus.url
    result = run("prometheus.query", url, unused_engine, query=f"sum by (graph_name) ({graphs}{{graph_name!=''}})")
    assert sorted((s["labels"]["graph_name"], s["value"]) for s in result.value) == [("a", 1), ("b", 3), ("c", 2)]
    assert result.output["samples"] == result.value
    for reduce, expected in {"sum": 6.5, "max": 3, "min": 0.5}.items():
        assert run("prometheus.query", url, unused_engine, query=graphs, reduce=reduce).value == expected
    assert run("prometheus.query", url, unused_engine, query=f"sum({graphs})", reduce="single").value == 6.5
    assert run("prometheus.query", url, unused_engine, query=f"{graphs}_absent", reduce="single").value is None
    # 0/0 is a scalar NaN: no value, and still JSON-safe for the step's recorded output.
    assert run("prometheus.query", url, unused_engine, query="0/0", reduce="single").value is None
    with pytest.raises(ActionError, match="returned 4 series where one was expected") as err:
        run("prometheus.query", url, unused_engine, query=graphs, reduce="single")
    assert not err.value.retriable


def test_top_names_the_highest_or_lowest_series(
    prometheus: PrometheusServer, unused_engine: Engine, graphs: str
) -> None:
    query = f"sum by (graph_name) ({graphs}{{graph_name!=''}})"
    result = run("prometheus.top", prometheus.url, unused_engine, query=query, label="graph_name")
    assert result.value == "b"
    assert result.output["top_value"] == 3
    assert [(r["label"], r["value"]) for r in result.output["ranking"]] == [("b", 3), ("c", 2), ("a", 1)]
    lowest = run("prometheus.top", prometheus.url, unused_engine, query=query, label="graph_name", order="asc")
    assert lowest.value == "a"


def test_top_of_the_error_rate_names_the_failing_graph(prometheus: PrometheusServer, unused_engine: Engine) -> None:
    """The seed's example: the graph whose error counter grows fastest."""
    name = prometheus.unique_name("langgraph_executions") + "_total"
    for graph in ("a", "b"):
        prometheus.target.set(name, {"graph_name": graph, "status": "error"}, 0)
    prometheus.target.set(name, {"graph_name": "a", "status": "success"}, 0)
    prometheus.wait_for(f"count({name})", 3)
    prometheus.target.set(name, {"graph_name": "a", "status": "error"}, 5)
    prometheus.target.set(name, {"graph_name": "b", "status": "error"}, 50)
    prometheus.target.set(name, {"graph_name": "a", "status": "success"}, 1000)
    query = f'sum by (graph_name) (rate({name}{{status="error"}}[1m]))'
    prometheus.wait_for(query, lambda result: len(result) == 2 and all(value > 0 for _, value in result))
    result = run("prometheus.top", prometheus.url, unused_engine, query=query, label="graph_name")
    assert result.value == "b"
    assert result.output["series"] == 2


def test_top_without_data_or_label_fails_clearly(
    prometheus: PrometheusServer, unused_engine: Engine, graphs: str
) -> None:
    with pytest.raises(ActionError, match=r"^query returned no data$") as err:
        run("prometheus.top", prometheus.url, unused_engine, query=f"{graphs}_absent", label="graph_name")
    assert not err.value.retriable
    expected = r"label 'graph_name' is not on the top series .*sum by \(graph_name\)"
    with pytest.raises(ActionError, match=expected) as err:
        run("prometheus.top", prometheus.url, unused_engine, query=f"sum({graphs})", label="graph_name")
    assert not err.value.retriable


def test_bad_promql_is_not_retried_and_says_why(prometheus: PrometheusServer, unused_engine: Engine) -> None:
    with pytest.raises(ActionError, match=r"Prometheus answered 400: bad_data: .*parse error") as err:
        run("prometheus.query", prometheus.url, unused_engine, query="sum(rate(x[5m])")
    assert not err.value.retriable
    assert err.value.output["query"] == "sum(rate(x[5m])"
    with pytest.raises(ActionError, match=r"Prometheus answered 422: execution: .*many-to-many") as err:
        run("prometheus.top", prometheus.url, unused_engine, query='{job="target"} + on() {job="target"}', label="x")
    assert not err.value.retriable


def test_range_vector_and_string_results_are_refused(prometheus: PrometheusServer) -> None:
    client = PrometheusClient(prometheus.url)
    with pytest.raises(PrometheusError, match="range vector") as err:
        client.query_vector('up{job="target"}[1m]')
    assert not err.value.retriable
    with pytest.raises(PrometheusError, match="non-numeric"):
        client.query_vector('"text"')


def test_unreachable_prometheus_is_retriable(unused_engine: Engine) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ActionError, match=f"cannot reach Prometheus at {url}") as err:
        run("prometheus.query", url, unused_engine, query="up")
    assert err.value.retriable
    assert err.value.output["prometheus"] == url
    with pytest.raises(ActionError) as err:
        run("prometheus.top", url, unused_engine, query="up", label="job")
    assert err.value.retriable
