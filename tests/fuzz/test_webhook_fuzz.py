"""hypothesis against the webhook: structured mutations of valid Alertmanager v4 payloads, through HTTP.

Every answer is 200, 400, 413 or 422 (never a 5xx: Alertmanager would retry a bad payload
forever). A 200 means the database holds exactly the payload's alert episodes, deduplicated
by (fingerprint, startsAt): one row each, resolved if any copy was resolved, its receive count
the number of copies, linked to one incident. Anything else stored nothing. Runs on SQLite and
on the real PostgreSQL, whose text columns refuse more (NUL characters, lengths).
`CONTROLPLANE_FUZZ_EXAMPLES` sets the number of payloads (`make fuzz`).
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from sqlalchemy import func, select

from controlplane.app import create_app
from controlplane.db.tables import alerts_t, links_t
from tests.conftest import TOKEN, WEBHOOK, load_payload, make_settings

EXAMPLES = int(os.environ.get("CONTROLPLANE_FUZZ_EXAMPLES", "25")) * 8  # cheap: about 15 ms each
DERANDOMIZE = "CONTROLPLANE_FUZZ_EXAMPLES" not in os.environ
MAX_BODY = 256 * 1024
ANSWERS = {200, 400, 413, 422}
INSTANT = TypeAdapter(datetime)

Json = Any

# --- valid payloads ---------------------------------------------------------------------------

label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
texts = st.text(max_size=30)  # any unicode but lone surrogates; NUL included
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda m: UTC if m == 0 else timezone(timedelta(minutes=m))
)
instants = st.builds(
    lambda naive, tz: naive.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    offsets,
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 as Alertmanager writes it (Z, nanoseconds) or with an offset; any instant at all."""
    text = draw(instants).isoformat()
    if draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    if "." in text and draw(st.booleans()):  # Go's nanoseconds
        head, _, tail = text.partition(".")
        text = f"{head}.{tail[:6]}{draw(st.integers(0, 999)):03d}{tail[6:]}"
    return text


@st.composite
def alerts(draw: st.DrawFn, fingerprint: str) -> dict[str, Json]:
    labels = {"alertname": draw(st.sampled_from(["FuzzA", "FuzzB"])), "namespace": "fuzz"}
    labels |= draw(st.dictionaries(label_names, texts, max_size=6))
    status = draw(st.sampled_from(["firing", "resolved"]))
    return {
        "status": status,
        "labels": labels,
        "annotations": draw(st.dictionaries(label_names, texts, max_size=3)),
        "startsAt": draw(timestamps()),
        "endsAt": draw(timestamps()) if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": draw(st.sampled_from(["", "http://prometheus:9090/graph?g0.expr=up"])),
        "fingerprint": fingerprint,
    }


@st.composite
def notifications(draw: st.DrawFn, prefix: str) -> dict[str, Json]:
    count = draw(st.integers(1, 5))
    items = [draw(alerts(f"{prefix}{i:02d}")) for i in range(count)]
    status = "firing" if any(a["status"] == "firing" for a in items) else "resolved"
    return {
        "version": "4",
        "groupKey": '{}:{alertname="FuzzA"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": draw(st.sampled_from(["controlplane", "controlplane\\.auto"])),
        "groupLabels": {"alertname": items[0]["labels"]["alertname"]},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": items,
    }


# --- mutations --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
WEIRD_TIMES: list[Json] = [
    "NaN",
    "Infinity",
    "",
    "0",
    0,
    -1,
    1e308,
    float("nan"),
    None,
    "2026-11-24T08:00:00",  # no offset
    "2026-11-24",
    "2026-12-31T23:59:60Z",  # a leap second
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    "2026-11-24T08:00:00.123456789123Z",
    "2026-02-30T08:00:00Z",
    "2026-11-24T08:00:00+24:00",
]
TOP_FIELDS = ["version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "alerts", "commonLabels"]
ALERT_FIELDS = ["status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"]


@st.composite
def mutated(draw: st.DrawFn, prefix: str) -> dict[str, Json]:
    payload = draw(notifications(prefix))
    for _ in range(draw(st.integers(0, 3))):
        items = payload.get("alerts")
        alert = draw(st.sampled_from(items)) if isinstance(items, list) and items else None
        kind = draw(
            st.sampled_from(
                ["drop", "retype", "extra", "duplicate", "huge", "time", "unicode", "flip", "long", "retime"]
            )
        )
        if kind == "drop":
            if alert is not None and draw(st.booleans()):
                alert.pop(draw(st.sampled_from(ALERT_FIELDS)), None)
            else:
                payload.pop(draw(st.sampled_from(TOP_FIELDS)), None)
        elif kind == "retype":
            if alert is not None and draw(st.booleans()):
                alert[draw(st.sampled_from(ALERT_FIELDS))] = draw(json_values)
            else:
                payload[draw(st.sampled_from(TOP_FIELDS))] = draw(json_values)
        elif kind == "extra":
            target = alert if alert is not None and draw(st.booleans()) else payload
            target[draw(texts)] = draw(json_values)
        elif kind == "duplicate" and alert is not None:  # an HA peer's copy: same episode, maybe the other status
            twin = copy.deepcopy(alert)
            if draw(st.booleans()):
                twin["status"] = draw(st.sampled_from(["firing", "resolved"]))
            items.insert(draw(st.integers(0, len(items))), twin)
        elif kind == "huge" and alert is not None and isinstance(alert.get("labels"), dict):
            size = draw(st.sampled_from([50, 500, 3000]))
            alert["labels"].update({f"l{i}": "v" * draw(st.integers(0, 120)) for i in range(size)})
        elif kind == "time" and alert is not None:
            alert[draw(st.sampled_from(["startsAt", "endsAt"]))] = draw(st.sampled_from(WEIRD_TIMES))
        elif kind == "unicode" and alert is not None and isinstance(alert.get("labels"), dict):
            text = draw(st.sampled_from(["\x00", "a\x00b", "\u202e", "\U0001f525" * 50, "\ufeff", "\\", '"'])) + draw(
                texts
            )
            field = draw(st.sampled_from(["labels", "annotations"]))
            if isinstance(alert.get(field), dict):
                alert[field][draw(st.sampled_from(["alertname", "summary", "namespace", text]))] = text
        elif kind == "flip" and alert is not None:
            alert["status"] = "resolved" if alert.get("status") == "firing" else "firing"
        elif kind == "long":  # values longer than a database column might be
            value = "x" * draw(st.sampled_from([33, 256, 1025, 5000]))
            if alert is not None and isinstance(alert.get("labels"), dict) and draw(st.booleans()):
                alert["labels"][draw(st.sampled_from(["alertname", "severity", "namespace"]))] = value
            else:
                payload["receiver"] = value
        elif kind == "retime" and alert is not None and isinstance(alert.get("startsAt"), str):
            # The same instant written with another offset: still the same episode.
            twin = copy.deepcopy(alert)
            try:
                instant = INSTANT.validate_json(json.dumps(alert["startsAt"]))
                twin["startsAt"] = instant.astimezone(draw(offsets)).isoformat()
            except (ValueError, OverflowError):
                continue
            items.append(twin)
    for alert in payload.get("alerts") or []:  # a string fingerprint stays this example's own
        if isinstance(alert, dict) and isinstance(alert.get("fingerprint"), str):
            alert["fingerprint"] = (
                alert["fingerprint"] if alert["fingerprint"].startswith(prefix) else prefix + alert["fingerprint"]
            )
    return payload


# --- the oracle -------------------------------------------------------------------------------


def expected_episodes(payload: dict[str, Json]) -> dict[tuple[str, datetime], tuple[str, int]]:
    """(fingerprint, startsAt in UTC) -> (status, copies) of an accepted payload."""
    episodes: dict[tuple[str, datetime], tuple[str, int]] = {}
    for alert in payload["alerts"]:
        key = (alert["fingerprint"], INSTANT.validate_json(json.dumps(alert["startsAt"])).astimezone(UTC))
        status, copies = episodes.get(key, ("firing", 0))
        episodes[key] = ("resolved" if alert["status"] == "resolved" else status, copies + 1)
    return episodes


def stored_episodes(client: TestClient, prefix: str) -> dict[tuple[str, datetime], tuple[str, int]]:
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    links = select(func.count()).where(links_t.c.alert_id == alerts_t.c.id).scalar_subquery()
    query = select(alerts_t.c.fingerprint, alerts_t.c.starts_at, alerts_t.c.status, alerts_t.c.receive_count, links)
    with engine.connect() as conn:
        rows = conn.execute(query.where(alerts_t.c.fingerprint.startswith(prefix))).all()
    assert all(row[4] == 1 for row in rows), f"alerts not linked to exactly one incident: {rows}"
    return {(row.fingerprint, row.starts_at): (row.status, row.receive_count) for row in rows}


def encode(payload: dict[str, Json], raw: str) -> bytes:
    body = json.dumps(payload, ensure_ascii=raw == "ascii").encode("utf-8", "surrogatepass")
    if raw == "truncated":
        return body[: len(body) // 2]
    if raw == "latin-1":
        return body.replace(b'"namespace"', b'"namesp\xe4ce"', 1)
    return body


def test_webhook_answers_4xx_or_stores_exactly_the_payload(database_url: str) -> None:
    with TestClient(
        create_app(make_settings(database_url, max_body_bytes=MAX_BODY)), raise_server_exceptions=False
    ) as client:
        headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}

        @given(data=st.data())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=DERANDOMIZE,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        )
        def one_payload(data: st.DataObject) -> None:
            prefix = uuid.uuid4().hex[:12]  # this example's fingerprints: fp<prefix><index>
            payload = data.draw(mutated(prefix), label="payload")
            raw = data.draw(st.sampled_from(["utf-8"] * 8 + ["ascii", "truncated", "latin-1"]), label="encoding")
            response = client.post(WEBHOOK, content=encode(payload, raw), headers=headers)
            assert response.status_code in ANSWERS, f"{response.status_code}: {response.text[:500]}"
            stored = stored_episodes(client, prefix)
            if response.status_code != 200:
                assert stored == {}, f"refused ({response.status_code}) but stored {stored}"
                assert "error" in response.json()
                return
            expected = expected_episodes(payload)
            assert stored == expected
            answer = response.json()
            assert answer["alerts"] == len(payload["alerts"])
            assert answer["new"] == len(expected)
            assert answer["new"] + answer["resolved"] + answer["duplicates"] == len(payload["alerts"])

        one_payload()


# What the fuzzing found once (each a 500 before its fix), replayed on every run: (alert changes, answer).
FOUND: dict[str, tuple[dict[str, Json], int]] = {
    "no offset": ({"startsAt": "2026-11-24T08:00:00"}, 422),
    "before year 1 in UTC": ({"startsAt": "0001-01-01T00:00:00+01:00"}, 422),
    "after year 9999 in UTC": ({"startsAt": "9999-12-31T23:59:59-01:00"}, 422),
    "NUL in a label": ({"labels": {"alertname": "A", "x": "a\x00b"}}, 422),
    "NUL in an annotation name": ({"annotations": {"\x00": "b"}}, 422),
    "alertname over 255": ({"labels": {"alertname": "A" * 256}}, 422),
    "severity over 32": ({"labels": {"alertname": "A", "severity": "s" * 33}}, 422),
    "namespace over the key's 1024": ({"labels": {"alertname": "A", "namespace": "n" * 1100}}, 200),
    "non-ASCII namespace over the key's 1024": ({"labels": {"alertname": "A", "namespace": "\U0001f525" * 100}}, 200),
}


@pytest.mark.parametrize("changes, answer", list(FOUND.values()), ids=list(FOUND))
def test_what_fuzzing_found(database_url: str, changes: dict[str, Json], answer: int) -> None:
    payload = load_payload("alertmanager_firing.json")
    payload["alerts"] = [payload["alerts"][0] | changes]
    with TestClient(create_app(make_settings(database_url)), raise_server_exceptions=False) as client:
        response = client.post(WEBHOOK, json=payload, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == answer, response.text
        stored = stored_episodes(client, payload["alerts"][0]["fingerprint"])
    assert len(stored) == (1 if answer == 200 else 0)
