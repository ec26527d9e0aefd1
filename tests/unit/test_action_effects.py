"""Each built-in action says what it did in the operator's words, from its params and its recorded output.

The outputs below have the shape each action records (its ActionResult's output, with `value`);
the console and the API show these sentences for each step and join them into an execution's summary.
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.actions.builtin import build_registry

# action -> cases of (params, recorded output, what a person reads)
EFFECTS: dict[str, list[tuple[dict[str, Any], dict[str, Any], str]]] = {
    "graph.disable": [
        (
            {"target": "langgraph", "graph": "chat"},
            {"value": "chat", "target": "langgraph", "graph": "chat", "before": "enabled", "after": "disabled",
             "changed": True, "disabled_graphs": ["chat"]},
            "Disabled graph chat on langgraph",
        ),
        (
            {"target": "langgraph", "graph": "chat"},
            {"value": "chat", "target": "langgraph", "graph": "chat", "before": "disabled", "after": "disabled",
             "changed": False, "disabled_graphs": ["chat"]},
            "Graph chat was already disabled on langgraph; left as it was",
        ),
    ],
    "graph.enable": [
        (
            {"target": "langgraph", "graph": "chat"},
            {"value": "chat", "target": "langgraph", "graph": "chat", "before": "disabled", "after": "enabled",
             "changed": True, "disabled_graphs": []},
            "Enabled graph chat on langgraph",
        ),
    ],
    "llm.failover": [
        (
            {"target": "langgraph", "graph": "chat"},
            {"value": "openai/gpt-4o", "target": "langgraph", "graph": "chat", "model": "openai/gpt-4o",
             "previous": "anthropic/claude-sonnet-4", "changed": True, "healthy": ["openai/gpt-4o"]},
            "Moved graph chat on langgraph anthropic/claude-sonnet-4 → openai/gpt-4o",
        ),
        (
            {"target": "langgraph", "graph": "chat", "to": "openai/gpt-4o"},
            {"value": "openai/gpt-4o", "target": "langgraph", "graph": "chat", "model": "openai/gpt-4o",
             "previous": "openai/gpt-4o", "changed": False, "healthy": ["openai/gpt-4o"]},
            "Graph chat on langgraph was already on openai/gpt-4o; left as it was",
        ),
    ],
    "llm.limit": [
        (
            {"target": "langgraph", "graph": "chat", "concurrency": 2, "token_budget": 20000},
            {"value": {}, "target": "langgraph", "graph": "chat", "concurrency_limit": 2, "token_budget": 20000,
             "previous": {"concurrency_limit": 0, "token_budget": 50000}, "changed": True},
            "Set graph chat on langgraph to concurrency 2, token budget 20000 tokens/min "
            "(was concurrency no cap, token budget 50000 tokens/min)",
        ),
        (
            {"target": "langgraph", "graph": "chat", "concurrency": 2},
            {"value": {}, "target": "langgraph", "graph": "chat", "concurrency_limit": 2, "token_budget": 0,
             "previous": {"concurrency_limit": 2, "token_budget": 0}, "changed": False},
            "Graph chat on langgraph already had concurrency 2, token budget none; left as it was",
        ),
    ],
    "service.degrade": [
        (
            {"target": "langgraph", "level": "degraded", "features": ["external_api"]},
            {"value": "degraded", "target": "langgraph", "level": "degraded", "features": ["external_api"],
             "previous": {"level": "full", "features": []}, "changed": True},
            "Degraded langgraph to degraded (external_api off) (was full)",
        ),
        (
            {"target": "langgraph", "level": "minimal"},
            {"value": "minimal", "target": "langgraph", "level": "minimal", "features": [],
             "previous": {"level": "minimal", "features": []}, "changed": False},
            "langgraph was already minimal; left as it was",
        ),
    ],
    "service.restore": [
        (
            {"target": "langgraph"},
            {"value": "full", "target": "langgraph", "level": "full", "features": [],
             "previous": {"level": "minimal", "features": ["retrieval"]}, "changed": True},
            "Restored langgraph to full",
        ),
    ],
    "tool.disable": [
        (
            {"target": "langgraph", "tool": "search"},
            {"value": "search", "target": "langgraph", "tool": "search", "before": "enabled", "after": "disabled",
             "changed": True, "disabled_tools": ["search"]},
            "Disabled tool search on langgraph",
        ),
        (
            {"target": "langgraph", "tool": "search"},
            {"value": "search", "target": "langgraph", "tool": "search", "before": "disabled", "after": "disabled",
             "changed": False, "disabled_tools": ["search"]},
            "Tool search was already disabled on langgraph; left as it was",
        ),
    ],
    "tool.enable": [
        (
            {"target": "langgraph", "tool": "search"},
            {"value": "search", "target": "langgraph", "tool": "search", "before": "disabled", "after": "enabled",
             "changed": True, "disabled_tools": []},
            "Enabled tool search on langgraph",
        ),
    ],
    "graph.canary": [
        (
            {"target": "langgraph", "graph": "chat", "runs": 5, "max_latency": "10s"},
            {"value": 5, "target": "langgraph", "graph": "chat", "model": "openai/gpt-4o", "runs": 5, "succeeded": 5,
             "within_latency": 5, "min_success": 5, "max_latency_seconds": 10.0,
             "latencies_seconds": [0.2, 0.3, 0.2, 0.4, 0.3], "slowest_seconds": 0.4},
            "Canary on graph chat (openai/gpt-4o) on langgraph: 5 of 5 runs succeeded within 10 s",
        ),
    ],
    "storage.check": [
        (
            {"target": "langgraph"},
            {"value": "primary", "target": "langgraph", "active": "primary", "backends": {},
             "healthy": ["backup"], "unhealthy": ["primary"]},
            "Checked checkpoint storage on langgraph: primary active, unhealthy: primary",
        ),
    ],
    "storage.switch": [
        (
            {"target": "langgraph", "backend": "backup"},
            {"value": "backup", "target": "langgraph", "active": "backup", "previous": "primary", "changed": True},
            "Switched checkpoint storage on langgraph primary → backup",
        ),
        (
            {"target": "langgraph", "backend": "backup"},
            {"value": "backup", "target": "langgraph", "active": "backup", "previous": "backup", "changed": False},
            "Checkpoint storage on langgraph was already backup; left as it was",
        ),
    ],
    "storage.cleanup_corrupted": [
        (
            {"target": "langgraph"},
            {"value": 4, "target": "langgraph", "removed": 4, "by_backend": {"primary": 4}},
            "Removed 4 corrupted checkpoints from langgraph",
        ),
        (
            {"target": "langgraph", "backend": "primary"},
            {"value": 1, "target": "langgraph", "removed": 1, "by_backend": {"primary": 1}},
            "Removed 1 corrupted checkpoint from primary on langgraph",
        ),
    ],
    "k8s.scale": [
        (
            {"target": "prod", "factor": 2},
            {"value": 6, "namespace": "agents", "workload": "deployment/langgraph", "previous": 3, "replicas": 6,
             "requested": 6, "clamped": False, "changed": True, "bounds": [2, 20]},
            "Scaled agents/langgraph 3 → 6 replicas",
        ),
        (
            {"target": "prod", "factor": 10},
            {"value": 20, "namespace": "agents", "workload": "deployment/langgraph", "previous": 3, "replicas": 20,
             "requested": 30, "clamped": True, "changed": True, "bounds": [2, 20]},
            "Scaled agents/langgraph 3 → 20 replicas (asked for 30; the target's max_replicas 20)",
        ),
        (
            {"target": "prod", "replicas": 6},
            {"value": 6, "namespace": "agents", "workload": "deployment/langgraph", "previous": 6, "replicas": 6,
             "requested": 6, "clamped": False, "changed": False, "bounds": [2, 20]},
            "agents/langgraph already had 6 replicas; left as it was",
        ),
    ],
    "k8s.rollout_restart": [
        (
            {"target": "prod"},
            {"value": "2026-12-06T03:14:05+00:00", "namespace": "agents", "workload": "deployment/langgraph",
             "restarted_at": "2026-12-06T03:14:05+00:00", "already_restarted": False},
            "Restarted the pods of agents/langgraph",
        ),
    ],
    "k8s.patch_hpa": [
        (
            {"target": "prod", "max_replicas": 20},
            {"value": {}, "namespace": "agents", "hpa": "langgraph", "previous_min": 2, "previous_max": 10,
             "min_replicas": 2, "max_replicas": 20, "clamped": False, "bounds": [2, 20]},
            "Set autoscaler agents/langgraph to min 2, max 20 replicas (was min 2, max 10)",
        ),
    ],
    "failover.switch": [
        (
            {"service": "agents"},
            {"value": "backup", "service": "agents", "from": "primary", "to": "backup", "from_region": "eu-west",
             "to_region": "us-east", "changed": True},
            "Failed over agents from primary to backup (us-east)",
        ),
    ],
    "wait": [({"duration": "5m"}, {"value": "5m", "waited": "5m"}, "Waited 5 min")],
    "verify.resolved": [
        ({"within": "15m"}, {"value": True, "resolved_after_s": 185}, "Verified the incident resolved after 3 min"),
    ],
    "notify.log": [
        ({"text": "Disabled graph chat"}, {"value": "Disabled graph chat", "level": "info"},
         "Wrote to the service log: Disabled graph chat"),
    ],
    "incident.annotate": [
        ({"text": "Disabled graph chat:\nhighest error rate"}, {"value": "Disabled graph chat:\nhighest error rate"},
         "Noted on the timeline: Disabled graph chat: highest error rate"),
    ],
    "notify.slack": [
        (
            {"text": "hello", "channel": "#oncall"},
            {"value": True, "delivered": True, "via": "slack", "channel": "#oncall", "channel_id": "C1", "ts": "1.2",
             "root": True},
            "Posted to #oncall on Slack",
        ),
        (
            {"text": "hello"},
            {"value": True, "delivered": True, "via": "slack", "channel": "#oncall", "channel_id": "C1", "ts": "1.3",
             "thread_ts": "1.2"},
            "Posted in the incident's thread in #oncall on Slack",
        ),
        (
            {"text": "hello"},
            {"value": False, "delivered": False, "via": "slack",
             "error": "Slack is not configured: set CONTROLPLANE_SLACK_TOKEN or CONTROLPLANE_SLACK_TOKEN_FILE"},
            "Could not post to Slack: Slack is not configured: set CONTROLPLANE_SLACK_TOKEN or "
            "CONTROLPLANE_SLACK_TOKEN_FILE",
        ),
    ],
    "notify.pagerduty": [
        (
            {"severity": "critical"},
            {"value": True, "delivered": True, "via": "pagerduty", "event_action": "trigger",
             "dedup_key": "controlplane-incident-3", "status": "success"},
            "Triggered the incident's PagerDuty alert (critical)",
        ),
        (
            {"action": "resolve"},
            {"value": True, "delivered": True, "via": "pagerduty", "event_action": "resolve",
             "dedup_key": "controlplane-incident-3", "status": "success"},
            "Resolved the incident's PagerDuty alert",
        ),
    ],
    "notify.webhook": [
        (
            {"url": "https://hooks.example.com/T0/B0/secret"},
            {"value": True, "delivered": True, "via": "webhook", "host": "hooks.example.com", "status_code": 200},
            "Sent the webhook to hooks.example.com (HTTP 200)",
        ),
    ],
    "notify.oncall": [
        (
            {"text": "Disabled graph chat"},
            {"value": True, "delivered": True, "via": "pagerduty", "event_action": "trigger", "dedup_key": "k",
             "status": "success", "route": "pagerduty", "severity": "critical"},
            "Paged on-call via PagerDuty (critical)",
        ),
        (
            {"text": "Disabled graph chat"},
            {"value": True, "delivered": True, "via": "slack", "channel": "#oncall", "channel_id": "C1", "ts": "1.2",
             "route": "slack", "severity": "warning"},
            "Notified on-call in #oncall on Slack (warning)",
        ),
        (
            {"text": "Disabled graph chat"},
            {"value": True, "delivered": True, "via": "log", "level": "warning", "route": "log", "severity": "info"},
            "Paged nobody: the on-call message went to the service log only (severity info routes there)",
        ),
        (
            {"text": "Disabled graph chat"},
            {"value": False, "delivered": False, "via": "pagerduty", "error": "PagerDuty answered 500",
             "route": "pagerduty", "severity": "critical"},
            "Could not reach on-call via PagerDuty: PagerDuty answered 500",
        ),
    ],
    "notify.escalate": [
        (
            {"reason": "step 2 (graph.disable) failed"},
            {"value": True, "delivered": True, "via": "pagerduty", "event_action": "trigger", "dedup_key": "k",
             "status": "success", "route": "pagerduty", "severity": "critical"},
            "Escalated to on-call via PagerDuty (critical)",
        ),
    ],
    "alertmanager.silence": [
        (
            {"duration": "1h"},
            {"value": "5e1f", "silence_id": "5e1f", "matchers": {"namespace": "agents", "alertname": "X"},
             "ends_at": "2026-12-06T04:14:05+00:00", "duration": "1h"},
            "Silenced alertname=X, namespace=agents in Alertmanager for 1 h",
        ),
    ],
    "alertmanager.expire_silence": [
        ({"silence_id": "5e1f"}, {"value": "5e1f", "silence_id": "5e1f", "known": True},
         "Expired silence 5e1f in Alertmanager"),
    ],
    "http.request": [
        (
            {"url": "http://127.0.0.1:8000/admin/restart?token=s3cret", "method": "POST"},
            {"value": {"ok": True}, "status_code": 200, "body": {"ok": True}},
            "Sent POST to 127.0.0.1:8000: HTTP 200",
        ),
    ],
    "prometheus.query": [
        (
            {"query": "up", "reduce": "max"},
            {"value": 0.42312345, "query": "up", "reduce": "max"},
            "Queried Prometheus: max = 0.4231",
        ),
        (
            {"query": "up"},
            {"value": [], "query": "up", "samples": [{"labels": {}, "value": 1.0}, {"labels": {}, "value": 0.0}]},
            "Queried Prometheus: 2 series",
        ),
    ],
    "prometheus.top": [
        (
            {"query": "sum by (graph_name) (rate(x[5m]))", "label": "graph_name"},
            {"value": "chat", "query": "q", "label": "graph_name", "order": "desc", "top_value": 0.42,
             "ranking": [], "series": 3},
            "Found graph_name chat highest of 3 series (0.42)",
        ),
    ],
}  # fmt: skip


def test_every_built_in_action_describes_its_effect() -> None:
    """A new action without a description (or without a case here) would show as `Ran x.y`: caught here."""
    registry = build_registry()
    missing = [spec.name for spec in registry.specs() if spec.describe_effect is None]
    assert missing == []
    assert sorted(EFFECTS) == registry.names()


@pytest.mark.parametrize(
    ("name", "params", "output", "expected"),
    [(name, params, output, text) for name, cases in EFFECTS.items() for params, output, text in cases],
)
def test_effect_described(name: str, params: dict[str, Any], output: dict[str, Any], expected: str) -> None:
    spec = build_registry().get(name)
    assert spec.describe_effect is not None
    assert spec.describe_effect(spec.params.model_validate(params), output) == expected


def test_actions_that_change_nothing_outside_are_marked_so() -> None:
    """The summary of what the automation did leaves these out; each step still shows what it found."""
    registry = build_registry()
    assert {s.name for s in registry.specs() if s.reads_only} == {
        "incident.annotate",
        "prometheus.query",
        "prometheus.top",
        "storage.check",
        "verify.resolved",
        "wait",
    }
