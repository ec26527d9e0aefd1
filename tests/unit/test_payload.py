"""Webhook payload validation: what Alertmanager sends is accepted, everything else is refused clearly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.errors import InvalidInput, MalformedInput
from controlplane.ingest.payload import parse_notification
from tests.conftest import load_payload


def body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def test_real_payload_is_parsed_with_alertmanager_timestamps() -> None:
    notification = parse_notification(body(load_payload("alertmanager_firing.json")))
    first = notification.alerts[0]
    assert notification.version == "4"
    assert len(notification.alerts) == 2
    # nanosecond precision is truncated to microseconds, not refused
    assert first.startsAt == datetime(2026, 11, 24, 8, 0, 0, 123456, tzinfo=UTC)
    # a firing alert's endsAt is the zero time: it has no end yet
    assert first.endsAt is not None and first.endsAt.year == 1
    assert first.ends_at is None
    assert first.alertname == "LangGraphHighErrorRate"


def test_resolved_alert_keeps_its_end() -> None:
    notification = parse_notification(body(load_payload("alertmanager_resolved_one.json")))
    assert notification.alerts[0].ends_at == datetime(2026, 11, 24, 8, 10, tzinfo=UTC)


def test_fields_of_newer_alertmanagers_are_accepted() -> None:
    payload = load_payload("alertmanager_firing.json")
    payload["notification_reason"] = "repeat_interval"
    payload["routeLabels"] = {"team": "agents"}
    payload["alerts"][0]["silencedBy"] = []
    assert parse_notification(body(payload)).receiver == "controlplane\\.auto"


@pytest.mark.parametrize("raw", [b"", b"   \n", b"not json", b"{", b"\xff\xfe"])
def test_unreadable_bodies_are_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedInput):
        parse_notification(raw)


def test_version_3_is_refused_by_name() -> None:
    payload = load_payload("alertmanager_firing.json") | {"version": "3"}
    with pytest.raises(InvalidInput, match='version "4"'):
        parse_notification(body(payload))


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("alerts"), "alerts"),
        (lambda p: p.update(alerts=[]), "alerts"),
        (lambda p: p.update(status="pending"), "status"),
        (lambda p: p["alerts"][0].pop("fingerprint"), "alerts.0.fingerprint"),
        (lambda p: p["alerts"][0].update(startsAt="yesterday"), "alerts.0.startsAt"),
        (lambda p: p["alerts"][1].update(labels={}), "alerts.1.labels"),
        (lambda p: p["alerts"][0].update(labels={"alertname": 5}), "alerts.0.labels.alertname"),
    ],
)
def test_invalid_payloads_name_the_field(mutate: Any, field: str) -> None:
    payload = load_payload("alertmanager_firing.json")
    mutate(payload)
    with pytest.raises(InvalidInput) as caught:
        parse_notification(body(payload))
    assert field in [d["field"] for d in caught.value.details]
    assert field in caught.value.message


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_arbitrary_input_gets_a_domain_error_never_a_crash(raw: bytes) -> None:
    try:
        parse_notification(raw)
    except (MalformedInput, InvalidInput) as exc:
        assert exc.message
