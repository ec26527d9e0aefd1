"""Silences against the real Alertmanager binary, on SQLite and PostgreSQL: created by a playbook step, read back
through Alertmanager's own API, expired by rollback and when their incident resolves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, select

from controlplane.actions.base import ActionError
from controlplane.actions.builtin import build_registry
from controlplane.actions.silence import SilenceParams
from controlplane.config import Settings
from controlplane.db.tables import silences_t
from controlplane.integrations.alertmanager import AlertmanagerClient
from controlplane.silences.service import expire_silences_for_incident
from tests.alertmanager_server import AlertmanagerServer
from tests.conftest import make_settings
from tests.helpers import Clock
from tests.integration.test_paging import audits, context_of, engine_harness
from tests.integration.test_playbooks import rules
from tests.prometheus_server import free_port

registry = build_registry()

pytestmark = pytest.mark.slow

PUBLIC_URL = "https://controlplane.example"


@pytest.fixture
def am_settings(database_url: str, alertmanager: AlertmanagerServer) -> Settings:
    return make_settings(database_url, alertmanager_url=alertmanager.url, public_url=PUBLIC_URL)


def real_clock() -> Clock:
    # Alertmanager judges startsAt/endsAt by its own (real) clock, so the engine's must agree.
    return Clock(datetime.now(UTC))


def silence_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(silences_t).order_by(silences_t.c.id)).all())


def test_a_step_silences_the_incident_in_alertmanager(
    engine: Engine,
    am_settings: Settings,
    alertmanager: AlertmanagerServer,
) -> None:
    with engine_harness(engine, am_settings, real_clock()) as h:
        h.rules = rules("""
      - id: quiet
        action: alertmanager.silence
        with: {duration: 30m}
""")
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
    assert detail.status == "succeeded"
    silence_id = detail.steps[0].output["value"]
    seen = alertmanager.silence(silence_id)
    assert seen["status"] == {"state": "active"}
    assert seen["createdBy"] == "controlplane"
    assert seen["matchers"] == [
        {"name": "alertname", "value": "LangGraphHighErrorRate", "isRegex": False, "isEqual": True},
        {"name": "namespace", "value": "agents", "isRegex": False, "isEqual": True},
    ]
    assert f"incident #{detail.incident_id} {PUBLIC_URL}/incidents/{detail.incident_id}" in str(seen["comment"])
    ends_at = datetime.fromisoformat(str(seen["endsAt"]).replace("Z", "+00:00"))
    assert abs(ends_at - (h.clock() + timedelta(minutes=30))) < timedelta(seconds=2)
    [row] = silence_rows(engine)
    assert (row.silence_id, row.incident_id, row.execution_id) == (silence_id, detail.incident_id, t.execution_id)
    assert row.matchers == {"alertname": "LangGraphHighErrorRate", "namespace": "agents"}
    assert row.alertmanager_url == alertmanager.url and row.expired_at is None


def test_rollback_expires_the_silence(
    engine: Engine,
    am_settings: Settings,
    alertmanager: AlertmanagerServer,
) -> None:
    with engine_harness(engine, am_settings, real_clock()) as h:
        h.rules = rules("""
      - id: quiet
        action: alertmanager.silence
        with: {matchers: {alertname: LangGraphHighErrorRate, graph_name: "{{ alert.labels.graph_name }}"}}
        rollback: {action: alertmanager.expire_silence, with: {silence_id: "{{ steps.quiet.value }}"}}
      - action: test.do
        with: {text: x, fail_times: 1, retriable: false}
""")
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
    assert detail.status == "rolled_back"
    silence_id = detail.steps[0].output["value"]
    seen = alertmanager.silence(silence_id)
    assert seen["status"] == {"state": "expired"}
    assert {m["name"]: m["value"] for m in seen["matchers"]} == {  # type: ignore[attr-defined]
        "alertname": "LangGraphHighErrorRate",
        "graph_name": "support_bot",
    }
    [row] = silence_rows(engine)
    assert row.expired_at is not None


def test_resolving_the_incident_expires_its_silences(
    engine: Engine,
    am_settings: Settings,
    alertmanager: AlertmanagerServer,
) -> None:
    with engine_harness(engine, am_settings, real_clock()) as h:
        h.rules = rules("""
      - action: alertmanager.silence
        with: {duration: 1h}
      - action: alertmanager.silence
        with: {duration: 2h, matchers: {graph_name: "{{ alert.labels.graph_name }}"}, comment: "graph muted"}
""")
        [t] = h.fire()
        h.fire({"namespace": "elsewhere"})  # another incident, whose silences stay
        h.run_all()
        incident_id = h.execution(t.execution_id).incident_id
        assert incident_id is not None
    ids = [row.silence_id for row in silence_rows(engine) if row.incident_id == incident_id]
    kept = [row.silence_id for row in silence_rows(engine) if row.incident_id != incident_id]
    assert len(ids) == 2 and len(kept) == 2
    assert "graph muted" in str(alertmanager.silence(ids[1])["comment"])

    assert expire_silences_for_incident(engine, am_settings, incident_id, "controlplane:resolve") == 2
    assert [alertmanager.silence(i)["status"] for i in ids] == [{"state": "expired"}] * 2
    assert [alertmanager.silence(i)["status"] for i in kept] == [{"state": "active"}] * 2
    assert sorted(a["silence_id"] for a in audits(engine, "silence.expired")) == sorted(ids)
    # Nothing left to expire the second time.
    assert expire_silences_for_incident(engine, am_settings, incident_id, "controlplane:resolve") == 0
    for silence_id in kept:  # the Alertmanager is shared by the session's tests
        AlertmanagerClient(alertmanager.url).expire(silence_id)


def test_a_retried_step_reuses_the_silence_it_created(
    engine: Engine,
    am_settings: Settings,
    alertmanager: AlertmanagerServer,
) -> None:
    with engine_harness(engine, am_settings, real_clock()) as h:
        h.rules = rules("""
      - action: notify.log
        with: {text: x}
""")
        [t] = h.fire()
        h.run_all()
        spec = registry.get("alertmanager.silence")
        ctx = context_of(h, t.execution_id, am_settings, f"{t.execution_id}:7")
        first = spec.func(ctx, SilenceParams(duration=timedelta(minutes=5)))
        # The worker died after Alertmanager created it, before the step was recorded: same step again.
        again = spec.func(ctx, SilenceParams(duration=timedelta(minutes=5)))
        assert again.value == first.value
        assert len(silence_rows(engine)) == 1
        marked = [
            s
            for s in AlertmanagerClient(alertmanager.url).list_silences()
            if f"step {t.execution_id}:7 started {ctx.step_started_at.isoformat()}]" in s.comment
        ]
        assert [s.id for s in marked] == [first.value]

        # Expiring twice, or a silence Alertmanager never knew, is done, not an error.
        expire = registry.get("alertmanager.expire_silence")
        for silence_id in (first.value, first.value, "00000000-0000-0000-0000-000000000000"):
            result = expire.func(ctx, expire.params.model_validate({"silence_id": silence_id}))
            assert result.value == silence_id
        assert result.output["known"] is False


def test_a_silence_too_wide_or_too_long_is_refused(
    engine: Engine,
    am_settings: Settings,
    alertmanager: AlertmanagerServer,
) -> None:
    with pytest.raises(ValidationError, match="less than or equal"):
        SilenceParams.model_validate({"duration": "8d"})
    with engine_harness(engine, am_settings, real_clock()) as h:
        h.rules = rules("""
      - action: alertmanager.silence
        with: {matchers: {alertname: ""}}
""")
        [t] = h.fire()
        h.run_all()
        detail = h.execution(t.execution_id)
    assert detail.status == "failed"
    assert "blast radius: a silence needs at least one matcher" in str(detail.steps[0].error)
    assert silence_rows(engine) == []


def test_alertmanager_down_is_a_retriable_step_error(engine: Engine, database_url: str) -> None:
    down = make_settings(database_url, alertmanager_url=f"http://127.0.0.1:{free_port()}")
    with engine_harness(engine, down, real_clock()) as h:
        h.rules = rules("""
      - action: notify.log
        with: {text: x}
""")
        [t] = h.fire()
        h.run_all()
        spec = registry.get("alertmanager.silence")
        with pytest.raises(ActionError) as raised:
            spec.func(context_of(h, t.execution_id, down), SilenceParams())
    assert raised.value.retriable is True
    assert silence_rows(engine) == []
