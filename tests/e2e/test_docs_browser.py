"""The documentation the service serves, in a real browser (Debian's chromium through Playwright): the API docs
(/docs with Swagger UI, /redoc with ReDoc) render the OpenAPI 3.1 document from vendored assets, and the
runbooks the alert rules link to open (screenshots in tests/artifacts/, which git ignores).

Only a browser proves these: a JavaScript file answering 200 says nothing about whether the page
renders, and Swagger UI 4 answered 200 too while it showed "Unable to render this definition".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import make_settings
from tests.e2e.conftest import serve
from tests.e2e.test_console_browser import ARTIFACTS, WAIT_MS

pytestmark = pytest.mark.slow

WEBHOOK_SUMMARY = "Alertmanager webhook receiver (payload version 4)"  # controlplane/api/webhook.py
WEBHOOK_PATH = "/api/v1/alerts/alertmanager"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("docs")
    settings = make_settings(f"sqlite:///{root}/controlplane.db")
    with serve(settings) as url:
        yield url


class Visit:
    """A page in a fresh context that records what it asked for and what went wrong."""

    def __init__(self, browser: Any, served: str) -> None:
        self.origin = served
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.requested: list[str] = []
        self.blocked: list[str] = []  # refused by the page's Content-Security-Policy: never left the browser
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requested.append(r.url))
        self.page.on(
            "requestfailed", lambda r: self.blocked.append(r.url) if "csp" in (r.failure or "").lower() else None
        )
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def elsewhere(self) -> list[str]:
        """Requests that went to another origin (blob: URLs are the page's own)."""
        own = urlsplit(self.origin).netloc
        return [
            url
            for url in self.requested
            if not url.startswith("blob:") and urlsplit(url).netloc != own and url not in self.blocked
        ]

    def close(self) -> None:
        self.context.close()


def test_swagger_ui_renders_the_openapi_31_document(browser: Any, served: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    visit = Visit(browser, served)
    page = visit.page
    page.goto(served + "/docs")
    operation = page.locator(".opblock", has_text=WEBHOOK_SUMMARY)
    operation.wait_for()
    assert operation.locator(".opblock-summary-path").inner_text() == WEBHOOK_PATH
    assert page.get_by_text("OAS 3.1").is_visible()
    assert "Unable to render" not in page.inner_text("body")
    operation.locator(".opblock-summary").click()  # expanded, it shows an example of the webhook's body
    operation.get_by_text("Request body").wait_for()
    assert '"version": "4"' in operation.inner_text()
    page.screenshot(path=str(ARTIFACTS / "docs-swagger.png"))
    assert visit.elsewhere() == [] and visit.blocked == []
    assert visit.errors == []
    visit.close()


def test_redoc_renders_the_same_operation(browser: Any, served: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    visit = Visit(browser, served)
    page = visit.page
    page.goto(served + "/redoc")
    heading = page.get_by_role("heading", name=WEBHOOK_SUMMARY)
    heading.wait_for()
    assert page.get_by_text(WEBHOOK_PATH).first.is_visible()
    page.get_by_placeholder("Search...").fill("alertmanager")  # the search runs in ReDoc's worker (blob:)
    page.locator("[data-role='search:results']").get_by_text(WEBHOOK_SUMMARY).wait_for()
    page.screenshot(path=str(ARTIFACTS / "docs-redoc.png"))
    assert visit.elsewhere() == []
    # ReDoc's "API docs by Redocly" logo comes from its CDN: the policy stops it, nothing else.
    assert {urlsplit(url).netloc for url in visit.blocked} <= {"cdn.redoc.ly"}
    assert [e for e in visit.errors if "cdn.redoc.ly" not in e] == []
    visit.close()


def test_a_runbook_link_from_an_alert_opens_its_section(browser: Any, served: str) -> None:
    """What on-call gets from Slack at 3 a.m.: no login, the console's look, the alert's section in view."""
    ARTIFACTS.mkdir(exist_ok=True)
    for name, viewport in (
        ("runbook", {"width": 1280, "height": 900}),
        ("runbook-phone", {"width": 390, "height": 844}),
    ):
        visit = Visit(browser, served)
        page = visit.page
        page.set_viewport_size(viewport)
        page.goto(served + "/runbooks/RUNBOOKS.md#controlplanewebhookfailing")
        section = page.locator("h2#controlplanewebhookfailing")
        assert section.inner_text() == "ControlPlaneWebhookFailing"
        assert section.evaluate("e => e.matches(':target')")
        box = section.bounding_box()
        assert box is not None and 0 <= box["y"] < viewport["height"] / 2  # scrolled to, near the top
        assert page.locator("a.brand").is_visible()  # the console's frame
        assert "/login" not in page.url
        page.screenshot(path=str(ARTIFACTS / f"docs-{name}.png"))
        assert visit.elsewhere() == [] and visit.blocked == [] and visit.errors == []
        visit.close()
