"""The sample service's LLM side over HTTP: each fault moves the series a user alerts on; each admin command works.

Ticks are driven by the test (the app's lifespan ticker is not started), so every count is exact.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane.sample.app import create_app
from controlplane.sample.llm import RECURSION_LIMIT, parse_models
from controlplane.sample.service import SampleService
from tests.sample_fixture import SampleApp

CLAUDE = {"gen_ai_provider_name": "anthropic", "gen_ai_request_model": "claude-sonnet-4"}
GPT = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}
LLM_METRICS = {
    "gen_ai_client_operation_duration_seconds": "histogram",
    "gen_ai_server_time_to_first_token_seconds": "histogram",
    "gen_ai_client_token_usage": "histogram",
    "langgraph_llm_requests": "counter",
    "langgraph_llm_tokens": "counter",
    "langgraph_llm_cost_usd": "counter",
    "langgraph_graph_llm_info": "gauge",
    "langgraph_llm_concurrency_limit": "gauge",
    "langgraph_llm_token_budget": "gauge",
    "langgraph_tool_calls": "counter",
    "langgraph_tool_enabled": "gauge",
    "langgraph_recursion_limit_errors": "counter",
    "langgraph_runs_pending": "gauge",
    "langgraph_runs_running": "gauge",
    "langgraph_workers_available": "gauge",
    "langgraph_checkpointer_up": "gauge",
}


@dataclass
class Sample:
    service: SampleService
    http: TestClient

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.service.tick()

    def call(self, method: str, path: str, json: Any = None, key: str | None = None) -> Any:
        """An /admin call that must answer 200; returns its JSON body."""
        response = self.request(method, path, json, key)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def request(self, method: str, path: str, json: Any = None, key: str | None = None) -> Any:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.http.request(method, f"/admin{path}", json=json, headers=headers)

    def fault(self, **body: Any) -> None:
        self.call("POST", "/faults", body)

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        text = self.http.get("/metrics").text
        return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(v for n, have, v in self.samples() if n == name and all(have.get(k) == x for k, x in labels.items()))

    def series(self, name: str) -> list[dict[str, str]]:
        return [labels for n, labels, _ in self.samples() if n == name]

    def model(self, model_id: str) -> dict[str, Any]:
        return next(m for m in self.call("GET", "/llm")["models"] if m["model"] == model_id)


def requests(s: Sample, graph: str, outcome: str, **model: str) -> float:
    return s.metric("langgraph_llm_requests_total", graph_name=graph, outcome=outcome, **model)


@pytest.fixture
def sample() -> Iterator[Sample]:
    """Graphs chat, search, summarize on the default catalogue and tools; no ticker: the test ticks."""
    service = SampleService(["chat", "search", "summarize"])
    yield Sample(service, TestClient(create_app(service)))  # not entered: its lifespan would start the ticker


def test_every_llm_series_exists_from_the_start_and_each_run_makes_one_request_and_tool_calls(sample: Sample) -> None:
    s = sample
    types = {f.name: f.type for f in text_string_to_metric_families(s.http.get("/metrics").text)}
    assert {name: types.get(name) for name in LLM_METRICS} == LLM_METRICS
    # 3 graphs x 3 models x 5 outcomes, all at 0 before anything ran
    assert len(s.series("langgraph_llm_requests_total")) == 45 and s.metric("langgraph_llm_requests_total") == 0
    assert {"graph_name": "chat", **CLAUDE} in s.series("langgraph_graph_llm_info")
    assert len(s.series("langgraph_graph_llm_info")) == 3
    assert s.metric("langgraph_checkpointer_up", backend_type="primary") == 1
    assert s.call("GET", "/llm") == {
        "models": [
            {"model": m, "provider": m.split("/")[0], "name": m.split("/")[1], "healthy": True, "failing": None}
            for m in ("anthropic/claude-sonnet-4", "openai/gpt-4o", "google/gemini-2.5-pro")
        ],
        "graphs": {
            g: {"model": "anthropic/claude-sonnet-4", "concurrency_limit": None, "token_budget": None}
            for g in ("chat", "search", "summarize")
        },
        "tools": {"search": {"enabled": True}, "calculator": {"enabled": True}},
        "queue": {"pending": 0, "running": 0, "workers": 4},
    }

    s.tick(4)
    assert requests(s, "chat", "ok", **CLAUDE) == 4 and s.metric("langgraph_llm_requests_total") == 12
    assert s.metric("langgraph_executions_total", graph_name="chat") == 4
    assert s.metric("langgraph_tool_calls_total", graph_name="chat", tool_name="search", status="success") == 4
    assert s.metric("gen_ai_server_time_to_first_token_seconds_count", **CLAUDE) == 12
    assert s.metric("gen_ai_client_operation_duration_seconds_count", error_type="", gen_ai_operation_name="chat") == 12
    assert s.metric("gen_ai_client_token_usage_count", gen_ai_token_type="output") == 12
    assert s.metric("langgraph_llm_tokens_total") == s.metric("gen_ai_client_token_usage_sum") > 12 * 400
    assert 0 < s.metric("langgraph_llm_cost_usd_total", graph_name="chat", **CLAUDE) < 1
    assert (s.metric("langgraph_runs_running"), s.metric("langgraph_workers_available")) == (3, 1)
    assert s.metric("langgraph_runs_pending") == 0


def test_an_overloaded_model_fails_every_request_and_shows_unhealthy_until_cleared(sample: Sample) -> None:
    s = sample
    s.tick()
    s.fault(model="anthropic/claude-sonnet-4", llm_error="overloaded", error_rate=1.0)
    claude = s.model("anthropic/claude-sonnet-4")
    assert (claude["healthy"], claude["failing"]) == (False, "overloaded")
    assert s.model("openai/gpt-4o")["healthy"] is True
    ttft = s.metric("gen_ai_server_time_to_first_token_seconds_count", **CLAUDE)
    s.tick(5)
    for graph in ("chat", "search", "summarize"):
        assert requests(s, graph, "overloaded", **CLAUDE) == 5 and requests(s, graph, "ok", **CLAUDE) == 1
    assert s.metric("gen_ai_client_operation_duration_seconds_count", error_type="overloaded", **CLAUDE) == 15
    assert s.metric("gen_ai_server_time_to_first_token_seconds_count", **CLAUDE) == ttft  # successes only
    assert s.call("GET", "/faults")["llm"]["models"] == {
        "anthropic/claude-sonnet-4": {"llm_error": "overloaded", "error_rate": 1.0, "ttft_seconds": 0.0}
    }

    s.fault(model="anthropic/claude-sonnet-4", llm_error="quota_exhausted")  # error_rate defaults to 1
    s.tick()
    assert requests(s, "chat", "quota_exhausted", **CLAUDE) == 1
    assert s.model("anthropic/claude-sonnet-4")["failing"] == "quota_exhausted"
    s.call("DELETE", "/faults")
    assert s.model("anthropic/claude-sonnet-4")["healthy"] is True
    s.tick()
    assert requests(s, "chat", "ok", **CLAUDE) == 2


def test_switching_a_graphs_model_moves_its_requests_and_its_info_series(sample: Sample) -> None:
    s = sample
    s.fault(model="anthropic/claude-sonnet-4", llm_error="timeout", error_rate=1.0)
    s.tick()
    assert requests(s, "chat", "timeout", **CLAUDE) == 1
    assert s.metric("gen_ai_client_operation_duration_seconds_sum", error_type="timeout") == 3 * 30
    moved = s.call("POST", "/graphs/chat/llm", {"model": "openai/gpt-4o"})
    assert moved == {
        "graph": "chat",
        "model": "openai/gpt-4o",
        "previous": "anthropic/claude-sonnet-4",
        "changed": True,
    }
    assert s.call("POST", "/graphs/chat/llm", {"model": "openai/gpt-4o"})["changed"] is False
    info = [labels for labels in s.series("langgraph_graph_llm_info") if labels["graph_name"] == "chat"]
    assert info == [{"graph_name": "chat", **GPT}]  # the old model's series is gone
    s.tick(3)
    assert requests(s, "chat", "ok", **GPT) == 3 and requests(s, "chat", "timeout", **CLAUDE) == 1
    assert requests(s, "search", "timeout", **CLAUDE) == 4 and requests(s, "search", "ok", **GPT) == 0
    assert s.metric("langgraph_llm_cost_usd_total", graph_name="chat", **GPT) > 0
    assert s.call("GET", "/llm")["graphs"]["chat"]["model"] == "openai/gpt-4o"


def test_slow_first_tokens_and_token_spikes_show_in_latency_tokens_and_cost(sample: Sample) -> None:
    s = sample
    s.tick(5)
    before = {g: s.metric("langgraph_llm_tokens_total", graph_name=g) for g in ("chat", "search")}
    cost = s.metric("langgraph_llm_cost_usd_total", graph_name="chat")
    s.fault(model="anthropic/claude-sonnet-4", ttft_seconds=8)
    s.fault(graph="chat", token_multiplier=10)
    ttft_sum = s.metric("gen_ai_server_time_to_first_token_seconds_sum", **CLAUDE)
    s.tick(5)
    assert s.metric("gen_ai_server_time_to_first_token_seconds_sum", **CLAUDE) - ttft_sum >= 8 * 15
    chat = s.metric("langgraph_llm_tokens_total", graph_name="chat") - before["chat"]
    search = s.metric("langgraph_llm_tokens_total", graph_name="search") - before["search"]
    assert chat > 5 * search  # x10 per request, give or take the draw
    assert s.metric("langgraph_llm_cost_usd_total", graph_name="chat") - cost > 5 * cost
    assert requests(s, "chat", "ok") == 10  # slow and costly, but not failing
    big = s.metric("gen_ai_client_token_usage_bucket", gen_ai_token_type="input", le="1024.0", **CLAUDE)
    assert big == 30 - 5  # of 30 requests, the 5 spiked ones of chat are above 1,024 input tokens


def test_a_concurrency_cap_and_a_backlog_make_pending_runs_grow(sample: Sample) -> None:
    s = sample
    limits = s.call("POST", "/graphs/chat/limits", {"concurrency": 1})
    assert limits == {
        "graph": "chat",
        "concurrency_limit": 1,
        "token_budget": None,
        "previous": {"concurrency_limit": None, "token_budget": None},
        "changed": True,
    }
    assert s.metric("langgraph_llm_concurrency_limit", graph_name="chat") == 1
    s.tick(3)
    assert s.metric("langgraph_runs_pending") == 0  # one run of chat per tick fits the cap
    s.fault(backlog=20)
    s.tick()
    assert (s.metric("langgraph_runs_running"), s.metric("langgraph_workers_available")) == (4, 0)
    first = s.metric("langgraph_runs_pending")
    s.tick()
    assert s.metric("langgraph_runs_pending") == first + 19  # 23 arrive, 4 workers
    assert s.call("GET", "/llm")["queue"] == {"pending": first + 19, "running": 4, "workers": 4}
    s.call("DELETE", "/faults")

    roomy = SampleService(["chat", "search", "summarize"], workers=50)
    r = Sample(roomy, TestClient(create_app(roomy)))
    r.fault(backlog=6)  # 9 runs a tick, 3 of them chat's: 50 workers take all
    r.tick(3)
    assert r.metric("langgraph_runs_pending") == 0 and requests(r, "chat", "ok") == 9
    r.call("POST", "/graphs/chat/limits", {"concurrency": 1})
    r.tick(3)
    assert r.metric("langgraph_runs_pending") == 6  # chat runs 1 of its 3 a tick: the rest wait
    assert requests(r, "chat", "ok") == 12 and requests(r, "search", "ok") == 18
    uncapped = r.call("POST", "/graphs/chat/limits", {"concurrency": 0})
    assert uncapped["concurrency_limit"] is None and uncapped["previous"]["concurrency_limit"] == 1
    assert r.metric("langgraph_llm_concurrency_limit", graph_name="chat") == 0
    r.tick()
    assert r.metric("langgraph_runs_pending") == 0  # the waiting runs drain


def test_a_token_budget_refuses_requests_beyond_it_as_rate_limited(sample: Sample) -> None:
    s = sample
    answer = s.call("POST", "/graphs/chat/limits", {"token_budget": 2500})
    assert answer["token_budget"] == 2500 and answer["concurrency_limit"] is None
    assert s.metric("langgraph_llm_token_budget", graph_name="chat") == 2500
    s.tick(10)  # a request uses 400..1200 tokens: at most 6 fit in the minute's 2,500
    ok, limited = requests(s, "chat", "ok"), requests(s, "chat", "rate_limited")
    assert 2 <= ok <= 6 and ok + limited == 10
    assert s.metric("langgraph_llm_tokens_total", graph_name="chat") <= 2500
    assert requests(s, "search", "rate_limited") == 0
    assert s.model("anthropic/claude-sonnet-4")["healthy"] is True  # the cap, not the provider


def test_an_agent_loop_counts_recursion_errors_for_its_graph_and_tool_until_the_tool_is_disabled(
    sample: Sample,
) -> None:
    s = sample
    s.fault(graph="chat", loop_tool="search")
    s.tick(2)
    assert s.metric("langgraph_recursion_limit_errors_total", graph_name="chat", tool_name="search") == 2
    assert s.metric("langgraph_recursion_limit_errors_total") == 2
    calls = s.metric("langgraph_tool_calls_total", graph_name="chat", tool_name="search")
    assert calls == 2 * RECURSION_LIMIT
    assert s.metric("langgraph_tool_calls_total", graph_name="search", tool_name="search") == 2
    all_calls = s.metric("langgraph_tool_calls_total", tool_name="search")

    off = s.call("POST", "/tools/search/disable")
    assert off == {"tool": "search", "enabled": False, "changed": True, "disabled": ["search"]}
    assert s.call("POST", "/tools/search/disable")["changed"] is False
    assert s.metric("langgraph_tool_enabled", tool_name="search") == 0
    assert s.call("GET", "/llm")["tools"]["search"] == {"enabled": False}
    s.tick(3)
    assert s.metric("langgraph_tool_calls_total", tool_name="search") == all_calls  # no more calls
    assert s.metric("langgraph_recursion_limit_errors_total") == 2  # the loop cannot happen
    assert s.metric("langgraph_tool_calls_total", graph_name="chat", tool_name="calculator") == 5
    on = s.call("POST", "/tools/search/enable")
    assert on == {"tool": "search", "enabled": True, "changed": True, "disabled": []}
    s.fault(graph="chat", loop_tool="")  # stops the loop
    s.tick()
    assert s.metric("langgraph_recursion_limit_errors_total") == 2


def test_a_failing_tool_counts_errors(sample: Sample) -> None:
    s = sample
    s.fault(tool="calculator", error_rate=1.0)
    s.tick(2)
    assert s.metric("langgraph_tool_calls_total", tool_name="calculator", status="error") == 6
    assert s.metric("langgraph_tool_calls_total", tool_name="search", status="error") == 0
    assert s.call("GET", "/faults")["llm"]["tools"] == {"calculator": {"error_rate": 1.0}}


def test_a_canary_fails_under_a_provider_fault_and_passes_after_a_failover(sample: Sample) -> None:
    s = sample
    s.fault(model="anthropic/claude-sonnet-4", llm_error="overloaded", error_rate=1.0)
    failed = s.call("POST", "/graphs/chat/canary", {"runs": 5})
    assert (failed["graph"], failed["model"], failed["runs"], failed["succeeded"]) == (
        "chat",
        "anthropic/claude-sonnet-4",
        5,
        0,
    )
    assert failed["outcomes"] == ["overloaded"] * 5 and len(failed["latencies_seconds"]) == 5
    assert failed["max_latency_seconds"] == max(failed["latencies_seconds"])
    assert requests(s, "chat", "overloaded", **CLAUDE) == 5  # counted like any request

    s.call("POST", "/graphs/chat/llm", {"model": "openai/gpt-4o"})
    passed = s.call("POST", "/graphs/chat/canary", {"runs": 3})
    assert (passed["model"], passed["succeeded"]) == ("openai/gpt-4o", 3)
    assert passed["max_latency_seconds"] < 10
    assert requests(s, "chat", "ok", **GPT) == 3
    assert s.call("POST", "/graphs/chat/canary")["runs"] == 5  # the default

    s.fault(model="openai/gpt-4o", ttft_seconds=12)
    slow = s.call("POST", "/graphs/chat/canary", {"runs": 2})
    assert slow["succeeded"] == 2 and min(slow["latencies_seconds"]) >= 12  # a latency bound would fail it


def test_the_checkpointer_gauge_fails_closed(sample: Sample) -> None:
    s = sample
    up = {"primary": 1.0, "backup": 1.0}
    assert {b: s.metric("langgraph_checkpointer_up", backend_type=b) for b in up} == up
    s.fault(storage="primary", broken=True)
    assert s.metric("langgraph_checkpointer_up", backend_type="primary") == 0
    assert s.metric("langgraph_checkpointer_up", backend_type="backup") == 1
    s.call("DELETE", "/faults")
    s.fault(checkpointer_check_fails=True)  # the check cannot run: 0, never the last 1
    assert {b: s.metric("langgraph_checkpointer_up", backend_type=b) for b in up} == {"primary": 0, "backup": 0}
    assert s.http.get("/health").status_code == 200  # what /health does not show
    assert s.call("GET", "/faults")["checkpointer_check_fails"] is True
    s.call("DELETE", "/faults")
    assert {b: s.metric("langgraph_checkpointer_up", backend_type=b) for b in up} == up


def test_the_new_commands_replay_an_idempotency_key_without_acting_again(sample: Sample) -> None:
    s = sample
    first = s.call("POST", "/graphs/chat/llm", {"model": "openai/gpt-4o"}, key="k-llm")
    s.call("POST", "/graphs/chat/llm", {"model": "anthropic/claude-sonnet-4"})  # moved back by hand
    assert s.call("POST", "/graphs/chat/llm", {"model": "openai/gpt-4o"}, key="k-llm") == first
    assert s.call("GET", "/llm")["graphs"]["chat"]["model"] == "anthropic/claude-sonnet-4"  # replayed, not acted

    canary = s.call("POST", "/graphs/chat/canary", {"runs": 4}, key="k-canary")
    sent = s.metric("langgraph_llm_requests_total", graph_name="chat")
    assert s.call("POST", "/graphs/chat/canary", {"runs": 4}, key="k-canary") == canary
    assert s.metric("langgraph_llm_requests_total", graph_name="chat") == sent == 4  # no second canary

    s.call("POST", "/tools/search/disable", key="k-tool")
    s.call("POST", "/tools/search/enable")
    assert s.call("POST", "/tools/search/disable", key="k-tool")["changed"] is True
    assert s.call("GET", "/llm")["tools"]["search"]["enabled"] is True

    s.call("POST", "/graphs/chat/limits", {"concurrency": 2}, key="k-limits")
    s.call("POST", "/graphs/chat/limits", {"concurrency": 0})
    assert s.call("POST", "/graphs/chat/limits", {"concurrency": 2}, key="k-limits")["changed"] is True
    assert s.call("GET", "/llm")["graphs"]["chat"]["concurrency_limit"] is None

    other = s.request("POST", "/graphs/chat/limits", {"concurrency": 3}, key="k-limits")
    assert other.status_code == 422 and "was first used for" in other.json()["error"]
    keys = s.call("GET", "/idempotency")["keys"]
    assert {k: v["received"] for k, v in keys.items()} == {"k-llm": 2, "k-canary": 2, "k-tool": 2, "k-limits": 3}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/graphs/chat/llm", {"model": "openai/gpt-5"}, 400, "no model named 'openai/gpt-5' (models: "),
        ("POST", "/graphs/nope/llm", {"model": "openai/gpt-4o"}, 404, "no graph named 'nope'"),
        ("POST", "/graphs/chat/llm", {}, 422, "model"),
        ("POST", "/graphs/chat/limits", {}, 422, "set `concurrency` or `token_budget`"),
        ("POST", "/graphs/chat/limits", {"concurrency": -1}, 422, "greater than or equal to 0"),
        ("POST", "/graphs/nope/limits", {"concurrency": 1}, 404, "no graph named 'nope'"),
        ("POST", "/tools/browser/disable", None, 404, "no tool named 'browser' (tools: search, calculator)"),
        ("POST", "/tools/browser/enable", None, 404, "no tool named 'browser'"),
        ("POST", "/graphs/chat/canary", {"runs": 21}, 422, "less than or equal to 20"),
        ("POST", "/graphs/chat/canary", {"runs": 0}, 422, "greater than or equal to 1"),
        ("POST", "/graphs/nope/canary", {"runs": 1}, 404, "no graph named 'nope'"),
        ("POST", "/faults", {"model": "x/y", "llm_error": "overloaded"}, 400, "no model named 'x/y'"),
        ("POST", "/faults", {"model": "openai/gpt-4o", "llm_error": "down"}, 422, "rate_limited"),
        ("POST", "/faults", {"model": "openai/gpt-4o", "error_rate": 1}, 422, "error_rate on a model needs"),
        ("POST", "/faults", {"model": "openai/gpt-4o"}, 422, "a model fault needs llm_error"),
        ("POST", "/faults", {"llm_error": "timeout"}, 422, "llm_error and ttft_seconds need `model`"),
        ("POST", "/faults", {"tool": "search"}, 422, "a tool fault needs error_rate"),
        ("POST", "/faults", {"tool": "nope", "error_rate": 1}, 404, "no tool named 'nope'"),
        ("POST", "/faults", {"graph": "chat", "tool": "search", "error_rate": 1}, 422, "exactly one"),
        ("POST", "/faults", {"graph": "chat", "loop_tool": "nope"}, 404, "no tool named 'nope'"),
        ("POST", "/faults", {"loop_tool": "search"}, 422, "loop_tool needs `graph`"),
        ("POST", "/faults", {"graph": "chat", "token_multiplier": 0}, 422, "greater than 0"),
        ("POST", "/faults", {"backlog": -1}, 422, "greater than or equal to 0"),
        ("POST", "/faults", {}, 422, "name a `graph`, `model`, `tool`"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_changes_nothing(
    sample: Sample, method: str, path: str, body: Any, status: int, message: str
) -> None:
    s = sample
    before = (s.call("GET", "/llm"), s.call("GET", "/faults"))
    response = s.request(method, path, body)
    assert response.status_code == status and message in response.text
    assert (s.call("GET", "/llm"), s.call("GET", "/faults")) == before


def test_the_model_catalogue_is_configurable_and_checked() -> None:
    assert parse_models(" openai/gpt-4o, local/llama-3.1:8b ") == ["openai/gpt-4o", "local/llama-3.1:8b"]
    for bad, message in [("", "at least one"), ("gpt-4o", "is not provider/model"), ("a/b,a/b", "twice")]:
        with pytest.raises(ValueError, match=message):
            parse_models(bad)
    service = SampleService(["chat"], models=["openai/gpt-4o", "local/llama-3"])
    s = Sample(service, TestClient(create_app(service)))
    s.tick()
    assert s.call("GET", "/llm")["graphs"]["chat"]["model"] == "openai/gpt-4o"
    assert requests(s, "chat", "ok", **GPT) == 1
    assert s.metric("langgraph_llm_cost_usd_total", gen_ai_provider_name="local") == 0
    refused = subprocess.run(
        [sys.executable, "-m", "controlplane", "sample-app", "--port", "1", "--llm-models", "gpt-4o"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "model 'gpt-4o' is not provider/model" in refused.stderr


def test_the_readme_documents_every_metric_the_sample_exports(sample: Sample) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Its metrics", 1)[1].split("### Its admin API", 1)[0]
    documented = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    exported = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(sample.http.get("/metrics").text)
        if not f.name.endswith("_created")  # prometheus_client's creation timestamps
    }
    assert documented == exported


def test_the_served_app_ticks_the_llm_side_too(sample_app: SampleApp) -> None:
    c = sample_app.client
    c.fault(model="anthropic/claude-sonnet-4", llm_error="rate_limited", error_rate=1.0)
    c.wait_until(lambda: c.metric("langgraph_llm_requests_total", graph_name="a", outcome="rate_limited") >= 3)
    assert c.metric("langgraph_tool_calls_total", graph_name="a", tool_name="calculator", status="success") >= 3
