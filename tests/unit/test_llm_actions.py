"""llm.failover, llm.limit, tool.disable / tool.enable and graph.canary against the admin API's LLM contract.

The target here is the sample service (sample/service.py, its LLM side sample/llm.py) called in process,
with its idempotency: a repeated key replays the first answer, the same key with another request is
refused (422). Each action is called as the executor calls it, its blast-radius check first; each plan
is asserted to send no POST.
tests/integration/test_llm_actions.py runs the same actions against the real sample service.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from json import dumps
from typing import Any

import pytest

from controlplane.actions.base import ActionContext, ActionError, ActionResult, BlastRadiusExceeded, Plan
from controlplane.actions.builtin import build_registry
from controlplane.actions.canary import count_within
from controlplane.config import Settings
from controlplane.db.engine import make_engine
from controlplane.playbooks.contexts import build_ports
from controlplane.rules.schema import Target
from controlplane.sample.bodies import FaultRequest
from controlplane.sample.errors import SampleError
from controlplane.sample.service import SampleService
from tests.helpers import MemoryAudit

registry = build_registry()
CLAUDE, GPT, GEMINI = "anthropic/claude-sonnet-4", "openai/gpt-4o", "google/gemini-2.5-pro"
MODELS = [CLAUDE, GPT, GEMINI]


class InProcessAdminApi:
    """The sample service's admin API called in process, no socket: its own state, idempotency and refusals."""

    def __init__(self, service: SampleService) -> None:
        self.service = service
        self.requests: list[tuple[str, str, Any, str | None]] = []

    def request(
        self, target: Target, method: str, path: str, *, json: Any = None, idempotency_key: str | None = None,
        timeout: float,
    ) -> dict[str, Any]:  # fmt: skip
        self.requests.append((method, path, json, idempotency_key))
        if method == "GET" and path == "/llm":
            return self.service.llm.view()
        identity = f"{method} /admin{path} {dumps(json, sort_keys=True)}"
        status, answer = self.service.once(idempotency_key, identity, lambda: self._route(path, json or {}))
        if status != 200:
            raise ActionError(f"target {target.name!r}: {method} {path} answered {status}: {answer['error']}")
        return answer

    def _route(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        llm = self.service.llm
        try:
            if m := re.fullmatch(r"/graphs/([^/]+)/llm", path):
                return 200, llm.switch_model(m[1], body["model"])
            if m := re.fullmatch(r"/graphs/([^/]+)/limits", path):
                return 200, llm.set_limits(m[1], body.get("concurrency"), body.get("token_budget"))
            if m := re.fullmatch(r"/tools/([^/]+)/(disable|enable)", path):
                return 200, llm.set_tool(m[1], m[2] == "enable")
            if m := re.fullmatch(r"/graphs/([^/]+)/canary", path):
                return 200, llm.canary(m[1], int(body["runs"]))
        except SampleError as exc:
            return exc.status_code, {"error": str(exc)}
        raise AssertionError(f"not in the contract: POST {path}")

    def posts(self) -> list[tuple[str, Any]]:
        return [(path, body) for method, path, body, _key in self.requests if method != "GET"]


class Runner:
    """Calls an action as the executor does (its blast-radius check, then the call), or plans it."""

    def __init__(self, *targets: Target) -> None:
        self.service = SampleService(["chat", "summarize"])
        self.api = InProcessAdminApi(self.service)
        self.audit = MemoryAudit()
        self.targets = targets or (langgraph(),)
        engine = make_engine("sqlite://")  # never used: the ports that reach a database are replaced
        self.ports = replace(build_ports(Settings(), engine), admin_api=self.api, audit=self.audit)  # type: ignore[arg-type]

    def ctx(self, key: str = "1:0") -> ActionContext:
        now = datetime.now(UTC)
        return ActionContext(
            execution_id=1, step_index=0, idempotency_key=key, rule="test-rule", incident=None, alert=None,
            ports=self.ports, now=lambda: now, step_started_at=now, targets={t.name: t for t in self.targets},
        )  # fmt: skip

    def refusal(self, name: str, key: str = "1:0", **params: Any) -> str | None:
        spec = registry.get(name)
        assert spec.blast_radius is not None
        return spec.blast_radius(self.ctx(key), spec.params.model_validate(params))

    def __call__(self, name: str, key: str = "1:0", **params: Any) -> ActionResult:
        spec = registry.get(name)
        parsed = spec.params.model_validate(params)
        refusal = spec.blast_radius(self.ctx(key), parsed) if spec.blast_radius else None
        if refusal:
            raise BlastRadiusExceeded(f"blast radius: {refusal}")
        return spec.func(self.ctx(key), parsed)

    def fault(self, **body: Any) -> None:
        self.service.inject(FaultRequest.model_validate(body))

    def models(self) -> dict[str, str]:
        """Graph -> its model now."""
        return {graph: state["model"] for graph, state in self.service.llm.view()["graphs"].items()}

    def plan(self, name: str, **params: Any) -> Plan:
        spec = registry.get(name)
        assert spec.plan is not None
        return spec.plan(self.ctx(), spec.params.model_validate(params))


def langgraph(**fields: Any) -> Target:
    values = {"name": "default", "kind": "http", "url": "http://langgraph.invalid/admin", "llm_models": MODELS}
    return Target.model_validate({**values, **fields})


# -- llm.failover ---------------------------------------------------------------------------------------


def test_failover_moves_the_graph_to_the_next_healthy_model_and_the_rollback_moves_it_back() -> None:
    run = Runner()
    run.fault(model=CLAUDE, llm_error="overloaded")
    plan = run.plan("llm.failover", graph="chat")
    assert plan.sentence == f"move graph chat on default {CLAUDE} → {GPT} (2 of 3 models healthy)"
    assert (plan.refused, plan.noop, plan.change["to"]) == (None, False, GPT)
    assert run.api.posts() == []

    moved = run("llm.failover", key="7:1", graph="chat")
    assert moved.value == GPT
    assert moved.output == {
        "target": "default", "graph": "chat", "model": GPT, "previous": CLAUDE, "changed": True,
        "healthy": [GPT, GEMINI],
    }  # fmt: skip
    assert run.api.posts() == [("/graphs/chat/llm", {"model": GPT})]
    assert run.models() == {"chat": GPT, "summarize": CLAUDE}  # the other graph stays

    # The rollback names the model it left: refused while that one is still failing ...
    back = {"graph": "chat", "to": moved.output["previous"]}
    refusal = f"no healthy model to fail over to: {CLAUDE} is overloaded"
    assert run.refusal("llm.failover", **back) == refusal
    assert run.plan("llm.failover", **back).refused == refusal
    with pytest.raises(BlastRadiusExceeded, match=refusal) as refused:
        run("llm.failover", key="7:1001", **back)
    assert not refused.value.retriable and run.models()["chat"] == GPT
    # ... and done once it recovered.
    run.service.clear_faults()
    assert run("llm.failover", key="7:1002", **back).output["previous"] == GPT
    assert run.models()["chat"] == CLAUDE
    assert registry.get("llm.failover").inverse == "llm.failover"


def test_failover_wraps_around_the_order_and_never_lands_on_a_failing_model() -> None:
    run = Runner()
    run.service.llm.switch_model("chat", GEMINI)
    run.fault(model=CLAUDE, llm_error="quota_exhausted")
    assert run.plan("llm.failover", graph="chat").change["to"] == GPT  # after the last: the first, failing: next
    run.fault(model=GPT, llm_error="rate_limited", error_rate=0.3)  # failing some of the time is failing
    refusal = f"no healthy model to fail over to: {CLAUDE} quota_exhausted, {GPT} rate_limited"
    assert run.refusal("llm.failover", graph="chat") == refusal
    plan = run.plan("llm.failover", graph="chat")
    assert (plan.refused, plan.sentence) == (
        refusal,
        f"move graph chat on default off {GEMINI} (1 of 3 models healthy)",
    )
    with pytest.raises(BlastRadiusExceeded, match=refusal):
        run("llm.failover", graph="chat")
    assert run.api.posts() == [] and run.models()["chat"] == GEMINI


def test_failover_follows_the_targets_llm_models_only() -> None:
    two = Runner(langgraph(llm_models=[GPT, CLAUDE]))
    assert two.plan("llm.failover", graph="chat").change["to"] == GPT  # the order is the target's, not the service's
    one = Runner(langgraph(llm_models=[CLAUDE]))
    assert one.refusal("llm.failover", graph="chat") == (
        f"no healthy model to fail over to: llm_models lists only {CLAUDE}, the graph's model now"
    )
    assert one.refusal("llm.failover", graph="chat", to=GEMINI) == (
        f"model {GEMINI!r} is not in target 'default''s llm_models ({CLAUDE})"
    )
    unset = Runner(langgraph(llm_models=[]))
    refusal = unset.refusal("llm.failover", graph="chat")
    assert refusal is not None and refusal.startswith(
        "target 'default' has no llm_models: set it to the failover order"
    )
    at_home = Runner()
    plan = at_home.plan("llm.failover", graph="chat", to=CLAUDE)
    assert (
        plan.noop and plan.sentence == f"leave graph chat on default at {CLAUDE}: already there (3 of 3 models healthy)"
    )
    with pytest.raises(ValueError, match="provider/model"):
        registry.get("llm.failover").params.model_validate({"graph": "chat", "to": "gpt-4o"})


def test_a_retried_failover_sends_the_model_its_first_attempt_chose() -> None:
    """The first switch went through but its answer was lost: a retry that read the state again would
    choose the model after the new one, and the service would refuse the key with another body."""
    run = Runner()
    run.fault(model=CLAUDE, llm_error="overloaded")
    first = run("llm.failover", key="9:0", graph="chat")
    again = run("llm.failover", key="9:0", graph="chat")
    assert again.output == first.output and again.output["previous"] == CLAUDE
    assert run.api.posts() == [("/graphs/chat/llm", {"model": GPT})] * 2
    assert run.models()["chat"] == GPT and run.service.idempotency_view()["keys"]["9:0"]["received"] == 2
    # Another step (another key) chooses afresh, from where the graph is now.
    assert run("llm.failover", key="10:0", graph="chat").value == GEMINI


# -- llm.limit ------------------------------------------------------------------------------------------


def test_limit_caps_a_graph_within_the_targets_floors_and_the_rollback_restores_the_caps() -> None:
    run = Runner(langgraph(min_llm_concurrency=2, min_token_budget=5000))
    run.service.llm.set_limits("chat", None, 50000)
    plan = run.plan("llm.limit", graph="chat", concurrency=4, token_budget=20000)
    assert plan.sentence == (
        "cap graph chat on default: concurrency no cap, token budget 50000 tokens/min → concurrency 4, token budget "
        "20000 tokens/min (floors: concurrency 2, token budget 5000)"
    )
    capped = run("llm.limit", key="3:1", graph="chat", concurrency=4, token_budget=20000)
    assert capped.output == {
        "target": "default", "graph": "chat", "concurrency_limit": 4, "token_budget": 20000,
        "previous": {"concurrency_limit": 0, "token_budget": 50000}, "changed": True,
    }  # fmt: skip
    assert run.api.posts() == [("/graphs/chat/limits", {"concurrency": 4, "token_budget": 20000})]
    # The rollback's template renders the previous caps; 0 removes a cap.
    previous = {k: str(v) for k, v in capped.output["previous"].items()}
    run("llm.limit", key="3:1001", graph="chat", concurrency=previous["concurrency_limit"],
        token_budget=previous["token_budget"])  # fmt: skip
    caps = run.service.llm.view()["graphs"]["chat"]
    assert (caps["concurrency_limit"], caps["token_budget"]) == (None, 50000)

    below = "on graph 'chat' is below target 'default''s"
    for params, refusal in (
        ({"concurrency": 1}, f"a concurrency cap of 1 {below} min_llm_concurrency of 2"),
        ({"token_budget": 100}, f"a token budget of 100 {below} min_token_budget of 5000"),
    ):
        assert run.refusal("llm.limit", graph="chat", **params) == refusal
        assert run.plan("llm.limit", graph="chat", **params).refused == refusal
        with pytest.raises(BlastRadiusExceeded, match=re.escape(refusal)):
            run("llm.limit", key="4:1", graph="chat", **params)
    assert run.plan("llm.limit", graph="chat", token_budget=50000).noop
    with pytest.raises(ValueError, match="give `concurrency` or `token_budget`"):
        registry.get("llm.limit").params.model_validate({"graph": "chat"})
    assert len(run.api.posts()) == 2


# -- tool.disable / tool.enable -------------------------------------------------------------------------


def test_tool_disable_is_bounded_by_max_disabled_tools_and_enable_undoes_it() -> None:
    run = Runner()
    assert run.plan("tool.disable", tool="search").sentence == (
        "disable tool search on default (0 of 2 disabled; at most 1 disabled)"
    )
    disabled = run("tool.disable", key="5:1", tool="search")
    assert disabled.output == {
        "target": "default", "tool": "search", "before": "enabled", "after": "disabled", "changed": True,
        "disabled_tools": ["search"],
    }  # fmt: skip
    assert run("tool.disable", key="6:1", tool="search").output["changed"] is False  # already: no bound applies
    refusal = (
        "disabling tool 'calculator' would make 2 disabled tools on target 'default', over its max_disabled_tools "
        "of 1 (already disabled: search)"
    )
    assert run.refusal("tool.disable", tool="calculator") == refusal
    assert run.plan("tool.disable", tool="calculator").refused == refusal
    with pytest.raises(BlastRadiusExceeded, match=re.escape(refusal)):
        run("tool.disable", key="7:1", tool="calculator")
    enabled = run("tool.enable", key="5:1001", tool="search")
    assert (enabled.output["before"], enabled.output["after"], enabled.output["disabled_tools"]) == (
        "disabled", "enabled", [],
    )  # fmt: skip
    assert run.plan("tool.enable", tool="search").noop
    assert [path for path, _ in run.api.posts()] == ["/tools/search/disable"] * 2 + ["/tools/search/enable"]
    with pytest.raises(
        ActionError, match="no tool named 'browser' on target 'default' \\(tools: search, calculator\\)"
    ):
        run.plan("tool.disable", tool="browser")
    with pytest.raises(ValueError, match="tool"):
        registry.get("tool.disable").params.model_validate({"tool": "../graphs"})
    assert (registry.get("tool.disable").inverse, registry.get("tool.enable").inverse) == (
        "tool.enable",
        "tool.disable",
    )


# -- graph.canary ---------------------------------------------------------------------------------------


def test_canary_passes_when_enough_runs_succeed_within_the_latency_bound_else_fails_the_step() -> None:
    run = Runner()
    run.service.llm.switch_model("chat", GPT)
    plan = run.plan("graph.canary", graph="chat", runs=5, max_latency="5s")
    assert plan.sentence == (
        f"send 5 canary runs through graph chat on default ({GPT}, healthy now); pass when 5 succeed within 5 s"
    )
    assert not plan.noop and run.api.posts() == []  # a plan sends no runs
    passed = run("graph.canary", graph="chat", runs=5, max_latency="5s")
    assert passed.value == 5 and passed.output["model"] == GPT and passed.output["outcomes"] == ["ok"] * 5
    assert len(passed.output["latencies_seconds"]) == 5 and passed.output["slowest_seconds"] < 5
    # A canary measures now: no idempotency key, so a retried step sends new runs.
    assert [key for method, _, _, key in run.api.requests if method == "POST"] == [None]

    run.fault(model=GPT, ttft_seconds=8)  # every run succeeds, too slowly
    with pytest.raises(ActionError) as slow:
        run("graph.canary", graph="chat", runs=5, max_latency="5s")
    assert str(slow.value).startswith(
        f"canary on graph chat ({GPT}) on default: 0 of 5 runs succeeded within 5 s, 5 needed (5 succeeded; slowest "
    )
    assert not slow.value.retriable and slow.value.output["within_latency"] == 0
    assert run("graph.canary", graph="chat", runs=3, max_latency="30s").value == 3

    run.service.clear_faults()
    run.fault(model=GPT, llm_error="overloaded")  # failed runs answer fast: they still do not count
    with pytest.raises(ActionError, match="0 of 5 runs succeeded within 5 s, 4 needed \\(0 succeeded") as failing:
        run("graph.canary", graph="chat", runs=5, max_latency="5s", min_success=4, retriable=True)
    assert failing.value.retriable and failing.value.output["outcomes"] == ["overloaded"] * 5
    assert max(failing.value.output["latencies_seconds"]) < 1
    with pytest.raises(ActionError, match="0 of 1 runs succeeded within 300ms"):
        run("graph.canary", graph="chat", runs=1, max_latency="300ms")
    with pytest.raises(ValueError, match="min_success 6 is more than the 5 runs sent"):
        registry.get("graph.canary").params.model_validate({"graph": "chat", "runs": 5, "min_success": 6})
    with pytest.raises(ValueError, match="less than or equal to 20"):
        registry.get("graph.canary").params.model_validate({"graph": "chat", "runs": 21})


def test_a_canary_answer_without_outcomes_counts_no_more_successes_than_fast_runs() -> None:
    """The contract's answer pairs nothing: a run within the bound may be a fast failure."""
    answer = {"succeeded": 2, "latencies_seconds": [0.1, 0.2, 9.0, 9.0]}
    assert count_within(answer, 5.0) == 2
    assert count_within({**answer, "succeeded": 4}, 5.0) == 2
    paired = {**answer, "outcomes": ["overloaded", "ok", "ok", "ok"]}
    assert count_within(paired, 5.0) == 1 and count_within(paired, 10.0) == 3


def test_the_plan_of_a_canary_on_a_failing_model_says_so() -> None:
    run = Runner()
    run.fault(model=CLAUDE, llm_error="overloaded")
    assert "(anthropic/claude-sonnet-4, overloaded now)" in run.plan("graph.canary", graph="chat").sentence


# -- what every LLM action shares -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("llm.failover", {"graph": "chat"}),
        ("llm.limit", {"graph": "chat", "concurrency": 2}),
        ("tool.disable", {"tool": "search"}),
        ("tool.enable", {"tool": "search"}),
        ("graph.canary", {"graph": "chat"}),
    ],
)
def test_kubernetes_targets_are_refused_with_a_reason(name: str, params: dict[str, Any]) -> None:
    k8s = Target(name="prod", kind="kubernetes", namespace="agents", configmap="langgraph-config")
    run = Runner(k8s)
    message = f"{name} works on http targets only: target 'prod' is kubernetes"
    with pytest.raises(ActionError, match=message):
        run(name, target="prod", **params)
    with pytest.raises(ActionError, match=message):
        run.plan(name, target="prod", **params)
    assert run.api.requests == []


def test_an_unknown_graph_is_named_with_the_graphs_there_are() -> None:
    run = Runner()
    with pytest.raises(ActionError, match="no graph named 'nope' on target 'default' \\(graphs: chat, summarize\\)"):
        run.plan("llm.failover", graph="nope")
    assert run.refusal("llm.failover", graph="nope") is None  # cannot tell: the step runs and says why


def test_the_target_validates_its_llm_fields() -> None:
    with pytest.raises(ValueError, match="llm_models lists 'openai/gpt-4o' twice"):
        langgraph(llm_models=[GPT, CLAUDE, GPT])
    with pytest.raises(ValueError, match="`llm_models` is for http targets"):
        Target.model_validate({"name": "k", "kind": "kubernetes", "namespace": "a", "llm_models": [GPT]})
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        langgraph(min_llm_concurrency=0)
    target = langgraph()
    assert (target.min_llm_concurrency, target.min_token_budget, target.max_disabled_tools) == (1, 1000, 1)
