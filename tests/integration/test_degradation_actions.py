"""service.degrade and service.restore against the real sample service over HTTP.

Each action is called as the executor calls it (the blast-radius check, then the call, through the
real admin API client); what it changed is read back from the service's admin API and /metrics: the
degraded feature answers its fallback instead of failing while its dependency is down.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from controlplane.actions.base import BlastRadiusExceeded
from controlplane.config import Settings
from controlplane.errors import ActionError
from controlplane.rules.schema import Target
from tests.helpers import action_context
from tests.integration.test_llm_actions import Runner, registry
from tests.sample_fixture import SampleApp, SampleClient, run_sample_app


def target(sample: SampleApp, **fields: Any) -> Target:
    return Target.model_validate({"name": "default", "kind": "http", "url": f"{sample.url}/admin", **fields})


def state(c: SampleClient) -> tuple[str, list[str]]:
    view = c.admin("GET", "/degradation")
    return view["level"], view["features"]


def uses(c: SampleClient, feature: str, result: str) -> float:
    return c.metric("langgraph_feature_requests_total", feature=feature, result=result)


def test_degrade_turns_a_failing_feature_into_its_fallback_and_restore_brings_it_back(
    sample_app: SampleApp, unused_engine: Engine
) -> None:
    c = sample_app.client
    run = Runner(unused_engine, target(sample_app))
    c.fault(dependency="external_api", broken=True)
    c.wait_until(lambda: uses(c, "external_api", "error") >= 3)
    done = run("service.degrade", key="3:0", level="degraded", features=["external_api"])
    assert (done.value, done.output["features"], done.output["changed"]) == ("degraded", ["external_api"], True)
    assert done.output["undo"] == {"level": "", "features": "external_api"}
    assert c.metric("langgraph_service_level", level="degraded") == 1
    errors, fallbacks = uses(c, "external_api", "error"), uses(c, "external_api", "fallback")
    c.wait_until(lambda: uses(c, "external_api", "fallback") >= fallbacks + 3)
    assert uses(c, "external_api", "error") == errors  # no error since: the fallback answers
    assert uses(c, "retrieval", "fallback") == 0  # the other features run as before

    # A retry of the step replays the service's first answer.
    assert run("service.degrade", key="3:0", level="degraded", features=["external_api"]).output == done.output
    assert c.idempotency()["3:0"]["received"] == 2

    c.clear_faults()
    back = run("service.restore", key="3:9")
    assert (back.value, back.output["previous"]) == ("full", {"level": "degraded", "features": ["external_api"]})
    assert state(c) == ("full", [])
    ok = uses(c, "external_api", "ok")
    c.wait_until(lambda: uses(c, "external_api", "ok") >= ok + 3)


def test_the_rollback_restores_the_previous_level_and_features_exactly(
    sample_app: SampleApp, unused_engine: Engine
) -> None:
    c = sample_app.client
    run = Runner(unused_engine, target(sample_app))
    run("service.degrade", key="1:0", level="degraded", features=["retrieval"])  # before: a person's, say
    minimal = run("service.degrade", key="2:0", level="minimal", features=["retrieval", "external_api"])
    assert state(c) == ("minimal", ["external_api", "retrieval"])
    assert minimal.output["undo"] == {"level": "degraded", "features": "external_api"}
    # What the shipped playbooks' rollback sends: the strings of output.undo, as rendered.
    run("service.restore", key="2:1000", **minimal.output["undo"])
    assert state(c) == ("degraded", ["retrieval"])
    assert c.metric("langgraph_feature_degraded", feature="advanced_analysis") == 0


def test_degrade_is_bounded_by_the_targets_min_service_level(sample_app: SampleApp, unused_engine: Engine) -> None:
    c = sample_app.client
    run = Runner(unused_engine, target(sample_app, min_service_level="degraded"))
    expected = "level minimal is below target 'default''s min_service_level of degraded"
    assert run.refusal("service.degrade", level="minimal") == expected
    with pytest.raises(BlastRadiusExceeded, match="min_service_level of degraded"):
        run("service.degrade", level="minimal")
    assert run.refusal("service.degrade", level="degraded", features=["retrieval"]) is None
    run("service.degrade", level="degraded", features=["retrieval"])
    assert state(c) == ("degraded", ["retrieval"])
    never = Runner(unused_engine, target(sample_app, min_service_level="full"))
    assert "never degraded automatically" in str(never.refusal("service.degrade", level="degraded", features=["x"]))


def test_the_service_refuses_an_unknown_feature_with_its_message(sample_app: SampleApp, unused_engine: Engine) -> None:
    run = Runner(unused_engine, target(sample_app))
    with pytest.raises(ActionError, match="no feature named 'teleport'"):
        run("service.degrade", level="degraded", features=["teleport"])
    assert state(sample_app.client) == ("full", [])


def test_plans_read_the_service_and_send_nothing(unused_engine: Engine) -> None:
    with run_sample_app(["a"], interval=3600) as sample:
        c = sample.client
        c.admin("POST", "/degrade", {"level": "degraded", "features": ["retrieval"]})
        ctx = action_context(Settings(), unused_engine, target(sample, min_service_level="degraded"))
        before, keys = c.admin("GET", "/degradation"), c.idempotency()
        plans = {}
        for name, params in (
            ("service.degrade", {"level": "degraded", "features": ["external_api"]}),
            ("service.degrade", {"level": "minimal"}),
            ("service.restore", {"features": "retrieval"}),
            ("service.restore", {"level": "", "features": ""}),
        ):
            spec = registry.get(name)
            assert spec.plan is not None
            plan = spec.plan(ctx, spec.params.model_validate(params))
            plans[f"{name} {params}"] = (plan.sentence, plan.refused, plan.noop)
        assert list(plans.values()) == [
            ("degrade default degraded (retrieval off) → degraded (external_api, retrieval off) (at least degraded)",
             None, False),
            ("degrade default degraded (retrieval off) → minimal (retrieval off) (at least degraded)",
             "level minimal is below target 'default''s min_service_level of degraded", False),
            ("restore default degraded (retrieval off) → full", None, False),
            ("leave default degraded (retrieval off): nothing to restore", None, True),
        ]  # fmt: skip
        assert c.admin("GET", "/degradation") == before and c.idempotency() == keys
