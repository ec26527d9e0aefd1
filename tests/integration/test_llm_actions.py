"""llm.*, tool.* and graph.canary against the real sample service over HTTP, alone and in playbooks.

The actions are called directly first, as the executor calls them (the blast-radius check, then the
call, through the real admin API client), and what they change is read back from the service: its
admin API and its /metrics. Then an alert's playbook fails a graph over off a failing provider and
verifies it with a canary, through the running control plane on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from controlplane.actions.base import ActionContext, ActionError, ActionResult, BlastRadiusExceeded
from controlplane.actions.builtin import build_registry
from controlplane.app import create_app
from controlplane.config import Settings
from controlplane.rules.loader import load_rules
from controlplane.rules.schema import Target
from tests.conftest import TOKEN, make_settings
from tests.helpers import MemoryAudit, action_context, post_alerts
from tests.sample_fixture import SampleApp, SampleClient, run_sample_app

registry = build_registry()
CLAUDE, GPT, GEMINI = "anthropic/claude-sonnet-4", "openai/gpt-4o", "google/gemini-2.5-pro"
ON_CLAUDE = {"gen_ai_provider_name": "anthropic", "gen_ai_request_model": "claude-sonnet-4"}
ON_GPT = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}


def llm_target(sample: SampleApp, **fields: Any) -> Target:
    values = {"name": "default", "kind": "http", "url": f"{sample.url}/admin", "llm_models": [CLAUDE, GPT, GEMINI]}
    return Target.model_validate({**values, **fields})


class Runner:
    """Calls one action as the executor does: the blast-radius check first, then the action."""

    def __init__(self, engine: Engine, target: Target) -> None:
        self.engine, self.target = engine, target
        self.audit = MemoryAudit()  # a direct call has no execution row for the audit trail to name

    def refusal(self, name: str, **params: Any) -> str | None:
        spec = registry.get(name)
        assert spec.blast_radius is not None
        return spec.blast_radius(self._ctx("check"), spec.params.model_validate(params))

    def __call__(self, name: str, key: str = "1:0", **params: Any) -> ActionResult:
        spec = registry.get(name)
        parsed = spec.params.model_validate(params)
        refusal = spec.blast_radius(self._ctx(key), parsed) if spec.blast_radius else None
        if refusal:
            raise BlastRadiusExceeded(f"blast radius: {refusal}")
        return spec.func(self._ctx(key), parsed)

    def _ctx(self, key: str) -> ActionContext:
        ctx = action_context(Settings(), self.engine, self.target, key=key)
        return replace(ctx, ports=replace(ctx.ports, audit=self.audit))


def llm(c: SampleClient) -> dict[str, Any]:
    return dict(c.admin("GET", "/llm"))


def requests_to(c: SampleClient, graph: str, model: dict[str, str]) -> float:
    return c.metric("langgraph_llm_requests_total", graph_name=graph, **model)


# -- the actions, called directly -----------------------------------------------------------------------


def test_failover_moves_the_graph_off_the_failing_provider_and_its_requests_follow(
    sample_app: SampleApp, unused_engine: Engine
) -> None:
    c = sample_app.client
    run = Runner(unused_engine, llm_target(sample_app))
    c.fault(model=CLAUDE, llm_error="overloaded", error_rate=1.0)
    c.wait_until(lambda: c.metric("langgraph_llm_requests_total", graph_name="a", outcome="overloaded") >= 3)
    assert run.refusal("llm.failover", graph="a") is None
    moved = run("llm.failover", key="7:1", graph="a")
    assert (moved.value, moved.output["previous"], moved.output["changed"]) == (GPT, CLAUDE, True)
    assert {g: s["model"] for g, s in llm(c)["graphs"].items()} == {"a": GPT, "b": CLAUDE, "c": CLAUDE}
    assert c.metric("langgraph_graph_llm_info", graph_name="a", **ON_GPT) == 1
    info = [labels for name, labels, _ in c.samples() if name == "langgraph_graph_llm_info"]
    assert [labels for labels in info if labels["graph_name"] == "a"] == [{"graph_name": "a", **ON_GPT}]
    # Graph a's requests go to gpt-4o now and succeed; none reach the failing provider any more.
    failing, ok = requests_to(c, "a", ON_CLAUDE), requests_to(c, "a", {**ON_GPT, "outcome": "ok"})
    c.wait_until(lambda: requests_to(c, "a", {**ON_GPT, "outcome": "ok"}) >= ok + 5)
    assert requests_to(c, "a", ON_CLAUDE) == failing
    assert requests_to(c, "a", {**ON_GPT, "outcome": "overloaded"}) == 0

    # A retry of the step sends the model its first attempt chose, and the service replays its answer.
    assert run("llm.failover", key="7:1", graph="a").output == moved.output
    assert c.idempotency()["7:1"]["received"] == 2
    # The rollback names the model it left: refused while that provider is failing, done once it recovered.
    back = {"graph": "a", "to": moved.output["previous"]}
    assert run.refusal("llm.failover", **back) == f"no healthy model to fail over to: {CLAUDE} is overloaded"
    c.clear_faults()
    assert run("llm.failover", key="7:1001", **back).output == {
        "target": "default", "graph": "a", "model": CLAUDE, "previous": GPT, "changed": True,
        "healthy": [CLAUDE, GPT, GEMINI],
    }  # fmt: skip


def test_failover_never_lands_on_a_failing_or_quota_exhausted_model(
    sample_app: SampleApp, unused_engine: Engine
) -> None:
    c = sample_app.client
    run = Runner(unused_engine, llm_target(sample_app))
    c.fault(model=CLAUDE, llm_error="overloaded", error_rate=1.0)
    c.fault(model=GPT, llm_error="quota_exhausted", error_rate=1.0)
    assert run("llm.failover", graph="a").value == GEMINI
    c.fault(model=GEMINI, llm_error="rate_limited", error_rate=0.5)
    refusal = f"no healthy model to fail over to: {CLAUDE} overloaded, {GPT} quota_exhausted"
    assert run.refusal("llm.failover", graph="a") == refusal
    with pytest.raises(BlastRadiusExceeded, match=refusal):
        run("llm.failover", key="2:0", graph="a")
    assert llm(c)["graphs"]["a"]["model"] == GEMINI
    unset = Runner(unused_engine, llm_target(sample_app, llm_models=[]))
    assert (unset.refusal("llm.failover", graph="a") or "").startswith("target 'default' has no llm_models: set it")
    with pytest.raises(ActionError, match="no graph named 'nope' on target 'default' \\(graphs: a, b, c\\)"):
        run("llm.failover", graph="nope", to=CLAUDE)


def test_limits_and_the_tool_breaker_change_what_the_service_does(sample_app: SampleApp, unused_engine: Engine) -> None:
    c = sample_app.client
    run = Runner(unused_engine, llm_target(sample_app, min_llm_concurrency=2, min_token_budget=5000))
    capped = run("llm.limit", key="3:1", graph="a", concurrency=2, token_budget=20000)
    assert capped.output["previous"] == {"concurrency_limit": 0, "token_budget": 0}
    assert c.metric("langgraph_llm_concurrency_limit", graph_name="a") == 2
    assert c.metric("langgraph_llm_token_budget", graph_name="a") == 20000
    assert "below target 'default''s min_llm_concurrency of 2" in (
        run.refusal("llm.limit", graph="a", concurrency=1) or ""
    )
    previous = {k: str(v) for k, v in capped.output["previous"].items()}  # as the rollback's template renders them
    run("llm.limit", key="3:1001", graph="a", concurrency=previous["concurrency_limit"],
        token_budget=previous["token_budget"])  # fmt: skip
    assert (llm(c)["graphs"]["a"]["concurrency_limit"], llm(c)["graphs"]["a"]["token_budget"]) == (None, None)
    assert c.metric("langgraph_llm_concurrency_limit", graph_name="a") == 0

    c.fault(tool="search", error_rate=1.0)
    c.wait_until(lambda: c.metric("langgraph_tool_calls_total", tool_name="search", status="error") >= 3)
    assert run("tool.disable", key="4:1", tool="search").output["disabled_tools"] == ["search"]
    assert c.metric("langgraph_tool_enabled", tool_name="search") == 0
    errors, calculator = (
        c.metric("langgraph_tool_calls_total", tool_name="search"),
        c.metric("langgraph_tool_calls_total", tool_name="calculator"),
    )
    c.wait_until(lambda: c.metric("langgraph_tool_calls_total", tool_name="calculator") >= calculator + 5)
    assert c.metric("langgraph_tool_calls_total", tool_name="search") == errors  # the breaker holds
    with pytest.raises(BlastRadiusExceeded, match="over its max_disabled_tools of 1 \\(already disabled: search\\)"):
        run("tool.disable", key="5:1", tool="calculator")
    assert run("tool.enable", key="4:1001", tool="search").output["before"] == "disabled"
    assert llm(c)["tools"] == {"search": {"enabled": True}, "calculator": {"enabled": True}}
    with pytest.raises(ActionError, match="answered 404: no tool named 'browser'"):
        run("tool.enable", tool="browser")


def test_canary_passes_on_a_healthy_model_and_fails_the_step_on_a_slow_or_failing_one(
    sample_app: SampleApp, unused_engine: Engine
) -> None:
    c = sample_app.client
    run = Runner(unused_engine, llm_target(sample_app))
    passed = run("graph.canary", graph="a", runs=5, max_latency="5s")
    assert (passed.value, passed.output["model"], passed.output["outcomes"]) == (5, CLAUDE, ["ok"] * 5)
    c.fault(model=CLAUDE, ttft_seconds=8)
    with pytest.raises(ActionError, match="0 of 3 runs succeeded within 5 s, 3 needed \\(3 succeeded") as slow:
        run("graph.canary", graph="a", runs=3, max_latency="5s")
    assert not slow.value.retriable
    c.clear_faults()
    c.fault(model=CLAUDE, llm_error="timeout", error_rate=1.0)
    with pytest.raises(ActionError, match="0 of 2 runs succeeded within 1 min, 1 needed") as failing:
        run("graph.canary", graph="a", runs=2, max_latency="60s", min_success=1, retriable=True)
    assert failing.value.retriable and failing.value.output["outcomes"] == ["timeout", "timeout"]


def test_plans_read_the_service_and_send_nothing(unused_engine: Engine) -> None:
    """No tick runs here (an hour's interval), so any request a plan sent would show in the counters."""
    with run_sample_app(["a", "b"], interval=3600) as sample:
        c = sample.client
        c.fault(model=CLAUDE, llm_error="overloaded", error_rate=1.0)
        target = llm_target(sample)
        before, metrics = llm(c), c.samples()
        ctx = action_context(Settings(), unused_engine, target)
        sentences = []
        for name, params in (
            ("llm.failover", {"graph": "a"}),
            ("llm.limit", {"graph": "a", "concurrency": 2}),
            ("tool.disable", {"tool": "search"}),
            ("tool.enable", {"tool": "search"}),
            ("graph.canary", {"graph": "a"}),
        ):
            spec = registry.get(name)
            assert spec.plan is not None
            sentences.append(spec.plan(ctx, spec.params.model_validate(params)).sentence)
        assert sentences == [
            f"move graph a on default {CLAUDE} → {GPT} (2 of 3 models healthy)",
            "cap graph a on default: concurrency no cap, token budget none → concurrency 2, token budget none "
            "(floors: concurrency 1, token budget 1000)",
            "disable tool search on default (0 of 2 disabled; at most 1 disabled)",
            "leave tool search on default: already enabled (0 of 2 disabled; at most 1 disabled)",
            f"send 5 canary runs through graph a on default ({CLAUDE}, overloaded now); pass when 5 succeed "
            "within 10 s",
        ]
        assert llm(c) == before and c.samples() == metrics and c.idempotency() == {}


# -- a provider outage through the running service, on SQLite and PostgreSQL --------------------------------

RULES = """
targets:
  - name: agents
    kind: http
    url: {url}
    llm_models: [anthropic/claude-sonnet-4, openai/gpt-4o, google/gemini-2.5-pro]
rules:
  - name: provider-outage
    match: {{alertname: LLMProviderErrors}}
    group_by: [alertname, gen_ai_provider_name, gen_ai_request_model]
    playbook: fail-over
playbooks:
  - name: fail-over
    steps:
      - id: moved
        action: llm.failover
        with: {{target: agents, graph: "{{{{ alert.labels.graph_name }}}}"}}
        rollback:
          action: llm.failover
          with:
            target: agents
            graph: "{{{{ alert.labels.graph_name }}}}"
            to: "{{{{ steps.moved.output.previous }}}}"
      - id: capped
        action: llm.limit
        with: {{target: agents, graph: "{{{{ alert.labels.graph_name }}}}", concurrency: 2}}
        rollback:
          action: llm.limit
          with:
            target: agents
            graph: "{{{{ alert.labels.graph_name }}}}"
            concurrency: "{{{{ steps.capped.output.previous.concurrency_limit }}}}"
      - action: graph.canary
        with: {{target: agents, graph: "{{{{ alert.labels.graph_name }}}}", runs: 5, max_latency: 5s}}
"""


@pytest.fixture
def service(database_url: str, sample_app: SampleApp, tmp_path: Path) -> Iterator[TestClient]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "llm.yaml").write_text(RULES.format(url=f"{sample_app.url}/admin"))
    load_rules(rules_dir, registry)  # what `controlplane check` runs: the file must pass it
    settings = make_settings(database_url, rules_dir=rules_dir, worker_poll_seconds=0.05)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def finished(client: TestClient, timeout: float = 15.0) -> dict[str, Any]:
    """The one execution, once it has stopped running; with its steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.get("/api/v1/executions").json()["items"]
        if items and items[0]["status"] not in ("pending", "running", "waiting"):
            return dict(client.get(f"/api/v1/executions/{items[0]['id']}").json())
        time.sleep(0.05)
    raise AssertionError(f"no finished execution within {timeout:g}s")


def outage_alert(client: TestClient) -> None:
    labels = {"alertname": "LLMProviderErrors", "graph_name": "b", **ON_CLAUDE}
    post_alerts(client, {"labels": labels, "fingerprint": "fp-claude-b"})


def test_a_provider_outage_fails_the_graph_over_and_the_canary_passes(
    service: TestClient, sample_app: SampleApp
) -> None:
    c = sample_app.client
    c.fault(model=CLAUDE, llm_error="overloaded", error_rate=1.0)
    outage_alert(service)
    done = finished(service)
    assert done["status"] == "succeeded", done.get("reason")
    assert [s["output"]["value"] for s in done["steps"]] == [GPT, {"concurrency_limit": 2, "token_budget": 0}, 5]
    assert llm(c)["graphs"]["b"] == {"model": GPT, "concurrency_limit": 2, "token_budget": None}
    failing = requests_to(c, "b", ON_CLAUDE)
    ok = requests_to(c, "b", {**ON_GPT, "outcome": "ok"})
    c.wait_until(lambda: requests_to(c, "b", {**ON_GPT, "outcome": "ok"}) >= ok + 5)
    assert requests_to(c, "b", ON_CLAUDE) == failing


def test_a_failed_canary_rolls_back_but_never_onto_the_failing_provider(
    service: TestClient, sample_app: SampleApp
) -> None:
    c = sample_app.client
    c.fault(model=CLAUDE, llm_error="overloaded", error_rate=1.0)
    c.fault(model=GPT, ttft_seconds=8)  # healthy, but too slow for the canary
    outage_alert(service)
    done = finished(service)
    assert done["status"] == "failed", done.get("reason")
    assert "canary on graph b (openai/gpt-4o) on agents: 0 of 5 runs succeeded within 5 s" in done["reason"]
    rollback = {s["action"]: s for s in done["steps"] if s["phase"] == "rollback"}
    assert rollback["llm.limit"]["status"] == "succeeded"  # the cap is undone
    assert rollback["llm.failover"]["status"] == "failed"
    assert f"no healthy model to fail over to: {CLAUDE} is overloaded" in rollback["llm.failover"]["error"]
    assert llm(c)["graphs"]["b"] == {"model": GPT, "concurrency_limit": None, "token_budget": None}
