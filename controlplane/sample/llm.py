"""Owns the sample service's LLM side: providers and models, tools, the run queue, tokens and cost, canary runs.

Simulated like the graphs (service.py), never slept: each tick runs arrive (one per enabled graph,
plus the `backlog` fault's), workers take them (within each graph's concurrency cap), and each run
makes one chat request through its graph's current `provider/model` and one call to each enabled
tool. Outcomes come from a seeded random generator: an error_rate of 0 or 1 makes them certain.

The metrics use the OpenTelemetry GenAI semantic-convention names as Prometheus exports them
(`gen_ai_*`, with `gen_ai_request_model` the model's name without its provider) and `langgraph_*`
names otherwise. Every series exists from the start at 0 (each graph x model x outcome, ...), so
rate() sees the first failure of a model a graph was just moved to.

Simplifications, on purpose:
- Prices: `PRICES_PER_1K` (USD per 1,000 input and output tokens; other models `DEFAULT_PRICE_PER_1K`).
- A token budget is tokens per minute of ticks (`BUDGET_WINDOW_TICKS`: one tick stands for one
  second); a request that would go over it is refused before it is sent, counted as outcome
  `rate_limited`, and costs nothing.
- A failed request uses and costs no tokens; its latency is the error's (`timeout`: `TIMEOUT_SECONDS`).
- An agent loop (`loop_tool` fault) calls its tool `RECURSION_LIMIT` times, then fails with a
  recursion-limit error; with the tool disabled the loop cannot happen.
- LLM outcomes show in the series here only: `langgraph_executions_total` keeps following the
  graph's own error_rate fault, so an LLM outage does not also look like a broken graph.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.sample.bodies import FaultRequest, LLMError
from controlplane.sample.errors import SampleError, UnknownGraph, UnknownTool, unknown

DEFAULT_MODELS = ("anthropic/claude-sonnet-4", "openai/gpt-4o", "google/gemini-2.5-pro")
DEFAULT_TOOLS = ("search", "calculator")
LLM_ERRORS: tuple[LLMError, ...] = get_args(LLMError)
OUTCOMES = ("ok", *LLM_ERRORS)
TOKEN_TYPES = ("input", "output")
OPERATION = "chat"
DEFAULT_WORKERS = 4  # at least one per graph, so without faults every graph runs every tick
RECURSION_LIMIT = 25  # LangGraph's default recursion_limit
BUDGET_WINDOW_TICKS = 60
TIMEOUT_SECONDS = 30.0
SECONDS_PER_OUTPUT_TOKEN = 0.004
MODEL_ID = r"^[A-Za-z0-9_.-]{1,64}/[A-Za-z0-9_.:-]{1,128}$"
TOOL_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# USD per 1,000 (input, output) tokens: list prices of the default catalogue, rounded.
PRICES_PER_1K: dict[str, tuple[float, float]] = {
    "anthropic/claude-sonnet-4": (0.003, 0.015),
    "openai/gpt-4o": (0.0025, 0.01),
    "google/gemini-2.5-pro": (0.00125, 0.01),
}
DEFAULT_PRICE_PER_1K = (0.001, 0.004)
ERROR_LATENCY: dict[str, tuple[float, float]] = {  # (low, high) seconds until the error answers
    "rate_limited": (0.02, 0.08),
    "quota_exhausted": (0.02, 0.08),
    "overloaded": (0.2, 0.5),
    "timeout": (TIMEOUT_SECONDS, TIMEOUT_SECONDS),
}


def parse_models(text: str) -> list[str]:
    """The catalogue from `--llm-models`: comma-separated `provider/model` strings, in failover order."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise ValueError("--llm-models needs at least one provider/model")
    for model in models:
        if not re.fullmatch(MODEL_ID, model):
            raise ValueError(f"model {model!r} is not provider/model (e.g. openai/gpt-4o)")
    if len(set(models)) != len(models):
        raise ValueError(f"--llm-models names a model twice: {text}")
    return models


@dataclass
class Model:
    id: str  # provider/name
    failing: LLMError | None = None  # the injected error class, while its error_rate > 0
    error_rate: float = 0.0
    ttft_seconds: float = 0.0  # added to every first token

    @property
    def provider(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[1]

    @property
    def healthy(self) -> bool:
        return self.failing is None

    def view(self) -> dict[str, Any]:
        return {
            "model": self.id,
            "provider": self.provider,
            "name": self.name,
            "healthy": self.healthy,
            "failing": self.failing,
        }


@dataclass
class Tool:
    name: str
    enabled: bool = True
    error_rate: float = 0.0


@dataclass
class GraphLLM:
    """One graph's LLM settings, faults and queued runs."""

    name: str
    model: str
    concurrency_limit: int | None = None
    token_budget: int | None = None
    token_multiplier: float = 1.0
    loop_tool: str | None = None
    pending: int = 0
    budget_window: int = 0
    budget_used: int = 0


class LLMMetrics:
    """The LLM side's series, registered in the sample service's registry."""

    def __init__(self, r: CollectorRegistry) -> None:
        model = ["gen_ai_provider_name", "gen_ai_request_model"]
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (error_type empty on success, else the error class)",
            [*model, "gen_ai_operation_name", "error_type"],
            buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first token of successful requests",
            model,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40),
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per request, by type (input or output)",
            [*model, "gen_ai_token_type"],
            buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
            registry=r,
        )
        self.requests = Counter(
            "langgraph_llm_requests_total", "LLM requests by outcome", ["graph_name", *model, "outcome"], registry=r
        )
        self.tokens = Counter(
            "langgraph_llm_tokens_total", "Tokens used by a graph", ["graph_name", "gen_ai_token_type"], registry=r
        )
        self.cost = Counter(
            "langgraph_llm_cost_usd_total", "Estimated LLM cost in USD", ["graph_name", *model], registry=r
        )
        self.info = Gauge(
            "langgraph_graph_llm_info", "The graph's current model (1)", ["graph_name", *model], registry=r
        )
        self.concurrency_limit = Gauge(
            "langgraph_llm_concurrency_limit", "Runs of the graph at once (0: no cap)", ["graph_name"], registry=r
        )
        self.token_budget = Gauge(
            "langgraph_llm_token_budget", "Tokens per minute for the graph (0: none)", ["graph_name"], registry=r
        )
        self.tool_calls = Counter(
            "langgraph_tool_calls_total", "Tool calls", ["graph_name", "tool_name", "status"], registry=r
        )
        self.tool_enabled = Gauge("langgraph_tool_enabled", "1 if the tool may be called", ["tool_name"], registry=r)
        self.recursion_errors = Counter(
            "langgraph_recursion_limit_errors_total",
            "Runs stopped by the recursion limit, by the tool the agent looped on",
            ["graph_name", "tool_name"],
            registry=r,
        )
        self.pending = Gauge("langgraph_runs_pending", "Runs waiting for a worker", registry=r)
        self.running = Gauge("langgraph_runs_running", "Runs being executed", registry=r)
        self.workers_available = Gauge("langgraph_workers_available", "Idle workers", registry=r)


class LLMRuntime:
    """The graphs' models, tools and run queue; every public method holds the service's lock."""

    def __init__(
        self,
        graphs: Sequence[str],
        registry: CollectorRegistry,
        lock: threading.RLock,
        *,
        seed: int = 0,
        models: Sequence[str] = DEFAULT_MODELS,
        tools: Sequence[str] = DEFAULT_TOOLS,
        workers: int | None = None,
    ) -> None:
        models = parse_models(",".join(models))
        for tool in tools:
            if not re.fullmatch(TOOL_NAME, tool):
                raise ValueError(f"tool name {tool!r} does not match {TOOL_NAME}")
        self.lock = lock
        self.models = {m: Model(m) for m in models}
        self.tools = {t: Tool(t) for t in tools}
        self.graphs = {g: GraphLLM(g, models[0]) for g in graphs}
        self.workers = workers if workers is not None else max(DEFAULT_WORKERS, len(graphs))
        self.backlog = 0  # extra runs arriving per tick (fault)
        self.running = 0
        self.ticks = 0
        self.metrics = LLMMetrics(registry)
        self._rng = random.Random(f"llm-{seed}")  # its own, so the graphs' outcomes stay as they were
        m = self.metrics
        for model in self.models.values():
            for error_type in ("", *LLM_ERRORS):
                m.duration.labels(model.provider, model.name, OPERATION, error_type)
            m.ttft.labels(model.provider, model.name)
            for token_type in TOKEN_TYPES:
                m.token_usage.labels(model.provider, model.name, token_type)
        for graph in self.graphs.values():
            for model in self.models.values():
                for outcome in OUTCOMES:
                    m.requests.labels(graph.name, model.provider, model.name, outcome)
                m.cost.labels(graph.name, model.provider, model.name)
            for token_type in TOKEN_TYPES:
                m.tokens.labels(graph.name, token_type)
            for tool_name in self.tools:
                for status in ("success", "error"):
                    m.tool_calls.labels(graph.name, tool_name, status)
                m.recursion_errors.labels(graph.name, tool_name)
            self._set_info(graph, 1)
            self._set_limit_gauges(graph)
        for tool_name in self.tools:
            m.tool_enabled.labels(tool_name).set(1)
        self._set_queue_gauges()

    # -- reads -------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """GET /admin/llm: the catalogue and its health, each graph's model and caps, tools, the run queue."""
        with self.lock:
            return {
                "models": [m.view() for m in self.models.values()],
                "graphs": {
                    g.name: {
                        "model": g.model,
                        "concurrency_limit": g.concurrency_limit,
                        "token_budget": g.token_budget,
                    }
                    for g in self.graphs.values()
                },
                "tools": {t.name: {"enabled": t.enabled} for t in self.tools.values()},
                "queue": {"pending": self._pending(), "running": self.running, "workers": self.workers},
            }

    def faults_view(self) -> dict[str, Any]:
        with self.lock:
            return {
                "models": {
                    m.id: {"llm_error": m.failing, "error_rate": m.error_rate, "ttft_seconds": m.ttft_seconds}
                    for m in self.models.values()
                    if m.failing or m.ttft_seconds
                },
                "graphs": {
                    g.name: {"token_multiplier": g.token_multiplier, "loop_tool": g.loop_tool}
                    for g in self.graphs.values()
                    if g.token_multiplier != 1 or g.loop_tool
                },
                "tools": {t.name: {"error_rate": t.error_rate} for t in self.tools.values() if t.error_rate},
                "backlog": self.backlog,
            }

    # -- commands ------------------------------------------------------------------------------

    def switch_model(self, graph_name: str, model_id: str) -> dict[str, Any]:
        with self.lock:
            graph = self._graph(graph_name)
            self._model(model_id)
            previous = graph.model
            if model_id != previous:
                self._set_info(graph, None)  # the old series goes: only the current model is 1
                graph.model = model_id
                self._set_info(graph, 1)
            return {"graph": graph.name, "model": graph.model, "previous": previous, "changed": model_id != previous}

    def set_limits(self, graph_name: str, concurrency: int | None, token_budget: int | None) -> dict[str, Any]:
        """Set a graph's caps: None leaves one as it is, 0 removes it."""
        with self.lock:
            graph = self._graph(graph_name)
            previous = {"concurrency_limit": graph.concurrency_limit, "token_budget": graph.token_budget}
            if concurrency is not None:
                graph.concurrency_limit = concurrency or None
            if token_budget is not None:
                graph.token_budget = token_budget or None
            self._set_limit_gauges(graph)
            now = {"concurrency_limit": graph.concurrency_limit, "token_budget": graph.token_budget}
            return {"graph": graph.name, **now, "previous": previous, "changed": now != previous}

    def set_tool(self, name: str, enabled: bool) -> dict[str, Any]:
        with self.lock:
            tool = self.tools.get(name)
            if tool is None:
                raise UnknownTool(unknown("tool", name, self.tools))
            changed = tool.enabled != enabled
            tool.enabled = enabled
            self.metrics.tool_enabled.labels(name).set(1 if enabled else 0)
            disabled = [t.name for t in self.tools.values() if not t.enabled]
            return {"tool": name, "enabled": enabled, "changed": changed, "disabled": disabled}

    def canary(self, graph_name: str, runs: int) -> dict[str, Any]:
        """`runs` synthetic requests through the graph's current model, counted like any other request.

        latencies_seconds and outcomes have one entry per run, in order; a failed run's latency is
        how long its error took.
        """
        with self.lock:
            graph = self._graph(graph_name)
            results = [self._request(graph) for _ in range(runs)]
            latencies = [round(latency, 4) for _, latency in results]
            return {
                "graph": graph.name,
                "model": graph.model,
                "runs": runs,
                "succeeded": sum(outcome == "ok" for outcome, _ in results),
                "latencies_seconds": latencies,
                "max_latency_seconds": max(latencies),
                "outcomes": [outcome for outcome, _ in results],
            }

    def check(self, fault: FaultRequest) -> None:
        """Refuse a fault naming an unknown model or tool, before anything changes."""
        with self.lock:
            if fault.model is not None:
                self._model(fault.model)
            for tool in (fault.tool, fault.loop_tool or None):
                if tool is not None and tool not in self.tools:
                    raise UnknownTool(unknown("tool", tool, self.tools))

    def inject(self, fault: FaultRequest) -> None:
        """Apply the LLM subjects of a fault already `check`ed (and its graph known)."""
        with self.lock:
            if fault.model is not None:
                model = self.models[fault.model]
                if fault.llm_error is not None:
                    model.error_rate = 1.0 if fault.error_rate is None else fault.error_rate
                    model.failing = fault.llm_error if model.error_rate > 0 else None
                if fault.ttft_seconds is not None:
                    model.ttft_seconds = fault.ttft_seconds
            if fault.tool is not None and fault.error_rate is not None:
                self.tools[fault.tool].error_rate = fault.error_rate
            if fault.graph is not None:
                graph = self._graph(fault.graph)
                if fault.token_multiplier is not None:
                    graph.token_multiplier = fault.token_multiplier
                if fault.loop_tool is not None:
                    graph.loop_tool = fault.loop_tool or None
            if fault.backlog is not None:
                self.backlog = fault.backlog

    def clear_faults(self) -> None:
        with self.lock:
            for model in self.models.values():
                model.failing, model.error_rate, model.ttft_seconds = None, 0.0, 0.0
            for tool in self.tools.values():
                tool.error_rate = 0.0
            for graph in self.graphs.values():
                graph.token_multiplier, graph.loop_tool = 1.0, None
            self.backlog = 0

    # -- runs ------------------------------------------------------------------------------------

    def dispatch(self, enabled: Sequence[str]) -> list[str]:
        """This tick's runs: arrivals join the queue, then workers take runs round-robin within each graph's cap.

        Returns the graphs to run, one entry per run; the rest stay pending.
        """
        with self.lock:
            self.ticks += 1
            for name in enabled:
                self.graphs[name].pending += 1
            for i in range(self.backlog if enabled else 0):
                self.graphs[enabled[(self.ticks + i) % len(enabled)]].pending += 1
            turn = self.ticks % len(enabled) if enabled else 0
            order = [self.graphs[name] for name in (*enabled[turn:], *enabled[:turn])]
            started: list[str] = []
            running = dict.fromkeys(enabled, 0)
            while len(started) < self.workers:
                ready = [
                    g
                    for g in order
                    if g.pending and (g.concurrency_limit is None or running[g.name] < g.concurrency_limit)
                ]
                if not ready:
                    break
                for graph in ready[: self.workers - len(started)]:
                    graph.pending -= 1
                    running[graph.name] += 1
                    started.append(graph.name)
            self.running = len(started)
            self._set_queue_gauges()
            return started

    def run(self, graph_name: str) -> None:
        """One run of the graph: its chat request, then a call to each enabled tool (or a loop on one)."""
        with self.lock:
            graph = self.graphs[graph_name]
            self._request(graph)
            loop = graph.loop_tool if graph.loop_tool and self.tools[graph.loop_tool].enabled else None
            for tool in self.tools.values():
                if tool.enabled:
                    for _ in range(RECURSION_LIMIT if tool.name == loop else 1):
                        failed = self._rng.random() < tool.error_rate
                        self.metrics.tool_calls.labels(graph.name, tool.name, "error" if failed else "success").inc()
            if loop is not None:
                self.metrics.recursion_errors.labels(graph.name, loop).inc()

    def _request(self, graph: GraphLLM) -> tuple[str, float]:
        """One chat request of `graph` through its current model, recorded: (outcome, latency in seconds)."""
        model = self.models[graph.model]
        labels = (model.provider, model.name)
        m = self.metrics
        tokens = {
            "input": round(self._rng.randint(300, 900) * graph.token_multiplier),
            "output": round(self._rng.randint(100, 300) * graph.token_multiplier),
        }
        outcome, refused = self._outcome(graph, model, sum(tokens.values()))
        if outcome == "ok":
            ttft = self._rng.uniform(0.2, 0.6) + model.ttft_seconds
            latency = ttft + tokens["output"] * SECONDS_PER_OUTPUT_TOKEN
            m.ttft.labels(*labels).observe(ttft)
            graph.budget_used += sum(tokens.values())
            for token_type, count in tokens.items():
                m.token_usage.labels(*labels, token_type).observe(count)
                m.tokens.labels(graph.name, token_type).inc(count)
            price_in, price_out = PRICES_PER_1K.get(model.id, DEFAULT_PRICE_PER_1K)
            m.cost.labels(graph.name, *labels).inc((tokens["input"] * price_in + tokens["output"] * price_out) / 1000)
        elif refused:  # by the token budget, before it was sent
            latency = 0.001
        else:
            latency = self._rng.uniform(*ERROR_LATENCY[outcome])
        m.duration.labels(*labels, OPERATION, "" if outcome == "ok" else outcome).observe(latency)
        m.requests.labels(graph.name, *labels, outcome).inc()
        return outcome, latency

    def _outcome(self, graph: GraphLLM, model: Model, tokens: int) -> tuple[str, bool]:
        """The request's outcome, and whether the graph's token budget refused it before it was sent."""
        if graph.token_budget is not None:
            window = self.ticks // BUDGET_WINDOW_TICKS
            if graph.budget_window != window:
                graph.budget_window, graph.budget_used = window, 0
            if graph.budget_used + tokens > graph.token_budget:
                return "rate_limited", True
        if model.failing is not None and self._rng.random() < model.error_rate:
            return model.failing, False
        return "ok", False

    # -- helpers ---------------------------------------------------------------------------------

    def _graph(self, name: str) -> GraphLLM:
        graph = self.graphs.get(name)
        if graph is None:
            raise UnknownGraph(unknown("graph", name, self.graphs))
        return graph

    def _model(self, model_id: str) -> Model:
        model = self.models.get(model_id)
        if model is None:
            raise SampleError(unknown("model", model_id, self.models))
        return model

    def _set_info(self, graph: GraphLLM, value: int | None) -> None:
        model = self.models[graph.model]
        if value is None:
            self.metrics.info.remove(graph.name, model.provider, model.name)
        else:
            self.metrics.info.labels(graph.name, model.provider, model.name).set(value)

    def _set_limit_gauges(self, graph: GraphLLM) -> None:
        self.metrics.concurrency_limit.labels(graph.name).set(graph.concurrency_limit or 0)
        self.metrics.token_budget.labels(graph.name).set(graph.token_budget or 0)

    def _pending(self) -> int:
        return sum(g.pending for g in self.graphs.values())

    def _set_queue_gauges(self) -> None:
        self.metrics.pending.set(self._pending())
        self.metrics.running.set(self.running)
        self.metrics.workers_available.set(self.workers - self.running)
