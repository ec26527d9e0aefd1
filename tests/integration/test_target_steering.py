"""Alert labels cannot steer a step's target, its request path, or the set of circuit breakers.

Labels are untrusted: whatever a template renders from them, a graph name cannot change the
request path, a header cannot smuggle a second header, a bad rendered request fails its own
step without counting against the target's circuit, and a host outside the allow-list (or a
target no rule file defines) is refused before a breaker or a metric series exists for it.
Through the running service (webhook -> worker -> actions) against loopback stand-ins
(tests/standins/http_target.py); the database does not matter here, so SQLite only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine, select

from controlplane.actions.base import ActionError
from controlplane.actions.builtin import build_registry
from controlplane.actions.http import HttpRequestParams
from controlplane.app import create_app
from controlplane.config import Settings
from controlplane.db.engine import make_engine
from controlplane.db.tables import executions_t, steps_t
from tests.conftest import WEBHOOK, make_settings
from tests.helpers import action_context, wait_for
from tests.integration.serverproc import AUTH, alert_named
from tests.standins.http_target import HttpTarget

registry = build_registry()
FAILURE_THRESHOLD = 5  # CircuitBreakers' default


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    server = HttpTarget()
    yield server
    server.close()


@pytest.fixture
def other() -> Iterator[HttpTarget]:
    server = HttpTarget()
    yield server
    server.close()


class Service:
    """The running service with one rule, `steer`, matching alertname Steer; alerts carry the given labels."""

    def __init__(self, client: TestClient, engine: Engine) -> None:
        self.client, self.engine = client, engine
        self.sent = 0

    @property
    def breakers(self) -> dict[str, dict[str, Any]]:
        return {b["name"]: dict(b) for b in self.client.app.state.services.breakers.snapshot()}  # type: ignore[attr-defined]

    def metric_series(self) -> list[str]:
        text = self.client.get("/metrics").text
        return [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]

    def fire(self, **labels: str) -> list[Any]:
        """Send one alert and wait until its execution ends; its steps, in order."""
        payload = alert_named("Steer", self.sent, **labels)
        self.sent += 1
        assert self.client.post(WEBHOOK, json=payload).status_code == 200
        fingerprint = payload["alerts"][0]["fingerprint"]
        done = wait_for(f"the execution of {fingerprint} ends", lambda: self._ended(fingerprint), 30)
        with self.engine.connect() as conn:
            return conn.execute(select(steps_t).where(steps_t.c.execution_id == done).order_by(steps_t.c.index)).all()

    def _ended(self, fingerprint: str) -> int | None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(executions_t.c.id, executions_t.c.status, executions_t.c.context)).all()
        for row in rows:
            if (row.context.get("alert") or {}).get("fingerprint") == fingerprint and row.status in (
                "succeeded",
                "failed",
                "rolled_back",
            ):
                return int(row.id)
        return None


@contextmanager
def service(tmp_path: Path, steps: str, targets: str = "", **settings: Any) -> Iterator[Service]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(f"""
rules:
  - {{name: steer, match: {{alertname: Steer}}, group_by: [alertname, index], playbook: steer}}
{targets}
playbooks:
  - name: steer
    steps:
{steps}
""")
    values = make_settings(f"sqlite:///{tmp_path}/cp.db", rules_dir=rules, worker_poll_seconds=0.05, **settings)
    engine = make_engine(values.database_url)
    try:
        with TestClient(create_app(values), headers=AUTH) as client:
            yield Service(client, engine)
    finally:
        engine.dispose()


# -- request paths and object names ------------------------------------------------------------


@pytest.mark.parametrize("graph", [".", "..", "..."])
def test_a_graph_name_that_would_change_the_request_path_fails_the_step_without_a_request(
    tmp_path: Path, target: HttpTarget, graph: str
) -> None:
    targets = f"targets:\n  - {{name: app, kind: http, url: '{target.url}/admin', max_disabled_graphs: 5}}"
    steps = '      - {action: graph.disable, with: {target: app, graph: "{{ alert.labels.graph_name }}"}}'
    with service(tmp_path, steps, targets) as svc:
        [step] = svc.fire(graph_name=graph)
    assert step.status == "failed"
    assert step.error.startswith("invalid inputs for graph.disable: graph: ")
    assert "request path" in step.error
    assert target.received() == []


@pytest.mark.parametrize(
    ("action", "field", "value"),
    [
        ("graph.enable", "graph", ".."),
        ("alertmanager.expire_silence", "silence_id", "../silences"),
        ("alertmanager.expire_silence", "silence_id", "a/b"),
        ("alertmanager.expire_silence", "silence_id", ".."),
        ("failover.switch", "service", ".."),
        ("tool.disable", "tool", ".."),
        ("tool.enable", "tool", "search/../../graphs"),
        ("graph.canary", "graph", "chat/disable"),
        ("llm.limit", "graph", "."),
    ],
)
def test_inputs_that_go_into_a_url_path_are_refused_by_their_action(action: str, field: str, value: str) -> None:
    spec = registry.get(action)
    with pytest.raises(ValidationError) as refused:
        spec.params.model_validate({field: value})
    assert [e["loc"] for e in refused.value.errors()] == [(field,)]


# -- requests that cannot be sent ----------------------------------------------------------------


def test_a_header_with_a_line_break_fails_its_step_at_once_and_never_counts_against_the_target(
    tmp_path: Path, target: HttpTarget
) -> None:
    steps = f"""
      - action: http.request
        with: {{url: "{target.url}/restart", headers: {{X-Trace: "{{{{ alert.labels.trace }}}}"}}}}
        retry: {{attempts: 3, initial: 0s, max: 0s, jitter: 0s}}"""
    with service(tmp_path, steps, http_allowed_hosts=["127.0.0.1"]) as svc:
        for _ in range(FAILURE_THRESHOLD + 1):
            [step] = svc.fire(trace="abc\r\nX-Injected: yes")
            assert step.status == "failed"
            assert step.error.startswith("invalid inputs for http.request: headers.X-Trace: "), step.error
            assert step.attempts <= 1  # not retried: it would fail the same way
        for trace in ("\n", "abc\rdef"):
            [step] = svc.fire(trace=trace)
            assert step.status == "failed" and "headers.X-Trace" in step.error
        assert target.received() == []
        assert svc.breakers.get("http.request:127.0.0.1", {}).get("failed", 0) == 0
        [good] = svc.fire(trace="abc")
    assert good.status == "succeeded", good.error  # the target's circuit is closed
    [call] = target.received()
    assert call.headers["X-Trace"] == "abc" and "X-Injected" not in call.headers


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:{port}/x\r\ny", "non-printable"),
        ("http://127.0.0.1:{port}x/", "port"),
        ("http://127.0.0.1:99999/x", "port"),
        ("http://127.0.0.1:-1/x", "port"),
        ("ftp://127.0.0.1:{port}/x", "http or https"),
        ("http:///x", "no host"),
    ],
)
def test_a_malformed_url_fails_its_step_naming_the_url(tmp_path: Path, target: HttpTarget, url: str, why: str) -> None:
    steps = """
      - {action: http.request, with: {url: "{{ alert.labels.url }}"}, on_failure: continue}
      - {action: notify.webhook, with: {url: "{{ alert.labels.url }}"}}"""
    with service(tmp_path, steps, http_allowed_hosts=["127.0.0.1"]) as svc:
        [step, notified] = svc.fire(url=url.format(port=target.port))
        breakers = svc.breakers
    assert step.status == "failed"
    assert step.error.startswith("invalid inputs for http.request: url: ") and why in step.error, step.error
    # A notification never fails the playbook: not delivered, saying why.
    assert notified.status == "succeeded" and notified.output["delivered"] is False
    assert notified.output["error"].startswith("url: ") and why in notified.output["error"]
    assert all(b["failed"] == 0 for b in breakers.values())
    assert target.received() == []


@pytest.mark.parametrize(
    ("headers", "loc"),
    [
        ({"X-Trace": "a\x00b"}, ("headers", "X-Trace")),
        ({"X-Trace": "a\nb"}, ("headers", "X-Trace")),
        ({"X Trace": "a"}, ("headers", "X Trace", "[key]")),
        ({"X-Trace:": "a"}, ("headers", "X-Trace:", "[key]")),
    ],
)
def test_header_names_and_values_that_would_break_the_request_are_refused(
    headers: dict[str, str], loc: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as refused:
        HttpRequestParams.model_validate({"url": "http://127.0.0.1/x", "headers": headers})
    assert [e["loc"] for e in refused.value.errors()] == [loc]


def test_httpx_refusing_to_send_is_a_non_retriable_step_error(target: HttpTarget) -> None:
    """Past validation (a params model built without it), httpx's own refusal is not a target failure."""
    spec = registry.get("http.request")
    ctx = action_context(Settings(http_allowed_hosts=["127.0.0.1"]), make_engine("sqlite://"))
    params = HttpRequestParams.model_construct(
        url=f"{target.url}/x", method="GET", json_body=None, headers={"X-Trace": "a\r\nb: c"}, timeout=5.0,
        expect_status=[200],
    )  # fmt: skip
    with pytest.raises(ActionError) as failed:
        spec.func(ctx, params)
    assert not failed.value.retriable
    assert target.received() == []


# -- hosts and targets outside what the configuration defines ------------------------------------

UNLISTED_STEPS = """
      - action: notify.webhook
        with: {url: "http://{{ alert.labels.host }}/hook"}
      - action: http.request
        with: {url: "http://{{ alert.labels.host }}/restart"}
        on_failure: continue
      - action: graph.disable
        with: {target: "{{ alert.labels.host }}", graph: a}
        on_failure: continue
      - action: storage.check
        with: {target: "{{ alert.labels.host }}"}
        on_failure: continue
      - action: k8s.scale
        with: {target: "{{ alert.labels.host }}", replicas: 1}
        on_failure: continue"""


def test_hosts_and_targets_named_by_labels_create_no_breaker_and_no_metric_series(tmp_path: Path) -> None:
    with service(tmp_path, UNLISTED_STEPS, http_allowed_hosts=["127.0.0.1"]) as svc:
        first = svc.fire(host="warm-up.invalid")  # the actions' own series (step durations, ...) exist now
        assert [s.status for s in first] == ["succeeded", "failed", "failed", "failed", "failed"]
        breakers, series = svc.breakers, svc.metric_series()
        for i in range(20):
            steps = svc.fire(host=f"h{i}.invalid")
            assert steps[0].output == {
                "value": False,
                "delivered": False,
                "via": "webhook",
                "error": f"host 'h{i}.invalid' is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS",
            }
            assert "not in CONTROLPLANE_HTTP_ALLOWED_HOSTS" in steps[1].error
            assert all(f"unknown target 'h{i}.invalid'" in s.error for s in steps[2:])
        assert svc.breakers == breakers
        assert svc.metric_series() == series
        assert "invalid" not in "".join(series) and not any("invalid" in name for name in breakers)


# -- the allow-list: hosts, or host:port ---------------------------------------------------------


def test_an_allow_list_entry_with_a_port_allows_that_port_only(
    tmp_path: Path, target: HttpTarget, other: HttpTarget
) -> None:
    steps = """
      - action: http.request
        with: {url: "{{ alert.labels.url }}/restart"}
      - action: notify.webhook
        with: {url: "{{ alert.labels.url }}/hook"}"""
    with service(tmp_path, steps, http_allowed_hosts=[f"127.0.0.1:{target.port}", "localhost"]) as svc:
        allowed = svc.fire(url=target.url)
        refused = svc.fire(url=other.url)
        any_port = svc.fire(url=f"http://localhost:{other.port}")
        breakers = svc.breakers
    assert [s.status for s in allowed] == ["succeeded", "succeeded"] and allowed[1].output["delivered"] is True
    assert [a.path for a in target.received()] == ["/restart", "/hook"]
    assert refused[0].status == "failed"
    assert f"'127.0.0.1:{other.port}' is not in CONTROLPLANE_HTTP_ALLOWED_HOSTS" in refused[0].error
    assert any_port[0].status == "succeeded" and any_port[1].output["delivered"] is True
    assert [a.path for a in other.received()] == ["/restart", "/hook"]  # both from the `localhost` entry
    assert {f"http.request:127.0.0.1:{target.port}", "http.request:localhost"} <= set(breakers)


@pytest.mark.parametrize("entry", ["host:port", "host:99999", "http://host", "host/path", ":80"])
def test_a_malformed_allow_list_entry_stops_start_up(entry: str) -> None:
    with pytest.raises(ValidationError, match="http_allowed_hosts"):
        Settings(http_allowed_hosts=["ok.example", entry])
