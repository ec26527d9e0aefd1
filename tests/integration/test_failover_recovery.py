"""Recovery attempts (issue 18 item 5, seed 003) on SQLite and PostgreSQL: a failed endpoint's recovery action is
tried up to 3 times with growing waits, each audited; healthy again stops them; after the last, on-call is paged."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, select

from controlplane.actions.builtin import build_registry
from controlplane.db.tables import audit_t
from controlplane.failover.checker import HealthChecker
from controlplane.failover.manager import FailoverManager
from controlplane.failover.recovery import RecoveryAttempts
from controlplane.playbooks.contexts import ActionContexts, build_ports
from controlplane.rules.loader import RuleLoadError, load_rules
from controlplane.rules.schema import Endpoint, FailoverGroup, Recovery, Target
from tests.conftest import make_settings
from tests.helpers import Clock, console_app, wait_for
from tests.standins.http_target import HttpTarget
from tests.standins.kubernetes import KubernetesStandIn
from tests.standins.pagerduty import PagerDutyStandIn


@pytest.fixture
def admin_api() -> Iterator[HttpTarget]:
    """Stands in for the sample service's admin API, which restarts it on POST /admin/restart."""
    target = HttpTarget()
    yield target
    target.close()


def agents(admin_url: str, **recovery: Any) -> FailoverGroup:
    return FailoverGroup(
        service="agents",
        endpoints=[
            Endpoint(name="primary", url="http://primary:8000", region="eu-west"),
            Endpoint(name="backup", url="http://backup:8000", region="us-east", priority=1),
        ],
        failure_threshold=2,
        recovery=Recovery.model_validate(
            {"action": "http.request", "with": {"url": f"{admin_url}/admin/restart", "method": "POST"}, **recovery}
        ),
    )


class Rig:
    """Recovery attempts with the service's real registry and ports (PagerDuty at the stand-in); waits are recorded."""

    def __init__(
        self,
        database_url: str,
        engine: Engine,
        pagerduty: PagerDutyStandIn,
        healthy: list[bool],
        sleep: Callable[[float], object] | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        targets: dict[str, Target] | None = None,
        **overrides: Any,
    ) -> None:
        settings = make_settings(
            database_url,
            **overrides,
            http_allowed_hosts=["127.0.0.1"],
            pagerduty_routing_key=pagerduty.routing_key,
            pagerduty_url=pagerduty.url,
        )
        self.engine = engine
        self.clock = Clock()
        self.waits: list[float] = []
        self.checks: list[str] = []
        self._healthy = iter(healthy)
        rules = SimpleNamespace(targets=targets or {}, failover={})  # what the RuleSet in force gives actions
        contexts = ActionContexts(ports=build_ports(settings, engine), clock=self.clock, rules=lambda: rules)
        self.recovery = RecoveryAttempts(
            build_registry(), contexts, self._check, sleep=sleep or self.waits.append, is_leader=is_leader
        )

    def _check(self, group: FailoverGroup, endpoint: str) -> tuple[bool, str | None]:
        self.checks.append(endpoint)
        ok = next(self._healthy)
        return ok, None if ok else "GET http://primary:8000/health: ConnectError"

    def audited(self) -> list[tuple[str, dict[str, Any]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit_t.c.action, audit_t.c.detail).order_by(audit_t.c.id))
            return [(a, d) for a, d in rows if a.startswith("failover.recovery")]


def test_recovery_attempts_stop_after_three_and_page(
    database_url: str, engine: Engine, admin_api: HttpTarget, pagerduty_api: PagerDutyStandIn
) -> None:
    rig = Rig(database_url, engine, pagerduty_api, healthy=[False, False, False])
    outcome = rig.recovery.run(agents(admin_api.url), "primary")

    assert (outcome.result, outcome.attempts, outcome.paged) == ("gave_up", 3, True)
    restarts = admin_api.received()
    assert [(r.method, r.path) for r in restarts] == [("POST", "/admin/restart")] * 3
    assert len({r.headers["Idempotency-Key"] for r in restarts}) == 3  # each attempt is a call of its own
    assert rig.waits == [10.0, 20.0, 40.0]  # the seed's growing waits, the defaults
    assert rig.checks == ["primary"] * 3

    audited = rig.audited()
    assert [a for a, _ in audited] == ["failover.recovery_attempt"] * 3 + ["failover.recovery_gave_up"]
    assert [d["attempt"] for _, d in audited[:3]] == [1, 2, 3]
    assert all(d["ok"] and d["action"] == "http.request" for _, d in audited[:3])
    gave_up = audited[3][1]
    assert (gave_up["service"], gave_up["endpoint"], gave_up["paged"], gave_up["route"]) == (
        "agents",
        "primary",
        True,
        "pagerduty",
    )
    [page] = pagerduty_api.events
    assert page["event_action"] == "trigger"
    summary = page["payload"]["summary"]
    assert "primary of service agents is still failing after 3 recovery attempts" in summary
    assert "ConnectError" in summary


def test_a_successful_attempt_stops_the_attempts_and_pages_nobody(
    database_url: str, engine: Engine, admin_api: HttpTarget, pagerduty_api: PagerDutyStandIn
) -> None:
    rig = Rig(database_url, engine, pagerduty_api, healthy=[False, True])
    outcome = rig.recovery.run(agents(admin_api.url), "primary")

    assert (outcome.result, outcome.attempts, outcome.paged) == ("recovered", 2, False)
    assert len(admin_api.received()) == 2
    assert rig.waits == [10.0, 20.0]
    assert [a for a, _ in rig.audited()] == [
        "failover.recovery_attempt",
        "failover.recovery_attempt",
        "failover.recovery_succeeded",
    ]
    assert pagerduty_api.events == []


def test_a_replica_that_stops_leading_attempts_no_more_and_pages(
    database_url: str, engine: Engine, admin_api: HttpTarget, pagerduty_api: PagerDutyStandIn
) -> None:
    leading = iter([True, False])
    rig = Rig(database_url, engine, pagerduty_api, healthy=[False], is_leader=lambda: next(leading))
    outcome = rig.recovery.run(agents(admin_api.url), "primary")

    assert (outcome.result, outcome.attempts, outcome.paged) == ("gave_up", 1, True)
    assert len(admin_api.received()) == 1
    assert [a for a, _ in rig.audited()] == ["failover.recovery_attempt", "failover.recovery_gave_up"]
    [page] = pagerduty_api.events
    assert "after 1 recovery attempts" in page["payload"]["summary"]
    assert "no longer the leader" in page["payload"]["summary"]


def test_k8s_rollout_restart_as_the_recovery_restarts_the_target_once_per_attempt(
    database_url: str, engine: Engine, pagerduty_api: PagerDutyStandIn, tmp_path: Path
) -> None:
    k8s = KubernetesStandIn().start()
    try:
        k8s.add_workload("agents", "langgraph-api", replicas=3)
        token = tmp_path / "token"
        token.write_text(k8s.token)
        prod = Target(name="prod", kind="kubernetes", namespace="agents", deployment="langgraph-api")
        rig = Rig(
            database_url,
            engine,
            pagerduty_api,
            healthy=[False, False, False],
            targets={"prod": prod},
            kube_api_url=k8s.url,
            kube_token_file=token,
        )
        group = agents("http://unused").model_copy(
            update={"recovery": Recovery.model_validate({"action": "k8s.rollout_restart", "with": {"target": "prod"}})}
        )
        outcome = rig.recovery.run(group, "primary")
        assert (outcome.result, outcome.attempts, outcome.paged) == ("gave_up", 3, True)
        assert [w.method for w in k8s.writes()] == ["PATCH"] * 3  # each attempt rolls the pods: its own key
        assert all(d["ok"] for a, d in rig.audited() if a == "failover.recovery_attempt")
    finally:
        k8s.stop()


def test_a_failing_action_still_counts_and_waits_are_configurable(
    database_url: str, engine: Engine, pagerduty_api: PagerDutyStandIn
) -> None:
    rig = Rig(database_url, engine, pagerduty_api, healthy=[False, False])
    group = agents("http://127.0.0.1:1", attempts=2, waits=["50ms"])  # nothing listens on port 1
    outcome = rig.recovery.run(group, "primary")

    assert (outcome.result, outcome.attempts) == ("gave_up", 2)
    assert rig.waits == [0.05, 0.05]  # the last wait repeats
    attempts = [d for a, d in rig.audited() if a == "failover.recovery_attempt"]
    assert [d["ok"] for d in attempts] == [False, False]
    assert all("127.0.0.1:1" in d["error"] for d in attempts)


def test_the_checker_starts_recovery_when_it_marks_an_endpoint_failed(
    database_url: str, engine: Engine, admin_api: HttpTarget, pagerduty_api: PagerDutyStandIn
) -> None:
    rig = Rig(database_url, engine, pagerduty_api, healthy=[True])
    group = agents(admin_api.url)
    groups = lambda: {"agents": group}  # noqa: E731
    manager = FailoverManager(engine, groups=groups, clock=rig.clock)
    started: list[tuple[str, str]] = []

    def on_failed(g: FailoverGroup, endpoint: str) -> None:
        started.append((g.service, endpoint))
        rig.recovery.run(g, endpoint)

    down = {"http://primary:8000/health"}
    checker = HealthChecker(
        groups, manager, http_get=lambda url, _t: 503 if url in down else 200, clock=rig.clock, on_failed=on_failed
    )
    checker.check_now()
    assert started == []
    checker.check_now()  # the second failed check in a row: marked failed, failed over, recovery begins
    assert started == [("agents", "primary")]
    assert manager.active("agents").endpoint == "backup"
    assert len(admin_api.received()) == 1 and pagerduty_api.events == []
    checker.check_now()  # still failed: no new recovery (it is started once, when the endpoint is marked failed)
    assert started == [("agents", "primary")]


def test_start_runs_one_set_of_attempts_per_endpoint(
    database_url: str, engine: Engine, admin_api: HttpTarget, pagerduty_api: PagerDutyStandIn
) -> None:
    released = threading.Event()
    rig = Rig(database_url, engine, pagerduty_api, healthy=[True, True], sleep=lambda _s: released.wait(10))
    group = agents(admin_api.url)
    assert rig.recovery.start(group, "primary") is True
    assert rig.recovery.start(group, "primary") is False  # its attempts are under way
    assert rig.recovery.start(group.model_copy(update={"recovery": None}), "backup") is False  # none configured
    released.set()
    deadline = time.monotonic() + 10
    while not rig.recovery.start(group, "primary"):  # free again once the first set ended
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("recovery", "message"),
    [
        ("{action: k8s.rollout_restrat}", "recovery.action: unknown action 'k8s.rollout_restrat'"),
        ("{action: http.request, with: {url: 'http://x', methd: POST}}", "recovery.with.methd: action http.request"),
        ("{action: http.request, with: {url: 'http://x'}, attempts: 0}", "recovery.attempts"),
    ],
)
def test_a_recovery_the_registry_cannot_run_is_refused_at_load(tmp_path: Path, recovery: str, message: str) -> None:
    (tmp_path / "a.yaml").write_text(
        "failover:\n  - service: agents\n    endpoints: [{name: primary, url: 'http://p'}]\n"
        f"    recovery: {recovery}\n"
    )
    with pytest.raises(RuleLoadError) as info:
        load_rules(tmp_path, build_registry())
    assert message in str(info.value)


def test_through_the_service_silent_heartbeats_fail_over_then_recovery_gives_up_and_pages(
    database_url: str, tmp_path: Path, admin_api: HttpTarget, pagerduty_api: PagerDutyStandIn
) -> None:
    rules = f"""
failover:
  - service: agents
    interval: 1h                     # the test checks (check_now); the schedule only checks at start
    failure_threshold: 2
    heartbeat_timeout: 300ms
    endpoints:
      - {{name: primary, url: "http://127.0.0.1:1", checks: heartbeat}}
      - {{name: backup, url: "{admin_api.url}", priority: 1}}
    recovery:
      action: http.request
      with: {{url: "{admin_api.url}/admin/restart", method: POST}}
      attempts: 2
      waits: [50ms]
"""
    settings = dict(
        heartbeat_token="test-heartbeat-token-0123456789",
        http_allowed_hosts=["127.0.0.1"],
        pagerduty_routing_key=pagerduty_api.routing_key,
        pagerduty_url=pagerduty_api.url,
    )
    with console_app(database_url, rules, tmp_path, users=[], **settings) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        wait_for("leadership", lambda: services.elector.is_leader, 10)
        beat = {"service": "agents", "endpoint": "primary", "instance": "pod-1"}
        sender = {"Authorization": "Bearer test-heartbeat-token-0123456789"}
        assert client.post("/api/v1/endpoints/heartbeat", json=beat, headers=sender).status_code == 200
        services.health_checker.check_now()
        assert services.failover.active("agents").endpoint == "primary"

        time.sleep(0.4)  # the heartbeats stop: older than heartbeat_timeout
        services.health_checker.check_now()
        assert services.failover.active("agents").endpoint == "primary"  # one failed check: below the threshold
        services.health_checker.check_now()
        assert services.failover.active("agents").endpoint == "backup"

        wait_for("the page", lambda: pagerduty_api.events, 10)
        assert [r.path for r in admin_api.received() if r.method == "POST"] == ["/admin/restart"] * 2
        summary = pagerduty_api.events[0]["payload"]["summary"]
        assert "still failing after 2 recovery attempts" in summary and "no heartbeat for" in summary
