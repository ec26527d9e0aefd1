"""Paging through the playbook engine on SQLite and PostgreSQL: Slack (real slack_sdk against a stand-in), PagerDuty
Events v2 (stand-in), webhooks, severity routing; and the rule that a failed notification never fails a remediation."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, update

from controlplane.actions.base import (
    ActionContext,
    ActionRegistry,
    AlertView,
    IncidentView,
)
from controlplane.actions.builtin import build_registry
from controlplane.config import Settings
from controlplane.db.tables import audit_t, executions_t, incidents_t, notification_threads_t, pages_t
from controlplane.notify_routing import route
from controlplane.playbooks.contexts import build_ports
from controlplane.playbooks.executor import Executor
from controlplane.resilience.circuit_breaker import CircuitBreakers
from controlplane.telemetry import Metrics
from tests.conftest import make_settings
from tests.helpers import LoopbackHTTP, sample_notification
from tests.integration.test_playbooks import Harness, engine_harness, rules
from tests.standins.pagerduty import ROUTING_KEY, PagerDutyStandIn
from tests.standins.slack import TOKEN, SlackStandIn

registry = build_registry()

PUBLIC_URL = "https://controlplane.example"


def context_of(h: Harness, execution_id: int, settings: Settings, key: str = "direct:1") -> ActionContext:
    """A step context for an existing execution, to call an action as the executor would."""
    with h.engine.connect() as conn:
        row = conn.execute(
            select(executions_t.c.context, executions_t.c.rule_name).where(executions_t.c.id == execution_id)
        ).one()
    incident, alert = row.context.get("incident"), row.context.get("alert")
    return ActionContext(
        execution_id=execution_id,
        step_index=99,
        idempotency_key=key,
        rule=row.rule_name,
        incident=IncidentView(**incident) if incident else None,
        alert=AlertView(**alert) if alert else None,
        ports=build_ports(settings, h.engine),
        now=h.clock,
        step_started_at=h.clock(),
    )


def audits(engine: Engine, action: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(d) for d in conn.execute(select(audit_t.c.detail).where(audit_t.c.action == action)).scalars()]


@pytest.fixture
def slack_api() -> Iterator[SlackStandIn]:
    standin = SlackStandIn()
    yield standin
    standin.close()


@dataclass
class WebhookSink:
    """A receiver that records what it is sent and answers `status`."""

    status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.received.append((dict(self.headers.items()), body))
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = LoopbackHTTP(Handler, "webhook-sink")
        self.url = f"{self.server.url}/hook/s3cr3t"


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.server.close()


@pytest.fixture
def paging_settings(database_url: str, slack_api: SlackStandIn, pagerduty_api: PagerDutyStandIn) -> Settings:
    return make_settings(
        database_url,
        slack_token=TOKEN,
        slack_api_url=slack_api.url,
        slack_channel="#oncall",
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=pagerduty_api.url,
        public_url=PUBLIC_URL,
        http_allowed_hosts=["127.0.0.1"],
    )


def one_step(action: str, with_: str, *, then: bool = True) -> str:
    """A playbook of one notify step, then (to prove the playbook went on) a test step."""
    steps = f"""
      - id: note
        action: {action}
        with: {with_}
"""
    if then:
        steps += """
      - action: test.do
        with: {text: "went on"}
"""
    return steps


def step_output(h: Harness, execution_id: int, index: int = 0) -> dict[str, Any]:
    return h.execution(execution_id).steps[index].output


# -- Slack ---------------------------------------------------------------------------------


def test_slack_posts_the_incident_then_replies_in_its_thread_and_updates_its_status(
    engine: Engine, paging_settings: Settings, slack_api: SlackStandIn
) -> None:
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules("""
      - action: notify.slack
        with: {text: "Disabling graph {{ alert.labels.graph_name }} <!channel>"}
      - action: notify.slack
        with: {text: "Graph disabled"}
""")
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
        assert detail.status == "succeeded"
        incident_id = detail.incident_id
        assert incident_id is not None

        [root, reply] = slack_api.messages
        assert root.channel == "C0ONCALL001" and root.thread_ts is None
        assert root.blocks is not None
        assert root.blocks[0]["text"]["text"] == "Error rate above 5% for support_bot"
        fields = [f["text"] for f in root.blocks[1]["fields"]]
        assert fields == [
            "*Severity*\ncritical",
            "*Status*\nopen",
            f"*Incident*\n<{PUBLIC_URL}/incidents/{incident_id}|#{incident_id}>",
            "*Runbook*\n<https://runbooks.example/langgraph-high-error-rate|open>",  # the alert's runbook_url
        ]
        # Alert data is escaped: a label cannot ping the channel.
        assert root.blocks[2]["text"]["text"] == "Disabling graph support_bot &lt;!channel&gt;"
        assert reply.thread_ts == root.ts and reply.text == "Graph disabled"
        assert slack_api.calls("chat.update") == []  # the status did not change
        with engine.connect() as conn:
            thread = conn.execute(select(notification_threads_t)).one()
        assert (thread.incident_id, thread.channel, thread.ts) == (incident_id, "#oncall", root.ts)
        outputs = [s.output for s in detail.steps]
        assert [o["delivered"] for o in outputs] == [True, True]
        assert outputs[1]["thread_ts"] == root.ts

        # The incident resolves; the next update replies in the thread and edits the root message.
        with engine.begin() as conn:
            conn.execute(update(incidents_t).where(incidents_t.c.id == incident_id).values(status="resolved"))
        spec = registry.get("notify.slack")
        result = spec.func(
            context_of(h, t.execution_id, paging_settings), spec.params.model_validate({"text": "All clear"})
        )
        assert result.value is True and result.output["shown_status"] == "resolved"
        assert [m.text for m in slack_api.replies("C0ONCALL001", root.ts)] == ["Graph disabled", "All clear"]
        edited = slack_api.message("C0ONCALL001", root.ts)
        assert edited.edits == 1 and edited.blocks is not None
        assert "*Status*\nresolved" in [f["text"] for f in edited.blocks[1]["fields"]]
        assert edited.blocks[2]["text"]["text"] == "Disabling graph support_bot &lt;!channel&gt;"  # summary kept
        assert "resolved" in edited.text

        # Same status again: a reply, no edit.
        spec.func(
            context_of(h, t.execution_id, paging_settings, "direct:2"),
            spec.params.model_validate({"text": "Still clear"}),
        )
        assert slack_api.message("C0ONCALL001", root.ts).edits == 1


def test_slack_rate_limit_is_retried_then_delivered(
    engine: Engine, paging_settings: Settings, slack_api: SlackStandIn
) -> None:
    slack_api.ratelimit_next(1, retry_after=1)
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules(one_step("notify.slack", "{text: hello}"))
        [t] = h.fire()
        h.run_all()
        assert step_output(h, t.execution_id)["delivered"] is True
    assert [r.status for r in slack_api.calls("chat.postMessage")] == [429, 200]


@pytest.mark.parametrize(
    ("token", "faults", "expected_calls", "error"),
    [
        ("xoxb-wrong", 0, 1, "invalid_auth"),  # a permanent error is not retried
        (TOKEN, 3, 3, "HTTP 500"),  # a server error is retried, three tries in all
    ],
)
def test_slack_failure_is_audited_and_never_fails_the_playbook(
    engine: Engine,
    database_url: str,
    slack_api: SlackStandIn,
    token: str,
    faults: int,
    expected_calls: int,
    error: str,
) -> None:
    slack_api.fail_next(faults)
    settings = make_settings(database_url, slack_token=token, slack_api_url=slack_api.url)
    with engine_harness(engine, settings) as h:
        h.rules = rules(one_step("notify.slack", "{text: hello}"))
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
    assert detail.status == "succeeded"
    assert h.calls == [("test.do", "went on")]
    step = detail.steps[0]
    assert step.status == "succeeded" and step.output["value"] is False
    assert step.output["delivered"] is False and error in step.output["error"]
    assert len(slack_api.calls("chat.postMessage")) == expected_calls
    [failed] = audits(engine, "notify.failed")
    assert failed["via"] == "slack" and error in failed["error"]


def test_missing_configuration_is_not_delivered_not_an_exception(engine: Engine, database_url: str) -> None:
    with engine_harness(engine, make_settings(database_url)) as h:
        h.rules = rules(
            one_step("notify.slack", "{text: hello}", then=False)
            + "\n      - action: notify.pagerduty\n        with: {}\n"
        )
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
    assert detail.status == "succeeded"
    slack_error, pagerduty_error = (s.output["error"] for s in detail.steps)
    assert slack_error == "Slack is not configured: set CONTROLPLANE_SLACK_TOKEN or CONTROLPLANE_SLACK_TOKEN_FILE"
    assert pagerduty_error == (
        "PagerDuty is not configured: set CONTROLPLANE_PAGERDUTY_ROUTING_KEY or CONTROLPLANE_PAGERDUTY_ROUTING_KEY_FILE"
    )
    assert [a["via"] for a in audits(engine, "notify.failed")] == ["slack", "pagerduty"]


def test_a_step_that_already_notified_does_not_post_again(
    engine: Engine, paging_settings: Settings, slack_api: SlackStandIn
) -> None:
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules(one_step("notify.log", "{text: x}", then=False))
        [t] = h.fire()
        h.run_all()
        spec = registry.get("notify.slack")
        ctx = context_of(h, t.execution_id, paging_settings, "resumed:3")
        first = spec.func(ctx, spec.params.model_validate({"text": "once"}))
        # The same step again (its worker died before recording it): the audit row says it was sent.
        again = spec.func(ctx, spec.params.model_validate({"text": "once"}))
    assert first.value is True and again.value is True and again.output["repeat"] is True
    assert again.output["ts"] == first.output["ts"]
    assert len(slack_api.calls("chat.postMessage")) == 1


# -- runbook links (controlplane/runbooks.py) ------------------------------------------------

SHIPPED_RUNBOOK = "${CONTROLPLANE_PUBLIC_URL}/runbooks/RUNBOOKS.md#langgraphhigherrorrate"
SERVED_RUNBOOK = f"{PUBLIC_URL}/runbooks/RUNBOOKS.md#langgraphhigherrorrate"


def page_both(h: Harness, runbook_url: str) -> None:
    h.rules = rules("""
      - action: notify.slack
        with: {text: hi}
      - action: notify.pagerduty
        with: {}
""")
    alert = {"annotations": {"runbook_url": runbook_url}, "fingerprint": "fp-runbook"}
    [t] = h.deliver(sample_notification(alert))
    h.run_all()
    assert h.execution(t.execution_id).status == "succeeded"


def runbook_links(slack_api: SlackStandIn, pagerduty_api: PagerDutyStandIn) -> tuple[list[str], list[str]]:
    """What the Slack message's Runbook field and the PagerDuty event's Runbook link say."""
    [root] = slack_api.messages
    assert root.blocks is not None
    fields = [f["text"] for f in root.blocks[1]["fields"] if f["text"].startswith("*Runbook*")]
    [trigger] = pagerduty_api.events
    return fields, [link["href"] for link in trigger.get("links", []) if link["text"] == "Runbook"]


@pytest.mark.parametrize(
    ("runbook_url", "in_slack", "in_pagerduty"),
    [
        (SHIPPED_RUNBOOK, SERVED_RUNBOOK, SERVED_RUNBOOK),  # the shipped rules, under the public URL
        ("alerting/RUNBOOKS.md#langgraphhigherrorrate", SERVED_RUNBOOK, SERVED_RUNBOOK),  # a path in the config dir
        # A team's own: as it is, made safe inside Slack's <url|text>.
        (
            "https://wiki.example/rb?q=a|b&x=<y>",
            "https://wiki.example/rb?q=a%7Cb&amp;x=%3Cy%3E",
            "https://wiki.example/rb?q=a|b&x=<y>",
        ),
        ("javascript:alert(1)", None, None),
        ("data:text/html,<script>alert(1)</script>", None, None),
        ("//evil.example/runbook", None, None),
    ],
)
def test_slack_and_pagerduty_link_the_runbook_only_when_it_opens(
    engine: Engine,
    paging_settings: Settings,
    slack_api: SlackStandIn,
    pagerduty_api: PagerDutyStandIn,
    runbook_url: str,
    in_slack: str | None,
    in_pagerduty: str | None,
) -> None:
    with engine_harness(engine, paging_settings) as h:
        page_both(h, runbook_url)
    fields, links = runbook_links(slack_api, pagerduty_api)
    assert fields == ([f"*Runbook*\n<{in_slack}|open>"] if in_slack else [])
    assert links == ([in_pagerduty] if in_pagerduty else [])


def test_without_a_public_url_only_absolute_runbooks_are_linked(
    engine: Engine, paging_settings: Settings, slack_api: SlackStandIn, pagerduty_api: PagerDutyStandIn
) -> None:
    # A path on the control plane opens nowhere from Slack: no link rather than a broken one.
    with engine_harness(engine, paging_settings.model_copy(update={"public_url": None})) as h:
        page_both(h, SHIPPED_RUNBOOK)
    assert runbook_links(slack_api, pagerduty_api) == ([], [])


# -- PagerDuty -----------------------------------------------------------------------------


def test_pagerduty_trigger_acknowledge_resolve_share_the_incident_dedup_key(
    engine: Engine, paging_settings: Settings, pagerduty_api: PagerDutyStandIn
) -> None:
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules("""
      - action: notify.pagerduty
        with: {summary: "Graph {{ alert.labels.graph_name }} failing"}
      - action: notify.pagerduty
        with: {action: acknowledge}
      - action: notify.pagerduty
        with: {action: resolve}
""")
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
    assert detail.status == "succeeded"
    key = f"controlplane-incident-{detail.incident_id}"
    trigger, ack, resolve = pagerduty_api.events
    assert [e["event_action"] for e in (trigger, ack, resolve)] == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in pagerduty_api.events} == {key}
    assert trigger["payload"]["summary"] == "Graph support_bot failing"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "langgraph-0:8000"
    assert trigger["payload"]["custom_details"]["incident_id"] == detail.incident_id
    assert trigger["links"] == [
        {
            "href": f"{PUBLIC_URL}/incidents/{detail.incident_id}",
            "text": f"Incident #{detail.incident_id} in controlplane",
        },
        {"href": "https://runbooks.example/langgraph-high-error-rate", "text": "Runbook"},
    ]
    assert "payload" not in ack and "payload" not in resolve
    assert pagerduty_api.alerts == {key: "resolved"}
    assert [s.output["dedup_key"] for s in detail.steps] == [key, key, key]


@pytest.mark.parametrize(
    ("routing_key", "faults", "statuses", "delivered"),
    [
        (ROUTING_KEY, 2, [503, 503, 202], True),  # 5xx retried, then accepted
        (ROUTING_KEY, 1, [429, 202], True),  # throttled, retried after Retry-After
        ("X" * 32, 0, [400], False),  # a 400 is never retried
    ],
)
def test_pagerduty_retries_5xx_and_429_not_400(
    engine: Engine,
    database_url: str,
    pagerduty_api: PagerDutyStandIn,
    routing_key: str,
    faults: int,
    statuses: list[int],
    delivered: bool,
) -> None:
    pagerduty_api.fail_next(faults, status=statuses[0])
    settings = make_settings(database_url, pagerduty_routing_key=routing_key, pagerduty_url=pagerduty_api.url)
    with engine_harness(engine, settings) as h:
        h.rules = rules(one_step("notify.pagerduty", "{}"))
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
    assert detail.status == "succeeded" and h.calls == [("test.do", "went on")]
    assert [r.status for r in pagerduty_api.requests] == statuses
    assert detail.steps[0].output["delivered"] is delivered
    if not delivered:
        assert "Invalid routing key" in detail.steps[0].output["error"]
        assert len(audits(engine, "notify.failed")) == 1


# -- webhook -------------------------------------------------------------------------------


def test_webhook_posts_the_rendered_body_only_to_allowed_hosts(
    engine: Engine, paging_settings: Settings, webhook_sink: WebhookSink
) -> None:
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules(f"""
      - action: notify.webhook
        with:
          url: "{webhook_sink.url}"
          body: {{graph: "{{{{ alert.labels.graph_name }}}}", severity: "{{{{ alert.labels.severity }}}}"}}
      - action: notify.webhook
        with: {{url: "{webhook_sink.url}", body: "plain {{{{ alert.labels.graph_name }}}}"}}
      - action: notify.webhook
        with: {{url: "http://elsewhere.example/hook", body: {{}}}}
""")
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
    assert detail.status == "succeeded"
    [(json_headers, json_body), (text_headers, text_body)] = webhook_sink.received
    assert json.loads(json_body) == {"graph": "support_bot", "severity": "critical"}
    assert json_headers["Idempotency-Key"] == f"{t.execution_id}:0"
    assert text_body == b"plain support_bot" and text_headers["Content-Type"].startswith("text/plain")
    outputs = [s.output for s in detail.steps]
    assert outputs[0] == {"value": True, "delivered": True, "via": "webhook", "host": "127.0.0.1", "status_code": 200}
    assert outputs[2]["delivered"] is False
    assert "'elsewhere.example' is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS" in outputs[2]["error"]
    assert "s3cr3t" not in json.dumps(audits(engine, "notify.sent"))  # the URL's secret is not recorded


def test_webhook_error_status_is_retried_then_reported(
    engine: Engine, paging_settings: Settings, webhook_sink: WebhookSink
) -> None:
    webhook_sink.status = 502
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules(one_step("notify.webhook", f'{{url: "{webhook_sink.url}"}}'))
        [t] = h.fire()
        h.run_all()
        output = step_output(h, t.execution_id)
    assert len(webhook_sink.received) == 3
    assert output["delivered"] is False and "answered 502" in output["error"]


# -- on-call routing -----------------------------------------------------------------------


def test_route_by_severity() -> None:
    routes = {"critical": "pagerduty", "warning": "slack", "*": "log"}
    assert route("critical", routes) == "pagerduty"
    assert route(" Critical ", routes) == "pagerduty"
    assert route("warning", routes) == "slack"
    assert route("info", routes) == "log"
    assert route("none", {"critical": "pagerduty"}) == "log"  # no `*`: the log
    assert route("info", {"*": "slack"}) == "slack"


def test_oncall_routes_critical_to_pagerduty_warning_to_slack_else_the_log(
    engine: Engine, paging_settings: Settings, slack_api: SlackStandIn, pagerduty_api: PagerDutyStandIn
) -> None:
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules(
            one_step("notify.oncall", '{text: "{{ alert.labels.severity }} on {{ alert.labels.namespace }}"}')
        )
        fired = {
            severity: h.fire({"severity": severity, "namespace": f"ns-{severity}"})[0]
            for severity in ("critical", "warning", "info")
        }
        h.run_all()
        outputs = {severity: step_output(h, t.execution_id) for severity, t in fired.items()}
    assert {s: (o["route"], o["delivered"]) for s, o in outputs.items()} == {
        "critical": ("pagerduty", True),
        "warning": ("slack", True),
        "info": ("log", True),
    }
    [event] = pagerduty_api.events
    assert event["payload"]["summary"] == "critical on ns-critical" and event["payload"]["severity"] == "critical"
    [message] = slack_api.messages
    assert message.blocks is not None and message.blocks[2]["text"]["text"] == "warning on ns-warning"
    assert [a["via"] for a in audits(engine, "notify.sent")] == ["pagerduty", "slack", "log"]


def test_escalation_pages_oncall_by_severity(
    engine: Engine, paging_settings: Settings, pagerduty_api: PagerDutyStandIn
) -> None:
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules("""
      - action: test.do
        with: {text: a, fail_times: 1, retriable: false}
        on_failure: escalate
""")
        [t] = h.fire()
        h.run_all()
        timeline = [e.action for e in h.execution(t.execution_id).timeline]
    assert "execution.escalated" in timeline and "notify.sent" in timeline
    [event] = pagerduty_api.events  # the executor paged once, routed by the incident's severity (critical)
    assert event["payload"]["summary"].startswith(
        f"Remediation escalated to a human: rule fix-errors, execution #{t.execution_id}: step 1 (test.do) failed"
    )


def test_a_page_whose_sender_died_before_marking_it_is_sent_once(
    engine: Engine, paging_settings: Settings, pagerduty_api: PagerDutyStandIn
) -> None:
    """The page is queued with the execution's end and sent after the commit; a sender that dies between
    the send and marking it leaves the page to another once its claim runs out, and that one finds the
    first send by its idempotency key instead of paging twice."""
    with engine_harness(engine, paging_settings) as h:
        h.rules = rules("""
      - action: test.do
        with: {text: a, fail_times: 1, retriable: false}
        on_failure: escalate
""")
        [t] = h.fire()
        h.run_all()
        assert len(pagerduty_api.events) == 1
        # What a sender that died after the send leaves: the page claimed, never marked sent.
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(update(pages_t).values(sent_at=None, outcome=None, claimed_until=h.clock()))
        h.clock.advance(61)
        assert h.pager.run_once() == 1
        with engine.connect() as conn:
            [page] = conn.execute(select(pages_t)).mappings().all()
    assert page["outcome"] == "pagerduty" and page["attempts"] == 2 and page["sent_at"] is not None
    assert len(pagerduty_api.events) == 1
    assert [a["idempotency_key"] for a in audits(engine, "notify.sent")] == [f"{t.execution_id}:page:execution_failed"]


def test_an_executor_needs_the_escalation_action(engine: Engine, database_url: str) -> None:
    """Escalation pages through the action registry: a registry without `notify.escalate` is refused up front,
    not found missing when a playbook gives up."""
    without = ActionRegistry()
    for spec in build_registry().specs():
        if spec.name != "notify.escalate":
            without.register(spec)
    with pytest.raises(ValueError, match=r"notify\.escalate"):
        Executor(
            engine=engine,
            registry=without,
            settings=make_settings(database_url),
            breakers=CircuitBreakers(),
            metrics=Metrics(CollectorRegistry()),
        )
