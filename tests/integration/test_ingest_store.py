"""Dedup, grouping and resolution of alerts, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, select

from controlplane.db.tables import alerts_t, audit_t, incidents_t
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import IngestResult, ingest_notification, ingest_notifications
from tests.conftest import count_rows, load_payload

GROUP_BY = ["alertname", "namespace"]


def notification(payload: dict[str, Any]) -> AlertmanagerNotification:
    return AlertmanagerNotification.model_validate(payload)


def ingest(engine: Engine, payload: dict[str, Any], group_by: list[str] = GROUP_BY) -> IngestResult:
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        return ingest_notification(conn, notification(payload), group_by=group_by)


def firing() -> dict[str, Any]:
    return load_payload("alertmanager_firing.json")


def resolved(payload: dict[str, Any], index: int, at: str = "2026-11-24T08:10:00Z") -> dict[str, Any]:
    out = copy.deepcopy(payload)
    out["status"] = "resolved"
    out["alerts"] = [out["alerts"][index] | {"status": "resolved", "endsAt": at}]
    return out


def incidents(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(incidents_t).order_by(incidents_t.c.id)))


def actions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(audit_t.c.action).order_by(audit_t.c.id)).scalars())


def test_two_firing_alerts_open_one_incident(engine: Engine) -> None:
    result = ingest(engine, firing())
    assert len(result.new_alert_ids) == 2
    assert len(result.opened_incident_ids) == 1
    [incident] = incidents(engine)
    assert incident.status == "open"
    assert incident.key == '{alertname="LangGraphHighErrorRate",namespace="agents"}'
    assert incident.severity == "critical"
    assert incident.group_labels == {"alertname": "LangGraphHighErrorRate", "namespace": "agents"}
    assert count_rows(engine, "incident_alerts") == 2
    assert actions(engine) == ["incident.opened", "alert.firing", "alert.firing"]


def test_redelivery_only_bumps_the_receive_count(engine: Engine) -> None:
    ingest(engine, firing())
    for _ in range(3):
        result = ingest(engine, firing())
        assert result.duplicates == 2 and not result.changed
    with engine.connect() as conn:
        counts = list(conn.execute(select(alerts_t.c.receive_count)).scalars())
    assert counts == [4, 4]
    assert count_rows(engine, "alerts") == 2
    assert len(actions(engine)) == 3  # no audit noise from duplicates


def test_incident_resolves_when_its_last_alert_resolves(engine: Engine) -> None:
    payload = firing()
    ingest(engine, payload)
    first = ingest(engine, resolved(payload, 0))
    assert len(first.resolved_alert_ids) == 1 and not first.resolved_incident_ids
    assert incidents(engine)[0].status == "open"
    second = ingest(engine, resolved(payload, 1, at="2026-11-24T08:12:00Z"))
    [incident] = incidents(engine)
    assert second.resolved_incident_ids == [incident.id]
    assert incident.status == "resolved" and incident.resolved_at is not None
    assert incident.open_key is None
    with engine.connect() as conn:
        ends = sorted(conn.execute(select(alerts_t.c.ends_at)).scalars())
    assert ends == [datetime(2026, 11, 24, 8, 10, tzinfo=UTC), datetime(2026, 11, 24, 8, 12, tzinfo=UTC)]
    assert actions(engine)[-1] == "incident.resolved"


def test_late_firing_copy_from_a_peer_does_not_reopen(engine: Engine) -> None:
    payload = firing()
    ingest(engine, payload)
    ingest(engine, resolved(payload, 0))
    ingest(engine, resolved(payload, 1))
    result = ingest(engine, payload)  # the lagging HA peer still sends the firing state
    assert result.duplicates == 2 and not result.changed
    assert [i.status for i in incidents(engine)] == ["resolved"]
    with engine.connect() as conn:
        assert set(conn.execute(select(alerts_t.c.status)).scalars()) == {"resolved"}


def test_a_new_episode_after_resolution_opens_a_new_incident(engine: Engine) -> None:
    payload = firing()
    payload["alerts"] = payload["alerts"][:1]
    ingest(engine, payload)
    ingest(engine, resolved(payload, 0))
    again = copy.deepcopy(payload)
    again["alerts"][0]["startsAt"] = "2026-11-24T09:00:00Z"  # same labels, fires again later
    result = ingest(engine, again)
    assert len(result.new_alert_ids) == 1 and len(result.opened_incident_ids) == 1
    first, second = incidents(engine)
    assert first.key == second.key
    assert (first.status, second.status) == ("resolved", "open")


def test_grouping_by_namespace_and_by_custom_labels(engine: Engine) -> None:
    payload = firing()
    payload["alerts"][1]["labels"]["namespace"] = "billing"
    ingest(engine, payload)
    assert len(incidents(engine)) == 2
    other = firing()
    for alert in other["alerts"]:
        alert["fingerprint"] += "x"
    ingest(engine, other, group_by=["alertname"])
    assert len(incidents(engine)) == 3
    assert incidents(engine)[-1].group_labels == {"alertname": "LangGraphHighErrorRate"}


def test_severity_rises_to_the_worst_alert(engine: Engine) -> None:
    payload = firing()
    payload["alerts"][0]["labels"]["severity"] = "warning"
    payload["alerts"][1]["labels"]["severity"] = "critical"
    ingest(engine, payload)
    assert incidents(engine)[0].severity == "critical"


def test_an_alert_first_seen_resolved_is_kept_and_closed(engine: Engine) -> None:
    result = ingest(engine, resolved(firing(), 0))
    assert len(result.new_alert_ids) == 1
    [incident] = incidents(engine)
    assert incident.status == "resolved"
    assert result.resolved_incident_ids == [incident.id]


def test_the_same_alert_twice_in_one_notification(engine: Engine) -> None:
    payload = firing()
    payload["alerts"] = [payload["alerts"][0], payload["alerts"][0]]
    result = ingest(engine, payload)
    assert len(result.new_alert_ids) == 1 and result.duplicates == 1
    with engine.connect() as conn:
        assert list(conn.execute(select(alerts_t.c.receive_count)).scalars()) == [2]


def test_start_times_in_other_zones_are_the_same_episode(engine: Engine) -> None:
    payload = firing()
    ingest(engine, payload)
    shifted = copy.deepcopy(payload)
    start = datetime.fromisoformat("2026-11-24T08:00:00.123456+00:00").astimezone(timezone(timedelta(hours=2)))
    shifted["alerts"][0]["startsAt"] = start.isoformat()
    assert ingest(engine, shifted).duplicates == 2


def test_concurrent_writers_store_each_episode_once(engine: Engine) -> None:
    """Two replicas (or an HA Alertmanager pair) delivering the same alerts at the same moment."""
    payloads = []
    for i in range(20):
        p = firing()
        for alert in p["alerts"]:
            alert["fingerprint"] = f"{alert['fingerprint']}-{i}"
            alert["labels"]["namespace"] = f"ns-{i % 4}"
        payloads.append(p)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def deliver() -> None:
        try:
            barrier.wait(timeout=10)
            for p in payloads:
                ingest(engine, p)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert count_rows(engine, "alerts") == 40
    assert count_rows(engine, "incident_alerts") == 40
    assert len(incidents(engine)) == 4  # one per namespace, never a duplicate
    with engine.connect() as conn:
        assert set(conn.execute(select(alerts_t.c.receive_count)).scalars()) == {4}


def test_one_batch_resolving_then_reopening_a_key_opens_a_new_incident(engine: Engine) -> None:
    """Group commit shares a transaction (and its open-incident cache) between notifications."""
    from controlplane.ingest.store import OpenIncidents

    payload = firing()
    payload["alerts"] = payload["alerts"][:1]
    again = copy.deepcopy(payload)
    again["alerts"][0]["startsAt"] = "2026-11-24T09:00:00Z"
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        cache = OpenIncidents()
        for p in (payload, resolved(payload, 0), again):
            ingest_notification(conn, notification(p), group_by=GROUP_BY, open_incidents=cache)
    first, second = incidents(engine)
    assert (first.status, second.status) == ("resolved", "open")
    assert count_rows(engine, "incident_alerts") == 2


def ingest_batch(engine: Engine, payloads: list[dict[str, Any]]) -> list[IngestResult]:
    """One group-commit transaction: the writer hands the whole batch over at once."""
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        return ingest_notifications(conn, [notification(p) for p in payloads], group_by=GROUP_BY)


def test_ha_copies_in_one_batch_store_the_alerts_once(engine: Engine) -> None:
    payload = firing()
    first, second = ingest_batch(engine, [payload, copy.deepcopy(payload)])
    assert len(first.new_alert_ids) == 2 and first.duplicates == 0
    assert second.new_alert_ids == [] and second.duplicates == 2 and not second.changed
    assert first.incident_ids == [incidents(engine)[0].id] and second.incident_ids == []
    with engine.connect() as conn:
        assert list(conn.execute(select(alerts_t.c.receive_count)).scalars()) == [2, 2]
    assert count_rows(engine, "incident_alerts") == 2
    assert actions(engine) == ["incident.opened", "alert.firing", "alert.firing"]


def test_a_new_alert_resolved_later_in_the_same_batch_resolves_its_incident(engine: Engine) -> None:
    payload = firing()
    fire, resolve_first, resolve_second = ingest_batch(
        engine, [payload, resolved(payload, 0), resolved(payload, 1, at="2026-11-24T08:12:00Z")]
    )
    [incident] = incidents(engine)
    assert len(fire.new_alert_ids) == 2 and fire.opened_incident_ids == [incident.id]
    assert resolve_first.resolved_alert_ids == [fire.new_alert_ids[0]] and not resolve_first.resolved_incident_ids
    assert resolve_second.resolved_alert_ids == [fire.new_alert_ids[1]]
    assert resolve_second.resolved_incident_ids == [incident.id] and incident.status == "resolved"
    assert actions(engine) == [
        "incident.opened",
        "alert.firing",
        "alert.firing",
        "alert.resolved",
        "alert.resolved",
        "incident.resolved",
    ]


def test_each_notification_of_a_batch_gets_its_own_result(engine: Engine) -> None:
    payloads = []
    for i in range(3):
        p = firing()
        p["alerts"] = p["alerts"][:1]
        p["alerts"][0]["fingerprint"] = f"fp-{i}"
        p["alerts"][0]["labels"]["namespace"] = f"ns-{i % 2}"
        payloads.append(p)
    results = ingest_batch(engine, payloads)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(alerts_t.c.fingerprint, alerts_t.c.id)).all())
    assert [r.new_alert_ids for r in results] == [[stored["fp-0"]], [stored["fp-1"]], [stored["fp-2"]]]
    first, second, third = (r.incident_ids for r in results)
    assert first == third != second  # ns-0, ns-1, ns-0
    assert [len(r.opened_incident_ids) for r in results] == [1, 1, 0]
