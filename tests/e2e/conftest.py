"""What the browser tests share: Debian's chromium, driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from controlplane.app import create_app
from controlplane.config import Settings
from tests.conftest import require_binary
from tests.helpers import serve_in_thread

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One Chromium for the browser tests of this directory: each test opens a fresh context (own cookies,
    storage and pages), so a browser of its own would only cost another start."""
    executable = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(autouse=True)
def _close_browser_contexts(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test's browser contexts close when it ends: the next test finds the shared browser as it was."""
    browser = request.getfixturevalue("browser") if "browser" in request.fixturenames else None
    yield
    if browser is not None:
        for context in list(browser.contexts):
            context.close()


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The whole app (workers, scheduler) served by uvicorn in a thread, as `controlplane serve` would; its URL."""
    with serve_in_thread(create_app(settings)) as url:
        yield url
