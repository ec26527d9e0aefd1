"""schemathesis against the served OpenAPI: every JSON operation, generated valid and invalid inputs.

The app runs in-process (ASGI, Starlette's TestClient, lifespan included) on SQLite and on PostgreSQL with the
webhook and admin tokens set, so authenticated operations run past their auth check. Every
answer must be documented for its operation (status code), match its declared schema, and
never be a 5xx. `CONTROLPLANE_FUZZ_EXAMPLES` sets the examples per operation (`make fuzz`);
without it the bounded run of `make test` is derandomized, so it fails only on a change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from controlplane.app import create_app
from controlplane.config import Settings
from tests.conftest import ADMIN_TOKEN, TOKEN, WEBHOOK, load_payload, make_settings
from tests.integration.serverproc import truncate_all

EXAMPLES = int(os.environ.get("CONTROLPLANE_FUZZ_EXAMPLES", "25"))
DERANDOMIZE = "CONTROLPLANE_FUZZ_EXAMPLES" not in os.environ
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
# Not JSON operations: Prometheus text, YAML, a dashboard's stored bytes.
NOT_JSON = ["/metrics", "/api/v1/alerting/rules", "/api/v1/dashboards/{uid}"]


# Executions that wait for approval (approve/reject/cancel can then succeed or conflict) and a
# failover group whose endpoints refuse connections (port 9 on loopback), checked once an hour.
RULES = """
rules:
  - name: careful
    match: {alertname: LangGraphHighErrorRate}
    playbook: note
    guards: {approval: true}
playbooks:
  - name: note
    steps:
      - action: notify.log
        with: {text: "graph {{ alert.labels.graph_name }} is failing"}
failover:
  - service: chat
    interval: 1h
    endpoints:
      - {name: primary, url: "http://127.0.0.1:9", region: eu-west, priority: 0}
      - {name: backup, url: "http://127.0.0.1:9", region: us-east, priority: 1}
"""


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fuzz_client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app on SQLite, then on PostgreSQL (which refuses NUL in text: inputs must be refused before it)."""
    workdir = tmp_path_factory.mktemp("fuzz")
    (workdir / "rules").mkdir()
    (workdir / "rules" / "fuzz.yaml").write_text(RULES)
    if request.param == "sqlite":
        url = f"sqlite:///{workdir}/controlplane.db"
    else:
        url = request.getfixturevalue("postgres_url")
        truncate_all(url)
    settings_ = make_settings(url, rules_dir=workdir / "rules")
    with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
        # Something to read: small ids then name a real incident, its alerts and their executions.
        seeded = client.post(WEBHOOK, json=load_payload("alertmanager_firing.json"), headers=_auth(WEBHOOK))
        assert seeded.status_code == 200, seeded.text
        executions = client.get("/api/v1/executions", headers=_auth("/api/v1/executions")).json()
        assert executions["items"], "the seeded alerts started no execution"
        yield client


def _auth(path: str) -> dict[str, str]:
    """The webhook takes its own token; the admin operations the admin one (others ignore it)."""
    return {"Authorization": f"Bearer {TOKEN if path == WEBHOOK else ADMIN_TOKEN}"}


def _send(client: TestClient, case: schemathesis.Case) -> httpx.Response:
    kwargs: dict[str, Any] = case.as_transport_kwargs(base_url=str(client.base_url))
    headers = {**_auth(case.path), **(kwargs.pop("headers", None) or {})}
    return client.request(
        kwargs.pop("method"),
        kwargs.pop("url"),
        headers=headers,
        params=kwargs.pop("params", None),
        content=_body(kwargs),
    )


def _body(kwargs: dict[str, Any]) -> bytes | None:
    """The serialized body, whichever of requests' keywords the serializer chose."""
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if data is None:
        return None
    return data if isinstance(data, bytes) else str(data).encode()


def _served_schema() -> schemathesis.BaseSchema:
    """/openapi.json as the app serves it (no lifespan needed to read it): tests are collected per operation."""
    app = create_app(Settings(database_url="sqlite:///:memory:", webhook_token=TOKEN, admin_token=ADMIN_TOKEN))
    served = TestClient(app).get("/openapi.json").json()
    loaded = schemathesis.openapi.from_dict(served)
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES, deterministic=DERANDOMIZE
    )
    return loaded.exclude(path=NOT_JSON)


schema = _served_schema()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
    database=None,
    derandomize=DERANDOMIZE,
)
def test_every_json_operation_answers_as_documented(case: schemathesis.Case, fuzz_client: TestClient) -> None:
    response = _send(fuzz_client, case)
    case.validate_response(response, checks=CHECKS)


def test_fuzzed_operations_cover_the_api() -> None:
    """A route added later is fuzzed too: only the non-JSON ones are left out, by name."""
    fuzzed = {op.ok().path for op in schema.get_all_operations()}
    assert WEBHOOK in fuzzed
    assert {"/api/v1/executions/{execution_id}/approve", "/api/v1/failover/{service}/switch"} <= fuzzed
    assert not fuzzed & set(NOT_JSON)
