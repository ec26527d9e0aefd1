"""Owns the sample service's state: graphs, checkpoint storage, injected faults, seed 004's metrics, idempotency.

Its LLM side (models, tools, run queue, tokens, canaries) is `llm.LLMRuntime`, composed here as `llm`;
its service levels, degradable features and their dependencies are `degradation.Degradation`, as `degradation`.

Executions are simulated, not slept: each tick "runs" every enabled graph once, draws its
outcome from a seeded random generator (error_rate 0 or 1 makes it certain) and records the
duration it would have taken. That keeps the service deterministic and cheap enough for tests
while its /metrics look like a LangGraph deployment's.
"""

from __future__ import annotations

import functools
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.sample.bodies import Backend, DisableRequest, FaultRequest
from controlplane.sample.degradation import Degradation
from controlplane.sample.errors import Refused, SampleError, UnknownGraph, unknown
from controlplane.sample.llm import DEFAULT_MODELS, DEFAULT_TOOLS, LLMRuntime

__all__ = ["Answer", "DisableRequest", "FaultRequest", "Refused", "SampleError", "SampleService", "UnknownGraph"]

BACKENDS: tuple[Backend, ...] = ("primary", "backup")
NODES = ("plan", "act", "respond")  # every sample graph has the same three nodes
FAILING_NODE = "act"  # where injected errors are raised, so retries carry a node name
INTERRUPT_NODE = "respond"
GRAPH_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
GRAPH_FAULTS = ("error_rate", "latency_seconds", "interrupt_rate")
MAX_IDEMPOTENCY_KEYS = 10_000  # oldest keys are forgotten beyond this: memory stays bounded


Answer = tuple[int, dict[str, Any]]  # an admin request's HTTP status and JSON body


@dataclass
class Graph:
    name: str
    enabled: bool = True
    error_rate: float = 0.0
    latency_seconds: float = 0.0
    interrupt_rate: float = 0.0
    executions: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "error_rate": self.error_rate,
            "latency_seconds": self.latency_seconds,
            "interrupt_rate": self.interrupt_rate,
            "executions": self.executions,
        }


@dataclass
class Storage:
    name: Backend
    broken: bool = False
    checkpoints: int = 0
    corrupted: int = 0  # saves that failed while broken leave a corrupted checkpoint behind

    def view(self) -> dict[str, Any]:
        return {"healthy": not self.broken, "checkpoints": self.checkpoints, "corrupted": self.corrupted}


@dataclass
class _Answer:
    request: str
    status_code: int
    body: dict[str, Any]
    received: int = 1


class SampleMetrics:
    """Seed 004's `langgraph_*` metrics, in a registry of this service's own (several may run in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.executions = Counter(
            "langgraph_executions_total", "Graph executions", ["graph_name", "status"], registry=r
        )
        self.duration = Histogram(
            "langgraph_execution_duration_seconds",
            "Graph execution duration",
            ["graph_name"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.active_graphs = Gauge("langgraph_active_graphs", "Graphs enabled to run", registry=r)
        self.checkpoint_saves = Counter(
            "langgraph_checkpoint_saves_total", "Checkpoint saves", ["backend_type", "status"], registry=r
        )
        self.node_seconds = Histogram(
            "langgraph_node_execution_seconds", "Node execution duration", ["graph_name", "node_name"], registry=r
        )
        self.retries = Counter(
            "langgraph_retries_total", "Node retries", ["graph_name", "node_name", "exception_type"], registry=r
        )
        self.interrupts = Counter(
            "langgraph_interrupts_total", "Graph interrupts", ["graph_name", "node_name", "reason"], registry=r
        )
        self.checkpointer_up = Gauge(
            "langgraph_checkpointer_up",
            "1 if the checkpointer's health check passed, else 0",
            ["backend_type"],
            registry=r,
        )


class SampleService:
    """The whole service state behind one lock: the ticker and admin requests never interleave."""

    def __init__(
        self,
        graphs: Sequence[str],
        *,
        seed: int = 0,
        base_duration: float = 0.02,
        models: Sequence[str] = DEFAULT_MODELS,
        tools: Sequence[str] = DEFAULT_TOOLS,
        workers: int | None = None,
    ) -> None:
        if not graphs:
            raise ValueError("the sample service needs at least one graph")
        for name in graphs:
            if not re.fullmatch(GRAPH_NAME, name):
                raise ValueError(f"graph name {name!r} does not match {GRAPH_NAME}")
        self.lock = threading.RLock()
        self.graphs = {name: Graph(name) for name in graphs}
        self.storage = {name: Storage(name) for name in BACKENDS}
        self.active: Backend = "primary"
        self.healthy = True
        self.checkpointer_check_fails = False  # fault: the health check itself cannot run
        self.metrics = SampleMetrics()
        self.llm = LLMRuntime(
            graphs, self.metrics.registry, self.lock, seed=seed, models=models, tools=tools, workers=workers
        )
        self.degradation = Degradation(self.metrics.registry, self.lock)
        self._rng = random.Random(seed)
        self._base_duration = base_duration
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        self.ticks = 0
        # Every series exists from the start at 0, so rate() and "stopped increasing" are measurable.
        for name in graphs:
            for status in ("success", "error"):
                self.metrics.executions.labels(name, status)
        for backend in BACKENDS:
            for status in ("success", "error"):
                self.metrics.checkpoint_saves.labels(backend, status)
            # Read at each scrape, so the gauge is never older than the state it reports.
            self.metrics.checkpointer_up.labels(backend).set_function(functools.partial(self.checkpointer_up, backend))
        self._update_active_gauge()

    # -- reads -------------------------------------------------------------------------------

    def graphs_view(self) -> dict[str, Any]:
        with self.lock:
            return {
                "graphs": [g.view() for g in self.graphs.values()],
                "enabled": [g.name for g in self.graphs.values() if g.enabled],
                "disabled": [g.name for g in self.graphs.values() if not g.enabled],
            }

    def storage_view(self) -> dict[str, Any]:
        with self.lock:
            return {"active": self.active, "backends": {name: s.view() for name, s in self.storage.items()}}

    def checkpointer_up(self, backend: Backend) -> float:
        """1 when the health check of `backend` ran and passed; 0 when it failed or could not run (fails closed)."""
        if self.checkpointer_check_fails:
            return 0.0
        return 0.0 if self.storage[backend].broken else 1.0

    def ready(self) -> str | None:
        """Why the service is not ready, or None: it cannot save checkpoints to a broken active backend."""
        with self.lock:
            if self.storage[self.active].broken:
                return f"active checkpoint storage {self.active!r} is broken"
            return None

    # -- commands ------------------------------------------------------------------------------

    def disable(self, name: str, bounds: DisableRequest | None = None) -> dict[str, Any]:
        with self.lock:
            graph = self._graph(name)
            changed = graph.enabled
            if changed and bounds is not None:
                self._check_bounds(graph, bounds)
            graph.enabled = False
            return self._graph_change(graph, changed)

    def enable(self, name: str) -> dict[str, Any]:
        with self.lock:
            graph = self._graph(name)
            changed = not graph.enabled
            graph.enabled = True
            return self._graph_change(graph, changed)

    def switch_storage(self, backend: Backend) -> dict[str, Any]:
        with self.lock:
            previous = self.active
            if backend != previous and self.storage[backend].broken:
                raise Refused(
                    f"checkpoint storage {backend!r} is unhealthy; staying on {previous!r}", refused="unhealthy"
                )
            self.active = backend
            return {"active": backend, "previous": previous, "changed": backend != previous, **self.storage_view()}

    def cleanup(self, backend: Backend | None = None) -> dict[str, Any]:
        with self.lock:
            removed = {}
            for name, storage in self.storage.items():
                if backend in (None, name):
                    removed[name] = storage.corrupted
                    storage.corrupted = 0
            return {"removed": sum(removed.values()), "by_backend": removed}

    def inject(self, fault: FaultRequest) -> dict[str, Any]:
        with self.lock:
            graph = self._graph(fault.graph) if fault.graph is not None else None
            self.llm.check(fault)  # every subject is known before anything changes
            self.degradation.check(fault.dependency)
            self.llm.inject(fault)
            if fault.dependency is not None and fault.broken is not None:
                self.degradation.set_dependency(fault.dependency, fault.broken)
            if graph is not None:
                for attr in GRAPH_FAULTS:
                    value = getattr(fault, attr)
                    if value is not None:
                        setattr(graph, attr, value)
            if fault.storage is not None and fault.broken is not None:
                self.storage[fault.storage].broken = fault.broken
            if fault.healthy is not None:
                self.healthy = fault.healthy
            if fault.checkpointer_check_fails is not None:
                self.checkpointer_check_fails = fault.checkpointer_check_fails
            return self.faults_view()

    def clear_faults(self) -> dict[str, Any]:
        with self.lock:
            for graph in self.graphs.values():
                graph.error_rate = graph.latency_seconds = graph.interrupt_rate = 0.0
            for storage in self.storage.values():
                storage.broken = False
            self.healthy = True
            self.checkpointer_check_fails = False
            self.llm.clear_faults()
            self.degradation.clear_faults()
            return self.faults_view()

    def faults_view(self) -> dict[str, Any]:
        with self.lock:
            return {
                "graphs": {
                    g.name: {
                        "error_rate": g.error_rate,
                        "latency_seconds": g.latency_seconds,
                        "interrupt_rate": g.interrupt_rate,
                    }
                    for g in self.graphs.values()
                    if g.error_rate or g.latency_seconds or g.interrupt_rate
                },
                "broken_storage": [s.name for s in self.storage.values() if s.broken],
                "healthy": self.healthy,
                "checkpointer_check_fails": self.checkpointer_check_fails,
                "broken_dependencies": sorted(self.degradation.broken),
                "llm": self.llm.faults_view(),
            }

    # -- idempotency ---------------------------------------------------------------------------

    def once(
        self, key: str | None, request: str, command: Callable[[], tuple[int, dict[str, Any]]]
    ) -> tuple[int, dict[str, Any]]:
        """Run `command` unless `key` was seen: then replay the first answer without acting again.

        The lock is held across the command, so two deliveries of one key never both act.
        """
        if key is None:
            return command()
        with self.lock:
            answer = self._answers.get(key)
            if answer is not None:
                answer.received += 1
                if answer.request != request:
                    return 422, {"error": f"Idempotency-Key {key!r} was first used for {answer.request}, not {request}"}
                return answer.status_code, answer.body
            status_code, body = command()
            self._answers[key] = _Answer(request, status_code, body)
            while len(self._answers) > MAX_IDEMPOTENCY_KEYS:
                self._answers.popitem(last=False)
            return status_code, body

    def idempotency_view(self) -> dict[str, Any]:
        with self.lock:
            return {
                "keys": {
                    key: {"received": a.received, "request": a.request, "status_code": a.status_code}
                    for key, a in self._answers.items()
                }
            }

    # -- the graphs running ----------------------------------------------------------------------

    def tick(self) -> None:
        """Run every enabled graph once (as the run queue allows): outcome, durations, retries, interrupts,
        a checkpoint save, its LLM request and tool calls, and its use of each degradable feature."""
        with self.lock:
            self.ticks += 1
            for name in self.llm.dispatch([g.name for g in self.graphs.values() if g.enabled]):
                self._execute(self.graphs[name])
                self.llm.run(name)
                self.degradation.serve()

    def _execute(self, graph: Graph) -> None:
        m = self.metrics
        duration = self._base_duration * self._rng.uniform(0.5, 1.5) + graph.latency_seconds
        failed = self._rng.random() < graph.error_rate
        for node in NODES:
            m.node_seconds.labels(graph.name, node).observe(duration / len(NODES))
        if failed:
            m.retries.labels(graph.name, FAILING_NODE, "InjectedError").inc()
        if not failed and self._rng.random() < graph.interrupt_rate:
            m.interrupts.labels(graph.name, INTERRUPT_NODE, "human_review").inc()
        graph.executions += 1
        m.executions.labels(graph.name, "error" if failed else "success").inc()
        m.duration.labels(graph.name).observe(duration)
        storage = self.storage[self.active]
        if storage.broken:
            storage.corrupted += 1
            m.checkpoint_saves.labels(storage.name, "error").inc()
        else:
            storage.checkpoints += 1
            m.checkpoint_saves.labels(storage.name, "success").inc()

    # -- helpers ---------------------------------------------------------------------------------

    def _graph(self, name: str) -> Graph:
        graph = self.graphs.get(name)
        if graph is None:
            raise UnknownGraph(unknown("graph", name, self.graphs))
        return graph

    def _check_bounds(self, graph: Graph, bounds: DisableRequest) -> None:
        disabled = [g.name for g in self.graphs.values() if not g.enabled]
        if bounds.max_disabled is not None and len(disabled) + 1 > bounds.max_disabled:
            raise Refused(
                f"disabling {graph.name!r} would make {len(disabled) + 1} disabled graphs "
                f"(already disabled: {', '.join(disabled) or 'none'}); the bound is {bounds.max_disabled}",
                refused="max_disabled",
            )
        enabled = [g.name for g in self.graphs.values() if g.enabled]
        if bounds.keep_one_enabled and enabled == [graph.name]:
            raise Refused(f"{graph.name!r} is the last enabled graph", refused="last_enabled")

    def _graph_change(self, graph: Graph, changed: bool) -> dict[str, Any]:
        self._update_active_gauge()
        view = self.graphs_view()
        return {"graph": graph.name, "enabled": graph.enabled, "changed": changed, "disabled": view["disabled"]}

    def _update_active_gauge(self) -> None:
        self.metrics.active_graphs.set(sum(g.enabled for g in self.graphs.values()))
