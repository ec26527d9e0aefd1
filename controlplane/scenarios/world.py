"""Owns the world a scenario runs in: its targets in memory, a Prometheus that answers from the file, no network.

- An `http` target is the admin API contract as the sample service implements it (sample/service.py),
  held in memory: `GET /graphs`, `GET /storage` and `GET /llm` (models and their health, each graph's
  model and caps, tools: the service's `llm.LLMRuntime`) and `GET /degradation` (the service level and the
  features off: its `degradation.Degradation`) answer from it.
- A `kubernetes` target is a workload's replicas, its HPA bounds and its ConfigMap keys, in memory.
- Prometheus answers each query with the scenario's latest answer to it at the fake clock's time
  (queries are matched with their whitespace collapsed); a query the scenario does not answer fails
  the step, with a message that names it, as a Prometheus error would.
- Slack and PagerDuty are "configured" (or not) as the scenario says; nothing is ever sent.

A plan only reads these. A live run's planned change is then made here (`apply`), as the run would
make it, so the next plan sees the world moved: a disabled graph stays disabled. Every write a
plan's step attempts through a client raises `WorldWriteRefused`: plans never write.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from controlplane.actions.base import Plan
from controlplane.actions.graph import DISABLED_KEY
from controlplane.actions.storage import STORAGE_KEY
from controlplane.db.tables import alerts_t
from controlplane.errors import ActionError
from controlplane.integrations.prometheus import PrometheusClient, PrometheusError
from controlplane.rules.schema import Target
from controlplane.sample.bodies import DisableRequest, FaultRequest
from controlplane.sample.service import SampleService
from controlplane.scenarios.schema import Answer, HttpTarget, KubernetesTarget


class WorldWriteRefused(RuntimeError):
    """Something tried to change a target during a plan: only `apply` changes the world."""


def normal_query(query: str) -> str:
    return re.sub(r"\s+", " ", query).strip()


class ScenarioPrometheus(PrometheusClient):
    """The real client's parsing and reductions, with the HTTP call replaced by the scenario's answers."""

    def __init__(self, answers: list[Answer], *, start: datetime, clock: Callable[[], datetime]) -> None:
        super().__init__("http://prometheus.scenario")
        self._answers: dict[str, list[Answer]] = {}
        for answer in sorted(answers, key=lambda a: a.at):
            self._answers.setdefault(normal_query(answer.query), []).append(answer)
        self._start = start
        self._clock = clock
        self.asked: list[str] = []

    def _query(self, promql: str) -> list[Any]:
        self.asked.append(promql)
        elapsed = self._clock() - self._start
        given = [a for a in self._answers.get(normal_query(promql), []) if a.at <= elapsed]
        if not given:
            raise PrometheusError(
                f"the scenario gives no answer to query {promql!r} at {elapsed} (add it under `prometheus:`)",
                retriable=False,
            )
        return [
            {"metric": sample.labels, "value": [self._clock().timestamp(), repr(sample.value)]}
            for sample in given[-1].result
        ]


class ScenarioAdminApi:
    """Each `http` target's admin API, answered by an in-memory sample service (reads only)."""

    def __init__(self, services: Mapping[str, SampleService]) -> None:
        self.services = services

    def request(
        self,
        target: Target,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotency_key: str | None = None,
        timeout: float,
    ) -> dict[str, Any]:
        service = self.services.get(target.name)
        if service is None:
            raise ActionError(f"target {target.name!r}: the scenario gives no state for it (add it under `targets:`)")
        if method != "GET":
            raise WorldWriteRefused(f"target {target.name!r}: {method} {path} during a plan")
        if path == "/graphs":
            return service.graphs_view()
        if path == "/storage":
            return service.storage_view()
        if path == "/llm":
            return service.llm.view()
        if path == "/degradation":
            return service.degradation.view()
        raise ActionError(f"target {target.name!r}: GET {path} is not part of the admin API a scenario models")


@dataclass
class Workload:
    replicas: int
    hpa: tuple[int, int] | None
    configmap: dict[str, str]


class ScenarioKubernetes:
    """Each `kubernetes` target's workload, HPA and ConfigMap, in memory (reads only)."""

    def __init__(self, workloads: Mapping[tuple[str, str], Workload], configmaps: Mapping[tuple[str, str], Workload]):
        self.workloads = workloads  # by (namespace, deployment)
        self.configmaps = configmaps  # by (namespace, configmap): the same Workload

    def _workload(self, namespace: str, name: str) -> Workload:
        found = self.workloads.get((namespace, name))
        if found is None:
            raise ActionError(f"deployment {namespace}/{name}: the scenario gives no state for it")
        return found

    def read_scale(self, *, namespace: str, name: str, kind: str) -> int:
        return self._workload(namespace, name).replicas

    def read_hpa(self, *, namespace: str, name: str) -> tuple[int, int]:
        for (ns, _), workload in self.workloads.items():
            if ns == namespace and workload.hpa is not None:
                return workload.hpa
        raise ActionError(f"HPA {namespace}/{name}: the scenario gives no `hpa` for it")

    def read_configmap_key(self, *, namespace: str, name: str, key: str) -> str | None:
        found = self.configmaps.get((namespace, name))
        return found.configmap.get(key) if found is not None else None

    def __getattr__(self, name: str) -> Any:  # update_scale, patch_hpa, ...: writes
        raise WorldWriteRefused(f"kubernetes.{name} during a plan")


class ScenarioSilences:
    """Silences as a plan reads them: how many firing alerts the matchers match (Alertmanager would say, here
    the scenario's own alerts do). Creating or expiring one is a write: refused."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def firing(self, matchers: dict[str, str]) -> int:
        with self.engine.connect() as conn:
            rows = conn.execute(select(alerts_t.c.labels).where(alerts_t.c.status == "firing")).scalars()
            return sum(1 for labels in rows if all(labels.get(k) == v for k, v in matchers.items()))

    def for_step(self, **_kwargs: Any) -> str:
        raise WorldWriteRefused("silences.for_step during a plan")

    def expire(self, silence_id: str, *, now: datetime) -> bool:
        raise WorldWriteRefused("silences.expire during a plan")


class _Unsendable:
    """A configured Slack or PagerDuty that is never called: a plan only says what it would send."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __getattr__(self, name: str) -> Any:
        raise WorldWriteRefused(f"{self.what}.{name} during a plan")


@dataclass
class World:
    """The scenario's targets, and `apply`, which makes a live run's planned change."""

    targets: Mapping[str, Target]
    services: dict[str, SampleService] = field(default_factory=dict)
    workloads: dict[tuple[str, str], Workload] = field(default_factory=dict)
    configmaps: dict[tuple[str, str], Workload] = field(default_factory=dict)

    def add(self, target: Target, state: HttpTarget | KubernetesTarget) -> None:
        if isinstance(state, HttpTarget):
            service = SampleService(state.graphs, models=state.models, tools=state.tools)
            for graph in state.disabled:
                service.disable(graph)
            for model, failure in state.unhealthy.items():
                service.inject(FaultRequest(model=model, llm_error=failure, error_rate=1.0))
            for graph, model in state.graph_models.items():
                service.llm.switch_model(graph, model)
            for graph, caps in state.limits.items():
                service.llm.set_limits(graph, caps.concurrency, caps.token_budget)
            for tool in state.disabled_tools:
                service.llm.set_tool(tool, False)
            service.active = state.storage
            for backend in state.broken_storage:
                service.storage[backend].broken = True
            for backend, count in state.corrupted.items():
                service.storage[backend].corrupted = count
            if state.level == "minimal":
                service.degradation.degrade("minimal", state.degraded_features)
            elif state.degraded_features:
                service.degradation.degrade("degraded", state.degraded_features)
            self.services[target.name] = service
            return
        namespace = target.namespace or "default"
        workload = Workload(replicas=state.replicas, hpa=state.hpa, configmap=dict(state.configmap))
        if target.deployment:
            self.workloads[(namespace, target.deployment)] = workload
        if target.configmap:
            self.configmaps[(namespace, target.configmap)] = workload

    def clients(self) -> tuple[ScenarioAdminApi, ScenarioKubernetes]:
        return ScenarioAdminApi(self.services), ScenarioKubernetes(self.workloads, self.configmaps)

    def apply(self, plan: Plan) -> None:
        """Make the change a live run's step planned (a refused or no-op plan changes nothing)."""
        if plan.refused or plan.noop or plan.target is None:
            return
        target = self.targets.get(plan.target)
        change = plan.change
        if target is None:
            return
        service = self.services.get(target.name)
        workload = self._workload_of(target)
        if plan.action in ("graph.disable", "graph.enable"):
            if service is not None:
                if plan.action == "graph.disable":
                    service.disable(change["graph"], DisableRequest())
                else:
                    service.enable(change["graph"])
            elif workload is not None:
                workload.configmap[DISABLED_KEY] = ",".join(change["disabled_after"])
        elif plan.action == "storage.switch":
            if service is not None:
                service.active = change["to"]
            elif workload is not None:
                workload.configmap[STORAGE_KEY] = change["to"]
        elif plan.action == "storage.cleanup_corrupted" and service is not None:
            service.cleanup(change.get("backend"))
        elif plan.action == "k8s.scale" and workload is not None:
            workload.replicas = int(change["to"])
        elif plan.action in ("service.degrade", "service.restore") and service is not None:
            degradation = service.degradation  # the state the plan computed, as the service would make it
            degradation.restore()
            degradation.off = set(change["to"]["features"])
            degradation.minimal = change["to"]["level"] == "minimal"
        elif service is not None:
            self._apply_llm(service, plan)

    @staticmethod
    def _apply_llm(service: SampleService, plan: Plan) -> None:
        change = plan.change
        if plan.action == "llm.failover":
            service.llm.switch_model(change["graph"], change["to"])
        elif plan.action == "llm.limit":  # 0 removes a cap, as the admin API's body says
            service.llm.set_limits(change["graph"], change["to"]["concurrency_limit"], change["to"]["token_budget"])
        elif plan.action in ("tool.disable", "tool.enable"):
            service.llm.set_tool(change["tool"], plan.action == "tool.enable")
        # graph.canary sends runs: it changes nothing a later plan reads

    def _workload_of(self, target: Target) -> Workload | None:
        namespace = target.namespace or "default"
        if target.deployment and (namespace, target.deployment) in self.workloads:
            return self.workloads[(namespace, target.deployment)]
        if target.configmap:
            return self.configmaps.get((namespace, target.configmap))
        return None

    def state(self) -> dict[str, Any]:
        """Each target as it is now, for a failing scenario's report."""
        out: dict[str, Any] = {}
        for name, service in self.services.items():
            graphs = service.graphs_view()
            llm = service.llm.view()
            out[name] = {
                "disabled": graphs["disabled"],
                "storage": service.active,
                "graph_models": {g: state["model"] for g, state in llm["graphs"].items()},
                "disabled_tools": [t for t, state in llm["tools"].items() if not state["enabled"]],
                "degradation": service.degradation.state().view(),
            }
        for name, target in self.targets.items():
            workload = self._workload_of(target)
            if workload is not None and name not in out:
                out[name] = {"replicas": workload.replicas, "configmap": dict(workload.configmap)}
        return out


def unsendable(what: str) -> Any:
    return _Unsendable(what)
