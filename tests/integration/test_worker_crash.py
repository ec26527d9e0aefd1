"""A replica killed (kill -9) mid-step: on restart its execution resumes; it never stays running."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, WEBHOOK
from tests.helpers import LoopbackHTTP, sample_notification, wait_for
from tests.integration.serverproc import AUTH, ServerProcess, truncate_all


class SlowTarget:
    """A service whose admin endpoint takes `delay` seconds and records each Idempotency-Key it receives."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.keys: list[str] = []
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                target.keys.append(self.headers.get("Idempotency-Key", ""))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(target.delay)
                body = json.dumps({"done": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = LoopbackHTTP(Handler, "slow-target")
        self.url = f"{self.server.url}/restart"

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def slow_target() -> Iterator[SlowTarget]:
    target = SlowTarget(delay=3.0)
    yield target
    target.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_killed_mid_step_then_resumed_on_restart(
    backend: str, tmp_path: Path, slow_target: SlowTarget, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/controlplane.db"
    else:
        url = request.getfixturevalue("postgres_url")
        truncate_all(url)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "slow.yaml").write_text(f"""
rules:
  - name: restart-service
    match: {{alertname: LangGraphHighErrorRate}}
    playbook: restart
playbooks:
  - name: restart
    steps:
      - id: restart
        action: http.request
        with: {{url: "{slow_target.url}", method: POST, json: {{graph: "{{{{ alert.labels.graph_name }}}}"}}}}
      - action: incident.annotate
        with: {{text: "restarted: {{{{ steps.restart.value.done }}}}"}}
""")
    settings = {
        "rules_dir": str(rules),
        "http_allowed_hosts": "127.0.0.1",
        "worker_lease_seconds": "2",
        "worker_poll_seconds": "0.2",
        "admin_token": ADMIN_TOKEN,
    }
    payload = sample_notification()
    with ServerProcess(url, tmp_path / "first.log", **settings) as first:
        first.wait_ready()
        assert httpx.post(first.url + WEBHOOK, json=payload, headers=AUTH, timeout=10).status_code == 200
        wait_for("the step reaches the target", lambda: slow_target.keys, 10)
        first.kill()  # the step is in flight: its result is never recorded by this replica
    [execution] = _executions(url)
    assert execution["status"] == "running"  # what a dead worker leaves behind

    with ServerProcess(url, tmp_path / "second.log", **settings) as second:
        second.wait_ready()

        def done() -> dict[str, Any] | None:
            detail = httpx.get(f"{second.url}/api/v1/executions/{execution['id']}", headers=AUTH, timeout=5).json()
            return detail if detail["status"] not in ("running", "pending") else None

        detail = wait_for("the execution finishes after the restart", done, 20)
    assert detail["status"] == "succeeded", detail["reason"]
    assert detail["claims"] == 2
    assert any("taken over" in e["detail"].get("reason", "") for e in detail["timeline"])
    # The step was sent again with the same idempotency key: the target can recognise the repeat.
    assert len(slow_target.keys) == 2 and len(set(slow_target.keys)) == 1
    assert [s["status"] for s in detail["steps"]] == ["succeeded", "succeeded"]


def _executions(url: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from controlplane.db.engine import make_engine
    from controlplane.db.tables import executions_t

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(executions_t)).mappings()]
    finally:
        engine.dispose()
