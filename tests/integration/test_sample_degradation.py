"""The sample service's graceful degradation over HTTP: levels, features answering their fallback, dependency faults.

Ticks are driven by the test (the app's lifespan ticker is not started), so every count is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.sample.app import create_app
from controlplane.sample.service import SampleService
from tests.integration.test_sample_llm import Sample


@pytest.fixture
def sample() -> Iterator[Sample]:
    service = SampleService(["chat", "search"])
    yield Sample(service, TestClient(create_app(service)))  # not entered: no ticker


def uses(s: Sample, feature: str, result: str) -> float:
    return s.metric("langgraph_feature_requests_total", feature=feature, result=result)


def test_full_at_start_with_every_series_and_every_dependency_healthy(sample: Sample) -> None:
    s = sample
    view = s.call("GET", "/degradation")
    assert (view["level"], view["features"], view["unavailable"]) == ("full", [], [])
    assert view["dependencies"]["external_api"] == {"healthy": True, "feature": "external_api"}
    assert s.metric("langgraph_service_level", level="full") == 1
    assert s.metric("langgraph_service_level") == 1
    assert len(s.series("langgraph_feature_requests_total")) == 9  # 3 features x ok, fallback, error
    assert s.metric("langgraph_dependency_up", dependency="vector_store", feature="retrieval") == 1
    s.tick(2)
    assert uses(s, "retrieval", "ok") == 4 and s.metric("langgraph_feature_requests_total") == 12


def test_a_failed_dependency_makes_its_feature_fail_until_degraded_then_it_answers_its_fallback(sample: Sample) -> None:
    s = sample
    s.fault(dependency="external_api", broken=True)
    assert s.metric("langgraph_dependency_up", dependency="external_api", feature="external_api") == 0
    s.tick()
    assert uses(s, "external_api", "error") == 2 and uses(s, "retrieval", "ok") == 2
    answer = s.call("POST", "/degrade", {"level": "degraded", "features": ["external_api"]})
    assert answer == {
        "level": "degraded",
        "features": ["external_api"],
        "previous": {"level": "full", "features": []},
        "changed": True,
    }
    s.tick()
    assert uses(s, "external_api", "error") == 2 and uses(s, "external_api", "fallback") == 2
    assert s.metric("langgraph_feature_degraded", feature="external_api") == 1
    assert s.metric("langgraph_service_level", level="degraded") == 1
    assert s.metric("langgraph_service_level", level="full") == 0
    assert s.service.degradation.serve()["external_api"] == "cached external data"  # the fallback, not an error


def test_degrade_only_goes_down_and_is_idempotent(sample: Sample) -> None:
    s = sample
    body = {"level": "degraded", "features": ["retrieval"]}
    assert s.call("POST", "/degrade", body)["changed"] is True
    assert s.call("POST", "/degrade", body)["changed"] is False
    minimal = s.call("POST", "/degrade", {"level": "minimal"})
    assert (minimal["level"], minimal["features"], minimal["changed"]) == ("minimal", ["retrieval"], True)
    assert s.call("GET", "/degradation")["unavailable"] == ["advanced_analysis", "external_api", "retrieval"]
    again = s.call("POST", "/degrade", body)  # a degraded request never raises the level
    assert (again["level"], again["changed"]) == ("minimal", False)
    s.tick()
    assert uses(s, "advanced_analysis", "fallback") == 2 and uses(s, "advanced_analysis", "ok") == 0


def test_restore_goes_up_a_step_or_all_the_way(sample: Sample) -> None:
    s = sample
    s.call("POST", "/degrade", {"level": "degraded", "features": ["retrieval", "external_api"]})
    s.call("POST", "/degrade", {"level": "minimal"})
    up = s.call("POST", "/restore", {"level": "degraded"})
    assert (up["level"], up["previous"]["level"]) == ("degraded", "minimal")
    assert up["features"] == ["external_api", "retrieval"]
    one = s.call("POST", "/restore", {"features": ["retrieval"]})
    assert (one["level"], one["features"]) == ("degraded", ["external_api"])
    last = s.call("POST", "/restore", {"features": ["external_api"]})
    assert (last["level"], last["features"]) == ("full", [])  # no feature off: full
    s.call("POST", "/degrade", {"level": "minimal", "features": ["retrieval"]})
    full = s.call("POST", "/restore")
    assert (full["level"], full["features"], full["changed"]) == ("full", [], True)
    assert s.call("POST", "/restore")["changed"] is False
    assert s.metric("langgraph_feature_degraded") == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/degrade", {"level": "degraded", "features": ["teleport"]}, 404, "no feature named 'teleport'"),
        ("/degrade", {"level": "degraded"}, 400, "needs `features`"),
        ("/degrade", {"level": "full"}, 422, "level"),
        ("/degrade", {"level": "lowest"}, 422, "level"),
        ("/degrade", {"level": "minimal", "extra": 1}, 422, "extra"),
        ("/restore", {"level": "minimal"}, 422, "level"),
        ("/restore", {"features": ["teleport"]}, 404, "features: advanced_analysis, external_api, retrieval"),
        ("/faults", {"dependency": "redis", "broken": True}, 400, "no dependency named 'redis'"),
        ("/faults", {"dependency": "external_api"}, 422, "needs `broken`"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_changes_nothing(
    sample: Sample, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    answer = sample.request("POST", path, body)
    assert answer.status_code == status, answer.text
    assert message in answer.text
    view = sample.call("GET", "/degradation")
    assert (view["level"], view["features"]) == ("full", [])
    assert all(d["healthy"] for d in view["dependencies"].values())


def test_clearing_faults_heals_the_dependencies_but_keeps_the_level(sample: Sample) -> None:
    s = sample
    s.fault(dependency="vector_store", broken=True)
    s.fault(dependency="analysis_model", broken=True)
    assert s.call("GET", "/faults")["broken_dependencies"] == ["analysis_model", "vector_store"]
    s.call("POST", "/degrade", {"level": "minimal"})
    s.call("DELETE", "/faults")
    assert s.metric("langgraph_dependency_up") == 3
    assert s.call("GET", "/degradation")["level"] == "minimal"  # restoring is the control plane's call


def test_a_repeated_idempotency_key_replays_the_first_answer(sample: Sample) -> None:
    s = sample
    first = s.call("POST", "/degrade", {"level": "degraded", "features": ["retrieval"]}, key="k1")
    s.call("POST", "/restore")
    assert s.call("POST", "/degrade", {"level": "degraded", "features": ["retrieval"]}, key="k1") == first
    assert s.call("GET", "/degradation")["level"] == "full"
