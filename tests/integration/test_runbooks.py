"""The runbooks served at /runbooks (rendered Markdown in the console's frame, open without login) and the links the
console makes of an alert's `runbook_url`: every shipped alert's link opens its section, hostile ones never link."""

from __future__ import annotations

import functools
import re
import tempfile
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane import runbooks
from controlplane.app import create_app
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR
from tests.conftest import make_settings
from tests.helpers import console_app, console_users, log_in, post_alerts

USERS = console_users(viewer="viewer")
SHIPPED_ALERTING = DEFAULTS_DIR / "alerting"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    """No alerting/ beside the rules: the packaged runbooks are served. SQLite only: nothing here is the database's."""
    with console_app(f"sqlite:///{tmp_path}/cp.db", "rules: []\n", tmp_path, users=USERS) as client:
        yield client


def stranger(app: TestClient) -> TestClient:
    """A browser with no session and no token: what a link from Slack opens in."""
    return TestClient(app.app)


def shipped_alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in sorted(SHIPPED_ALERTING.glob("*.rules.yaml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_every_shipped_alert_links_a_section_of_a_served_page(app: TestClient) -> None:
    browser = stranger(app)
    pages: dict[str, str] = {}
    alerts = shipped_alerts()
    assert len(alerts) == 28
    for alert in alerts:
        link = runbooks.link(alert["annotations"]["runbook_url"], public_url="https://cp.example")
        assert link is not None and link.startswith("https://cp.example/runbooks/"), link
        path, _, anchor = link.removeprefix("https://cp.example").partition("#")
        if path not in pages:
            response = browser.get(path)
            assert response.status_code == 200, path
            pages[path] = response.text
        assert anchor == alert["alert"].lower()
        assert f'<h2 id="{anchor}">{alert["alert"]}</h2>' in pages[path], anchor


def test_a_runbook_opens_without_login_in_the_consoles_frame(app: TestClient) -> None:
    response = stranger(app).get("/runbooks/RUNBOOKS.md")
    assert response.status_code == 200
    page = response.text
    assert "<title>Runbooks of the alerting rules · controlplane</title>" in page
    assert '<link rel="stylesheet" href="/static/console/console.css">' in page  # the console's look
    assert '<h1 id="runbooks-of-the-alerting-rules">' in page
    # Markdown rendered: lists, inline code; the table of contents links every alert's section.
    assert "<li>Check the backend (PostgreSQL, Redis, S3/MinIO) named in <code>backend_type</code>.</li>" in page
    assert '<a href="#langgraphcheckpointfailures">LangGraphCheckpointFailures</a>' in page
    assert "/login" not in page.split("<main>")[1]  # no login form or redirect, no nav for a stranger
    assert response.headers["content-security-policy"].startswith("default-src 'self'; script-src 'self';")
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]


def test_the_runbook_list_names_each_file_and_its_sections(app: TestClient) -> None:
    response = stranger(app).get("/runbooks")
    assert response.status_code == 200
    assert '<a href="/runbooks/RUNBOOKS.md">Runbooks of the alerting rules</a>' in response.text
    assert '<a href="/runbooks/RUNBOOKS.md#watchdog">Watchdog</a>' in response.text


def test_a_logged_in_user_sees_the_nav_on_a_runbook(app: TestClient) -> None:
    log_in(app, "viewer")
    page = app.get("/runbooks/RUNBOOKS.md").text
    assert '<a href="/runbooks" aria-current="page">Runbooks</a>' in page and "Log out" in page


@pytest.mark.parametrize(
    "path",
    [
        "/runbooks/NOPE.md",
        "/runbooks/controlplane.rules.yaml",  # beside the runbooks, but not one
        "/runbooks/..%2F..%2Fconfig.py",
        "/runbooks/%2Fetc%2Fpasswd",
        "/runbooks/.RUNBOOKS.md",
    ],
)
def test_only_runbook_files_are_served(app: TestClient, path: str) -> None:
    response = stranger(app).get(path)
    assert response.status_code == 404
    if "%2F" not in path:  # a name with a slash matches no route at all
        assert "no runbook" in response.text and "<html" in response.text  # the console's error page


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    name=st.lists(
        st.sampled_from(["\x00", "%", ".", "/", "\\", "~", "\n", " ", "é", "RUNBOOKS", ".md", "..", "%2e", "%2F"]),
        max_size=12,
    ).map("".join)
)
def test_no_name_reaches_past_the_runbook_files(name: str) -> None:
    """Whatever the name, the answer is a runbook or a 4xx: never a 5xx, never another file's content."""
    answer = TestClient(_shared_app()).get("/runbooks/" + quote(name, safe="/%"))
    assert answer.status_code in (200, 400, 404), (name, answer.status_code)
    if answer.status_code == 200:  # a runbook, or (for `/runbooks/`, redirected) their list
        assert '<article class="runbook card">' in answer.text or "<h1>Runbooks</h1>" in answer.text


@functools.cache
def _shared_app() -> Any:
    """One app for every example: the packaged runbooks. Not started: a stranger's page needs no database."""
    directory = Path(tempfile.mkdtemp(prefix="cp-runbooks-"))
    (directory / "rules").mkdir()
    return create_app(make_settings(f"sqlite:///{directory}/cp.db", rules_dir=directory / "rules"))


def test_a_teams_runbooks_beside_their_rules_are_rendered_safely(tmp_path: Path) -> None:
    alerting = tmp_path / "alerting"
    alerting.mkdir()
    (alerting / "team.md").write_text(
        "# Team runbooks\n\n"
        "## DiskFull <script>alert(1)</script>\n\n"
        "<img src=x onerror=alert(2)>\n\n"
        "[click](javascript:alert(3)) [wiki](https://wiki.example/disk) `rm -rf`\n\n"
        "| step | what |\n| --- | --- |\n| 1 | free space |\n\n"
        "## DiskFull <script>alert(1)</script>\n"
    )
    (alerting / "broken.md").write_bytes(b"# Not UTF-8 \xff\n")
    with console_app(f"sqlite:///{tmp_path}/cp.db", "rules: []\n", tmp_path, users=USERS) as client:
        assert stranger(client).get("/runbooks/RUNBOOKS.md").status_code == 404  # theirs, not the packaged ones
        page = stranger(client).get("/runbooks/team.md").text
        listed = stranger(client).get("/runbooks").text  # a file that cannot be read is named, the rest shown
        assert '<a href="/runbooks/team.md">Team runbooks</a>' in listed
        assert "<li><code>broken.md: cannot be read: &#39;utf-8&#39; codec can&#39;t decode" in listed
    article = page.split('<article class="runbook card">')[1].split("</article>")[0]
    assert "<script>" not in page and "<img" not in page and 'href="javascript:' not in page
    assert '<h2 id="diskfull-scriptalert1script">DiskFull &lt;script&gt;alert(1)&lt;/script&gt;</h2>' in article
    assert '<h2 id="diskfull-scriptalert1script-1">' in article  # a repeated heading gets its own id, as on GitHub
    assert '<a href="https://wiki.example/disk">wiki</a>' in article and "<code>rm -rf</code>" in article
    assert "<td>free space</td>" in article


@pytest.mark.parametrize(
    ("runbook_url", "href"),
    [
        ("${CONTROLPLANE_PUBLIC_URL}/runbooks/RUNBOOKS.md#watchdog", "/runbooks/RUNBOOKS.md#watchdog"),
        ("alerting/RUNBOOKS.md#watchdog", "/runbooks/RUNBOOKS.md#watchdog"),
        ("https://wiki.example/runbooks?id=1&x=2", "https://wiki.example/runbooks?id=1&x=2"),
        ("javascript:alert(1)", None),
        ("JavaScript:alert(1)", None),
        ("java\tscript:alert(1)", None),
        ("data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", None),
        ("vbscript:msgbox(1)", None),
        ("//evil.example/runbook", None),
        ("/\\evil.example/runbook", None),
        ('https://x.example/"><script>alert(1)</script>', 'https://x.example/"><script>alert(1)</script>'),
    ],
)
def test_the_incident_page_links_a_runbook_only_when_it_is_safe(
    app: TestClient, runbook_url: str, href: str | None
) -> None:
    (incident_id,) = post_alerts(app, {"fingerprint": "fp-rb", "annotations": {"runbook_url": runbook_url}})
    log_in(app, "viewer")
    page = app.get(f"/incidents/{incident_id}").text
    annotation = page.split("<dt>runbook_url</dt>")[1].split("</dd>")[0]
    assert "<script>" not in page.split("<main>")[1]
    header = page.split('<article class="alert')[1].split("</header>")[0]
    if href is None:
        assert "<a " not in annotation and "runbook ↗" not in header
        assert unescape(annotation.removeprefix("\n      <dd>")) == runbook_url  # shown as text
    else:
        assert [unescape(h) for h in re.findall(r'href="([^"]*)"', annotation)] == [href]
        assert [unescape(h) for h in re.findall(r'href="([^"]*)"[^>]*>runbook ↗', header)] == [href]
