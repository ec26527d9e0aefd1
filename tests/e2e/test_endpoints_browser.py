"""The Endpoints page in a real browser (Debian's chromium through Playwright): a failover group whose primary
is checked by heartbeat and whose backup by HTTP, as on-call sees it once the primary's pod has registered.
The screenshot lands in tests/artifacts/endpoints.png."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, make_settings
from tests.e2e.conftest import serve
from tests.e2e.test_console_browser import ARTIFACTS, Served, log_in
from tests.helpers import console_users
from tests.integration.test_failover import HealthServer

pytestmark = pytest.mark.slow

RULES = """
rules: []
failover:
  - service: agents
    interval: 1s
    heartbeat_timeout: 10s
    endpoints:
      - {{name: primary, url: "http://primary.invalid:8000", region: eu-west, checks: heartbeat}}
      - {{name: backup, url: "{backup}", region: us-east, priority: 1}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("endpoints")
    backup = HealthServer()
    (root / "rules").mkdir()
    (root / "rules" / "rules.yaml").write_text(RULES.format(backup=backup.url))
    settings = make_settings(
        f"sqlite:///{root}/controlplane.db",
        rules_dir=root / "rules",
        console_users=console_users(operator="operator"),
        session_secret="browser-test-session-secret-0123456789",
        console_refresh_seconds=1.0,
    )
    try:
        with serve(settings) as url:
            yield Served(url)
    finally:
        backup.close()


def test_a_heartbeat_registration_shows_beside_its_failover_group(browser: Any, served: Served) -> None:
    beat = {"service": "agents", "endpoint": "primary", "instance": "langgraph-api-7f9c-2"}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the admin token may send heartbeats too
    answer = httpx.post(f"{served.url}/api/v1/endpoints/heartbeat", json=beat, headers=headers)
    assert answer.status_code == 200, answer.text
    page, errors = log_in(browser, served, "operator", viewport={"width": 1280, "height": 900})
    page.goto(f"{served.url}/endpoints")
    registration = page.locator("tr:has(td[data-label=Instance])", has_text="agents/primary")
    registration.wait_for()
    assert "langgraph-api-7f9c-2" in registration.inner_text()
    assert "alive" in registration.inner_text()
    # The primary passes on its heartbeat from the next round on (the live block redraws it), the backup on
    # its probe: both healthy, the primary active, no error left beside it.
    group = page.locator("article.card", has_text="agents")
    group.locator("tr.active", has_text="0 failed").wait_for()
    assert "primary" in group.locator("tr.active").inner_text()
    assert "checked by heartbeat" in group.locator("tr.active").inner_text()  # not probed: no URL shown
    assert group.locator("tr.active .error").count() == 0
    page.locator("tr", has_text="backup").locator("text=healthy").first.wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "endpoints.png"), full_page=True)
    assert errors == []
