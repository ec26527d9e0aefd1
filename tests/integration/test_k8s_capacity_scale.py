"""k8s.scale with `capacity`: seed 004's model on two PromQL answers, through the real clients.

The Kubernetes API server is the stand-in (tests/standins/kubernetes.py); Prometheus is an answer
stand-in (tests/standins/prometheus.py) giving the exact numbers the model is checked on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Plan
from controlplane.actions.builtin import build_registry
from controlplane.config import Settings
from controlplane.errors import ElsewhereError
from controlplane.rules.schema import Target
from tests.helpers import T0, action_context
from tests.prometheus_server import free_port
from tests.standins.kubernetes import KubernetesStandIn
from tests.standins.prometheus import PrometheusAnswers

NS = "agents"
APP = "langgraph-api"
PROD = Target(name="prod", kind="kubernetes", namespace=NS, deployment=APP, min_replicas=2, max_replicas=20)
RPS = "sum(rate(langgraph_executions_total[5m]))"
SECONDS = (
    "sum(rate(langgraph_execution_duration_seconds_sum[5m]))"
    " / sum(rate(langgraph_execution_duration_seconds_count[5m]))"
)
CAPACITY = {"rps": RPS, "execution_time": SECONDS}
registry = build_registry()
spec = registry.get("k8s.scale")


@pytest.fixture(scope="module")
def server() -> Iterator[KubernetesStandIn]:
    standin = KubernetesStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture
def k8s(server: KubernetesStandIn) -> KubernetesStandIn:
    server.reset()
    server.add_workload(NS, APP, replicas=3)
    return server


@pytest.fixture
def prometheus() -> Iterator[PrometheusAnswers]:
    answers = PrometheusAnswers()
    yield answers
    answers.close()


@pytest.fixture
def ctx(k8s: KubernetesStandIn, prometheus: PrometheusAnswers, tmp_path: Path, unused_engine: Engine) -> ActionContext:
    token = tmp_path / "token"
    token.write_text(k8s.token + "\n")
    settings = Settings(kube_api_url=k8s.url, kube_token_file=token, prometheus_url=prometheus.url)
    return action_context(settings, unused_engine, PROD, now=T0)


def scale(ctx: ActionContext, **capacity: Any) -> ActionResult:
    return spec.func(ctx, spec.params.model_validate({"target": "prod", "capacity": CAPACITY | capacity}))


def plan(ctx: ActionContext, **capacity: Any) -> Plan:
    assert spec.plan is not None
    return spec.plan(ctx, spec.params.model_validate({"target": "prod", "capacity": CAPACITY | capacity}))


def replicas(k8s: KubernetesStandIn) -> int:
    return int(k8s.get("deployments", NS, APP)["spec"]["replicas"])


def test_capacity_is_one_of_the_ways_to_ask() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        spec.params.model_validate({"target": "prod", "capacity": CAPACITY, "replicas": 4})
    with pytest.raises(ValueError):
        spec.params.model_validate({"target": "prod", "capacity": {"rps": RPS}})  # the execution time too


def test_scales_to_what_the_model_computes_rounding_the_last_instance_up(
    k8s: KubernetesStandIn, prometheus: PrometheusAnswers, ctx: ActionContext
) -> None:
    prometheus.set(RPS, 100)
    prometheus.set(SECONDS, 2.0)
    result = scale(ctx)  # 100 x 2 x 2 x 1.3 = 520 concurrent / 50 = 10.4 -> 11 (the seed would say 10)
    assert (result.value, result.output["previous"], result.output["clamped"], replicas(k8s)) == (11, 3, False, 11)
    model = result.output["capacity"]
    assert model | {"rps": 100, "execution_time": 2.0, "peak_factor": 2.0, "safety_margin": 0.3} == model
    assert (model["per_instance"], model["min_replicas"], model["replicas"]) == (50, 3, 11)
    assert model["concurrency"] == pytest.approx(520)
    assert "capacity model: 100 rps x 2 s" in (spec.describe_effect or (lambda *_: ""))(
        spec.params.model_validate({"target": "prod", "capacity": CAPACITY}), {"value": 11, **result.output}
    )
    assert prometheus.queries == [RPS, SECONDS]  # once each, not per re-read of the replicas


def test_the_targets_bounds_and_the_models_minimum_hold(
    k8s: KubernetesStandIn, prometheus: PrometheusAnswers, ctx: ActionContext
) -> None:
    prometheus.set(RPS, 1000)
    prometheus.set(SECONDS, 5)  # 13,000 concurrent: 260 replicas asked, max_replicas 20
    result = scale(ctx)
    assert (result.value, result.output["requested"], result.output["clamped"]) == (20, 260, True)
    prometheus.set(RPS, 1)  # 13 concurrent: the model's floor of 3
    assert scale(ctx).value == 3 and replicas(k8s) == 3
    assert scale(ctx, min_replicas=0).value == 2  # and the target's min_replicas under it


@pytest.mark.parametrize(("rps", "why"), [(None, "no data"), ("NaN", "no data"), ("-1", "returned -1")])
def test_missing_data_fails_the_step_and_scales_nothing(
    k8s: KubernetesStandIn, prometheus: PrometheusAnswers, ctx: ActionContext, rps: str | None, why: str
) -> None:
    if rps is not None:
        prometheus.set(RPS, rps)
    prometheus.set(SECONDS, 2.0)
    with pytest.raises(ActionError, match=f"capacity rps query .*{why}.*: not scaling on missing data") as err:
        scale(ctx)
    assert not err.value.retriable
    with pytest.raises(ActionError, match="not scaling on missing data"):
        plan(ctx)
    assert k8s.writes() == [] and replicas(k8s) == 3


def test_the_plan_states_the_inputs_and_the_result(
    k8s: KubernetesStandIn, prometheus: PrometheusAnswers, ctx: ActionContext
) -> None:
    prometheus.set(RPS, 100)
    prometheus.set(SECONDS, 2.0)
    found = plan(ctx)
    assert found.sentence == (
        f"scale {NS}/{APP} 3 → 11 replicas (capacity model: 100 rps x 2 s x peak 2 x (1 + 0.3) = 520 concurrent "
        "/ 50 per replica → 11 (at least 3); bounds 2..20)"
    )
    assert found.change["capacity"]["rps"] == 100 and found.change["to"] == 11
    assert k8s.writes() == []


def test_an_unreachable_prometheus_is_retried_but_not_held_against_the_workload(
    k8s: KubernetesStandIn, tmp_path: Path, unused_engine: Engine
) -> None:
    token = tmp_path / "token"
    token.write_text(k8s.token + "\n")
    settings = Settings(kube_api_url=k8s.url, kube_token_file=token, prometheus_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ElsewhereError, match="capacity rps: cannot reach Prometheus") as err:
        scale(action_context(settings, unused_engine, PROD, now=T0))
    assert err.value.retriable  # the step's retry policy retries it; the workload's circuit does not count it
    assert k8s.writes() == []
