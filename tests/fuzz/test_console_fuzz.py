"""hypothesis against the console's forms and every query parameter, with hostile text, on SQLite and PostgreSQL.

Each example is one request: a console form posted with a valid session and CSRF token (as
an admin, so it gets past the role check), a console page or an API read with hostile query
parameters. Text is drawn heavy in what breaks things: NUL, `%`, `_` and `\\` (LIKE patterns),
quotes, control characters, non-ASCII, and lengths past the fields' limits. No answer may be a
5xx, and none may be anything but HTML from the console. `CONTROLPLANE_FUZZ_EXAMPLES` sets the
examples per test (`make fuzz`); without it `make test` runs a bounded, derandomized set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import console_app, console_users, csrf, log_in

EXAMPLES = int(os.environ.get("CONTROLPLANE_FUZZ_EXAMPLES", "25")) * 4  # about 5 ms each
DERANDOMIZE = "CONTROLPLANE_FUZZ_EXAMPLES" not in os.environ
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

RULES = """
rules:
  - name: careful
    match: {alertname: LangGraphHighErrorRate}
    playbook: tell
    guards: {approval: true}
playbooks:
  - name: tell
    steps:
      - action: notify.log
        with: {text: "hello"}
"""

hostile = (
    st.text(
        alphabet=st.sampled_from(
            ["\x00", "%", "_", "\\", "'", '"', "<", "\n", "\r", "\t", "\x1f", "é", "日", "a", " "]
        ),
        max_size=40,
    )
    | st.text(max_size=20)
    | st.text(alphabet="ab", min_size=2000, max_size=5000)
)

# Every console form with its fields; {incident} and {execution} are a real incident and execution.
FORMS = {
    "/login": ["username", "password", "next"],
    "/logout": ["next"],
    "/incidents/{incident}/acknowledge": ["next"],
    "/incidents/{incident}/resolve": ["reason", "next"],
    "/incidents/{incident}/notes": ["text", "next"],
    "/incidents/{incident}/silence": ["duration", "comment", "next"],
    "/executions/{execution}/approve": ["reason"],
    "/executions/{execution}/reject": ["reason"],
    "/executions/{execution}/cancel": ["reason"],
    "/automation/pause": ["reason"],
    "/automation/resume": ["reason"],
    "/automation/dry-run-on": ["reason"],
}
PAGES = {"/incidents": ["q", "severity", "status", "before"], "/login": ["next"]}


@pytest.fixture
def console(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with console_app(
        database_url,
        RULES,
        tmp_path,
        users=console_users(root="admin"),
        seeded=True,
        raise_server_exceptions=False,
        console_login_max_failures=1_000_000,  # the throttle is tested elsewhere; here it would answer 429
        alertmanager_url="http://127.0.0.1:9",  # silences fail fast: Alertmanager unreachable
    ) as client:
        yield client


def test_console_forms_answer_4xx_or_act_never_5xx(console: TestClient) -> None:
    execution = console.get("/api/v1/executions").json()["items"][0]["id"]

    @FUZZ
    @given(form=st.sampled_from(sorted(FORMS)), data=st.data())
    def one_form(form: str, data: st.DataObject) -> None:
        log_in(console, "root")
        token = csrf(console, "/incidents")
        fields = {name: data.draw(hostile, label=name) for name in FORMS[form] if data.draw(st.booleans())}
        path = form.format(incident=1, execution=execution)
        answer = console.post(path, data={"csrf_token": token, **fields}, follow_redirects=False)
        assert answer.status_code < 500 or answer.status_code == 503, f"{path} {fields!r}: {answer.status_code}"
        assert answer.status_code in (303, 200) or "text/html" in answer.headers["content-type"], answer.text[:200]
        if answer.status_code == 503:  # only a silence may say so: Alertmanager is unreachable here
            assert path.endswith("/silence"), f"{path} {fields!r}: {answer.text[:300]}"

    one_form()


def test_console_pages_and_api_reads_with_hostile_parameters(console: TestClient) -> None:
    log_in(console, "root")
    spec = console.get("/openapi.json").json()
    reads = {
        re.sub(r"\{[^}]+\}", "1", path): [p["name"] for p in ops["get"].get("parameters", []) if p["in"] == "query"]
        for path, ops in spec["paths"].items()
        if "get" in ops and path.startswith("/api/v1")
    }
    targets = {**PAGES, **{path: names for path, names in reads.items() if names}}
    assert {"/incidents", "/login", "/api/v1/incidents", "/api/v1/alerts", "/api/v1/executions"} <= targets.keys()

    @FUZZ
    @given(path=st.sampled_from(sorted(targets)), data=st.data())
    def one_read(path: str, data: st.DataObject) -> None:
        params = {name: data.draw(hostile, label=name) for name in targets[path] if data.draw(st.booleans())}
        answer = console.get(path, params=params, follow_redirects=False)
        assert answer.status_code < 500, f"GET {path} {params!r}: {answer.status_code} {answer.text[:300]}"

    one_read()
