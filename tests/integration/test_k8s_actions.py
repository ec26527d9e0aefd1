"""k8s.* actions through the real `kubernetes` client against the API-server stand-in (Kubernetes cannot run here)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from controlplane.actions.base import ActionContext, ActionError, ActionResult
from controlplane.actions.builtin import build_registry
from controlplane.config import Settings
from controlplane.db import migrate
from controlplane.db.engine import make_engine
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import ingest_notification
from controlplane.integrations import kubernetes as kube
from controlplane.playbooks import service
from controlplane.playbooks.executor import Executor
from controlplane.playbooks.schemas import ExecutionDetail
from controlplane.playbooks.trigger import trigger_for_alerts
from controlplane.playbooks.worker import Worker
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.rules.loader import RuleSet, load_rules
from controlplane.rules.schema import Target
from controlplane.telemetry import Metrics
from tests.conftest import load_payload
from tests.helpers import T0, action_context
from tests.standins.kubernetes import KubernetesStandIn

NS = "agents"
APP = "langgraph-api"
CONFIG = "langgraph-config"
# Seed 001's HPA bounds.
PROD = Target(
    name="prod",
    kind="kubernetes",
    namespace=NS,
    deployment=APP,
    configmap=CONFIG,
    hpa=APP,
    min_replicas=2,
    max_replicas=20,
)
SCALE = f"/apis/apps/v1/namespaces/{NS}/deployments/{APP}/scale"
registry = build_registry()


@pytest.fixture(scope="module")
def server() -> Iterator[KubernetesStandIn]:
    standin = KubernetesStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture
def k8s(server: KubernetesStandIn) -> KubernetesStandIn:
    """The stand-in holding the prod target's objects: 3 replicas, an HPA 2..10, the graph ConfigMap."""
    server.reset()
    server.add_workload(NS, APP, replicas=3)
    server.add_hpa(NS, APP, min_replicas=2, max_replicas=10, workload=APP)
    server.add_configmap(NS, CONFIG, {"disabled_graphs": "", "checkpoint_storage": "postgres"})
    return server


def settings_for(url: str, tmp_path: Path, token: str) -> Settings:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    return Settings(kube_api_url=url, kube_token_file=token_file)


@pytest.fixture
def kube_settings(k8s: KubernetesStandIn, tmp_path: Path) -> Settings:
    return settings_for(k8s.url, tmp_path, k8s.token)


def context(settings: Settings, engine: Engine, key: str = "1:0", *targets: Target) -> ActionContext:
    return action_context(settings, engine, PROD, *targets, key=key, now=T0)


def run(settings: Settings, engine: Engine, action: str, key: str = "1:0", **params: Any) -> ActionResult:
    spec = registry.get(action)
    return spec.func(context(settings, engine, key), spec.params.model_validate({"target": "prod", **params}))


def replicas(k8s: KubernetesStandIn) -> int:
    return int(k8s.get("deployments", NS, APP)["spec"]["replicas"])


# -- registration ---------------------------------------------------------------------------


def test_registered_with_typed_params_bounds_and_breaker_keys(kube_settings: Settings, unused_engine: Engine) -> None:
    spec = registry.get("k8s.scale")
    assert "clamped" in (spec.describe()["blast_radius"] or "")
    params = spec.params.model_validate({"target": "prod", "delta": 1})
    assert spec.target_of(context(kube_settings, unused_engine), params) == f"k8s.scale:{NS}/{APP}"
    for bad in ({}, {"replicas": 3, "delta": 1}, {"factor": 0}, {"replicas": -1}, {"delta": 1, "extra": 1}):
        with pytest.raises(ValueError):
            spec.params.model_validate({"target": "prod", **bad})
    with pytest.raises(ValueError, match="min_replicas"):
        registry.get("k8s.patch_hpa").params.model_validate({"target": "prod"})
    # An unknown target does not break the breaker lookup; the action itself refuses it.
    assert registry.get("k8s.rollout_restart").target_of(context(kube_settings, unused_engine), params) != ""
    with pytest.raises(ActionError, match="unknown target 'nope'"):
        run(kube_settings, unused_engine, "k8s.scale", target="nope", delta=1)


# -- k8s.scale ------------------------------------------------------------------------------


def test_scale_to_replicas_by_delta_and_by_factor(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine
) -> None:
    steps: list[tuple[dict[str, Any], int, int]] = [
        ({"replicas": 5}, 3, 5),
        ({"delta": -1}, 5, 4),
        ({"factor": 1.5}, 4, 6),
        ({"factor": 1.1}, 6, 7),  # scaling out rounds up: at least one pod more
        ({"factor": 0.5}, 7, 3),  # scaling in rounds down
    ]
    for params, previous, expected in steps:
        result = run(kube_settings, unused_engine, "k8s.scale", **params)
        assert (result.value, result.output["previous"], result.output["clamped"]) == (expected, previous, False)
        assert replicas(k8s) == expected
    # Every write went to the scale subresource, conditional on the version just read.
    writes = k8s.writes()
    assert [(w.method, w.path, w.status) for w in writes] == [("PUT", SCALE, 200)] * 5
    assert all(w.body["metadata"]["resourceVersion"] for w in writes)


def test_scale_is_clamped_to_the_targets_bounds(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine
) -> None:
    result = run(kube_settings, unused_engine, "k8s.scale", replicas=50)
    assert result.value == 20 and replicas(k8s) == 20
    assert result.output | {"previous": 3, "requested": 50, "clamped": True} == result.output
    assert run(kube_settings, unused_engine, "k8s.scale", factor=4).output["clamped"] is True  # already at max
    assert replicas(k8s) == 20
    result = run(kube_settings, unused_engine, "k8s.scale", delta=-100)
    assert (result.value, result.output["clamped"], replicas(k8s)) == (2, True, 2)
    assert run(kube_settings, unused_engine, "k8s.scale", replicas=0).value == 2  # never below min


def test_scale_to_the_current_count_writes_nothing(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine
) -> None:
    result = run(kube_settings, unused_engine, "k8s.scale", replicas=3)
    assert (result.value, result.output["changed"]) == (3, False)
    assert k8s.writes() == []


def test_scale_a_statefulset(k8s: KubernetesStandIn, tmp_path: Path, unused_engine: Engine) -> None:
    k8s.add_workload(NS, "redis", replicas=2, kind="StatefulSet")
    target = Target(name="redis", kind="kubernetes", namespace=NS, deployment="redis", kind_of_workload="StatefulSet")
    ctx = context(settings_for(k8s.url, tmp_path, k8s.token), unused_engine, "1:0", target)
    spec = registry.get("k8s.scale")
    result = spec.func(ctx, spec.params.model_validate({"target": "redis", "delta": 1}))
    assert result.value == 3 and k8s.get("statefulsets", NS, "redis")["spec"]["replicas"] == 3
    assert k8s.writes()[0].path == f"/apis/apps/v1/namespaces/{NS}/statefulsets/redis/scale"


def test_a_concurrent_scale_is_reread_and_the_delta_applied_to_it(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine
) -> None:
    def someone_scales_to_7(deployment: dict[str, Any]) -> None:
        deployment["spec"]["replicas"] = 7

    k8s.conflict_next_write(someone_scales_to_7)
    result = run(kube_settings, unused_engine, "k8s.scale", delta=1)
    assert (result.output["previous"], result.value, replicas(k8s)) == (7, 8, 8)  # not 3 + 1
    assert [w.status for w in k8s.writes()] == [409, 200]


def test_conflicts_that_keep_coming_give_a_retriable_error(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine
) -> None:
    k8s.conflict_next_write(times=kube.MAX_CONFLICT_TRIES)
    with pytest.raises(ActionError, match="still conflicting after 5 tries") as err:
        run(kube_settings, unused_engine, "k8s.scale", delta=1)
    assert err.value.retriable and isinstance(err.value, kube.Conflict)
    assert replicas(k8s) == 3


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retriable(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine, status: int
) -> None:
    k8s.fail_next(1, status)
    with pytest.raises(ActionError, match=f"answered {status}") as err:
        run(kube_settings, unused_engine, "k8s.scale", delta=1)
    assert err.value.retriable
    assert run(kube_settings, unused_engine, "k8s.scale", delta=1).value == 4


def test_a_wrong_token_is_a_clear_non_retriable_error(
    k8s: KubernetesStandIn, tmp_path: Path, unused_engine: Engine
) -> None:
    settings = settings_for(k8s.url, tmp_path, "not-the-token")
    with pytest.raises(ActionError, match=r"refused \(401\).*ServiceAccount token") as err:
        run(settings, unused_engine, "k8s.scale", delta=1)
    assert not err.value.retriable


def test_a_forbidden_verb_names_what_the_role_must_grant(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine
) -> None:
    k8s.forbid("update", "deployments/scale")
    with pytest.raises(ActionError) as err:
        run(kube_settings, unused_engine, "k8s.scale", delta=1)
    assert not err.value.retriable
    assert "refused (403)" in str(err.value)
    assert "ServiceAccount's Role: it must allow 'update' on 'deployments/scale' in API group \"apps\"" in str(
        err.value
    )


def test_a_missing_object_is_named(k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine) -> None:
    k8s.reset()
    with pytest.raises(ActionError, match=f'deployments/scale.apps "{APP}" in namespace "{NS}" not found') as err:
        run(kube_settings, unused_engine, "k8s.scale", delta=1)
    assert not err.value.retriable


def test_a_request_still_waiting_when_the_stand_in_resets_leaves_the_next_tests_failures_alone(
    k8s: KubernetesStandIn, kube_settings: Settings
) -> None:
    """The stand-in is shared by the module's tests: a timed-out request from one test is still sleeping in the
    server when the next test injects its failures, and must not take one of them (it made the rollback test
    see one 503 of its two, in the order pytest-randomly chose about one run in two)."""
    k8s.delay(0.5)
    with pytest.raises(ActionError, match="timed out"):
        kube.read_scale(kube_settings, namespace=NS, name=APP, timeout=0.1)
    k8s.reset()  # what the next test's fixture does
    k8s.add_workload(NS, APP, replicas=3)
    k8s.fail_next(1, 503)
    time.sleep(0.6)  # the old request wakes up and is answered meanwhile
    with pytest.raises(ActionError, match="503"):
        kube.read_scale(kube_settings, namespace=NS, name=APP)
    assert [r.status for r in k8s.requests] == [503]  # the stale request is not in the new test's log either


def test_a_slow_api_server_times_out_retriably(k8s: KubernetesStandIn, kube_settings: Settings) -> None:
    k8s.delay(1.0)
    began = time.monotonic()
    with pytest.raises(ActionError, match=r"unreachable.*timed out") as err:
        kube.read_scale(kube_settings, namespace=NS, name=APP, timeout=0.3)
    assert err.value.retriable
    assert time.monotonic() - began < 0.9  # one try: urllib3 does not repeat a timed-out read
    k8s.delay(0)


def test_an_unreachable_api_server_is_retriable(tmp_path: Path, unused_engine: Engine) -> None:
    closed = KubernetesStandIn().start()
    closed.stop()
    with pytest.raises(ActionError, match="unreachable") as err:
        run(settings_for(closed.url, tmp_path, closed.token), unused_engine, "k8s.scale", delta=1)
    assert err.value.retriable


# -- rollout restart, HPA, ConfigMap keys ---------------------------------------------------


def test_rollout_restart_sets_the_annotation_once_per_step(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine
) -> None:
    result = run(kube_settings, unused_engine, "k8s.rollout_restart", key="7:2")
    annotations = k8s.get("deployments", NS, APP)["spec"]["template"]["metadata"]["annotations"]
    assert annotations[kube.RESTARTED_AT] == result.value == "2026-11-24T09:00:00Z"
    assert result.output["already_restarted"] is False
    patch = k8s.writes()[0]
    assert patch.method == "PATCH" and patch.content_type == "application/strategic-merge-patch+json"
    # The same step again (a retry, a resumed execution) does not roll the pods twice.
    again = run(kube_settings, unused_engine, "k8s.rollout_restart", key="7:2")
    assert again.output["already_restarted"] is True and len(k8s.writes()) == 1
    run(kube_settings, unused_engine, "k8s.rollout_restart", key="8:2")
    assert len(k8s.writes()) == 2


def test_patch_hpa_is_bounded_and_records_the_previous_values(
    k8s: KubernetesStandIn, kube_settings: Settings, unused_engine: Engine
) -> None:
    result = run(kube_settings, unused_engine, "k8s.patch_hpa", min_replicas=4, max_replicas=50)
    assert result.value == {"min_replicas": 4, "max_replicas": 20}
    assert result.output | {"previous_min": 2, "previous_max": 10, "clamped": True} == result.output
    spec = k8s.get("horizontalpodautoscalers", NS, APP)["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (4, 20)
    assert k8s.writes()[0].path == f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{APP}"
    # Only one bound; a concurrent writer in between is re-read, not overwritten.
    k8s.conflict_next_write(lambda hpa: hpa["spec"].update(maxReplicas=12))
    result = run(kube_settings, unused_engine, "k8s.patch_hpa", min_replicas=3)
    assert (result.output["previous_max"], result.value) == (12, {"min_replicas": 3, "max_replicas": 12})
    with pytest.raises(ActionError, match="minReplicas 15 would be above maxReplicas 12") as err:
        run(kube_settings, unused_engine, "k8s.patch_hpa", min_replicas=15)
    assert not err.value.retriable


def test_configmap_key_update_retries_a_conflict_without_losing_the_other_write(
    k8s: KubernetesStandIn, kube_settings: Settings
) -> None:
    def add(graph: str) -> Callable[[str | None], str]:
        return lambda value: ",".join(filter(None, [*(value or "").split(","), graph]))

    def another_replica_disables_b(configmap: dict[str, Any]) -> None:
        configmap["data"]["disabled_graphs"] = "b"

    k8s.conflict_next_write(another_replica_disables_b)
    old, new = kube.update_configmap_key(
        kube_settings, namespace=NS, name=CONFIG, key="disabled_graphs", update=add("a")
    )
    assert (old, new) == ("b", "b,a")
    assert kube.read_configmap_key(kube_settings, namespace=NS, name=CONFIG, key="disabled_graphs") == "b,a"
    assert kube.read_configmap_key(kube_settings, namespace=NS, name=CONFIG, key="checkpoint_storage") == "postgres"
    assert kube.read_configmap_key(kube_settings, namespace=NS, name=CONFIG, key="absent") is None
    assert [w.status for w in k8s.writes()] == [409, 200]
    # An update that changes nothing writes nothing.
    kube.update_configmap_key(kube_settings, namespace=NS, name=CONFIG, key="disabled_graphs", update=lambda v: v or "")
    assert len(k8s.writes()) == 2


# -- in a playbook --------------------------------------------------------------------------

RULES = f"""
targets:
  - name: prod
    kind: kubernetes
    namespace: {NS}
    deployment: {APP}
    min_replicas: 2
    max_replicas: 20
  - name: gone
    kind: kubernetes
    namespace: {NS}
    deployment: no-such-deployment
rules:
  - name: scale-out
    match: {{alertname: LangGraphHighErrorRate}}
    playbook: scale-out
playbooks:
  - name: scale-out
    steps:
      - id: out
        action: k8s.scale
        with: {{target: prod, factor: 2}}
        retry: {{attempts: 3, initial: 1s}}
        rollback:
          action: k8s.scale
          with: {{target: prod, replicas: "{{{{ steps.out.output.previous }}}}"}}
      - action: k8s.rollout_restart
        with: {{target: gone}}
"""


def run_playbook(tmp_path: Path, settings: Settings) -> ExecutionDetail:
    """Load RULES through the real loader, fire one alert, run the execution to its end on SQLite."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "k8s.yaml").write_text(RULES)
    ruleset: RuleSet = load_rules(rules_dir, registry)
    engine = make_engine(f"sqlite:///{tmp_path}/controlplane.db")
    migrate.upgrade(engine)
    try:
        executor = Executor(
            engine=engine,
            registry=registry,
            settings=settings,
            breakers=CircuitBreakers(failure_threshold=5, open_timeout=60),
            metrics=Metrics(CollectorRegistry()),
            sleep=lambda _s: None,
            rules=lambda: ruleset,
        )
        worker = Worker(
            engine=engine,
            executor=executor,
            instance_id="test",
            threads=1,
            lease_seconds=30,
            poll_seconds=0.05,
            max_claims=3,
        )
        payload = load_payload("alertmanager_firing.json")
        payload["alerts"] = payload["alerts"][:1]
        now = datetime.now(UTC)
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            stored = ingest_notification(
                conn, AlertmanagerNotification.model_validate(payload), group_by=["alertname", "namespace"], now=now
            )
            [triggered] = trigger_for_alerts(
                conn, alert_ids=stored.new_alert_ids, rules=ruleset, default_group_by=["alertname"], now=now
            )
        while worker.run_once() is not None:
            pass
        with engine.connect() as conn:
            return service.get_execution(conn=conn, execution_id=triggered.execution_id)
    finally:
        engine.dispose()


def test_a_failed_playbook_scales_back_to_the_previous_count(
    k8s: KubernetesStandIn, kube_settings: Settings, tmp_path: Path
) -> None:
    k8s.fail_next(2, 503)  # the API server hiccups: the step's retry policy rides it out
    detail = run_playbook(tmp_path, kube_settings)
    assert detail.status == "rolled_back"
    forward, restart, back = detail.steps[0], detail.steps[1], detail.steps[2]
    assert (forward.status, forward.attempts, forward.output["previous"], forward.output["value"]) == (
        "succeeded",
        3,
        3,
        6,
    )
    assert restart.status == "failed" and '"no-such-deployment" in namespace' in (restart.error or "")
    assert (back.phase, back.status, back.inputs) == ("rollback", "succeeded", {"target": "prod", "replicas": "3"})
    assert replicas(k8s) == 3
    assert [r for r in k8s.writes() if r.status == 200][-1].body["spec"] == {"replicas": 3}
