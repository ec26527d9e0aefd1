"""The package is whole: a wheel built from this tree and installed into a fresh virtualenv outside it runs
from an unrelated working directory with nothing but what the wheel carries.

`controlplane check`, `migrate` and `serve` from a temporary directory with no CONTROLPLANE_* variable but
the test's: the console's templates and static files, the Alembic migrations, the default rules, the
dashboards and alerting rules, and the API docs' assets all come from the installed package (or its
dependencies), never from this source tree. One wheel, one virtualenv, one server start: the
dependencies come from the package index through pip's cache, so later runs are quick.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controlplane.db import migrate
from controlplane.db.engine import make_engine
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR
from tests.conftest import DATA, WEBHOOK
from tests.helpers import wait_until_serving
from tests.integration.serverproc import LOOPBACK, free_port

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 420.0
COMMAND_TIMEOUT = 120.0
WEBHOOK_TOKEN = "packaging-webhook-token-0123456789"
READ_TOKEN = "packaging-read-token-0123456789"
PASSWORD = "a console password for the packaging test"
# Environment that would make the venv's python see something else than the installed package.
LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")
# Not a user's default: with it, each command below would compile everything it imports again (the install
# leaves the compiling to the first run, see `installed`).
NOT_A_USERS = ("PYTHONDONTWRITEBYTECODE",)


@dataclass(frozen=True)
class Installed:
    venv: Path
    workdir: Path  # an unrelated working directory, outside the source tree

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def controlplane(self) -> Path:
        return self.venv / "bin" / "controlplane"

    def env(self, **settings: str) -> dict[str, str]:
        """This process's environment without CONTROLPLANE_* or Python path variables, plus `settings`."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CONTROLPLANE_") and k not in LEAKY and k not in NOT_A_USERS
        }
        return {**env, **{f"CONTROLPLANE_{name.upper()}": value for name, value in settings.items()}}

    def run(self, *args: str, stdin: str | None = None, **settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.controlplane), *args],
            cwd=self.workdir,
            env=self.env(**settings),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )


def _run(command: list[str], *, timeout: float, cwd: Path, env: Mapping[str, str]) -> None:
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(command)}: still running after {timeout:g}s\n{exc.stdout}\n{exc.stderr}")
    assert result.returncode == 0, f"{' '.join(command)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    print(f"{' '.join(command[:4])}: {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="module")
def installed(project_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of the tree (built from a copy of what a source distribution holds, outside the tree: see
    tests/project_wheel.py), installed into a new virtualenv; everything in a temporary directory."""
    root = tmp_path_factory.mktemp("packaging")
    assert not root.resolve().is_relative_to(SOURCE)
    installed = Installed(venv=root / "venv", workdir=root / "work")
    installed.workdir.mkdir()
    env = installed.env(PIP_NO_INPUT="1")
    # A virtualenv without pip of its own, filled by this pip run with the venv's interpreter (--python): the
    # package needs no pip at run time, and seeding one takes seconds. No byte-compiling of every dependency
    # at install: the commands below compile what they import, once, as a first run does.
    _run(
        [sys.executable, "-m", "venv", "--without-pip", str(installed.venv)], timeout=COMMAND_TIMEOUT, cwd=root, env=env
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(installed.python),
            "install",
            "--no-input",
            "--no-compile",
            str(project_wheel),
        ],
        timeout=INSTALL_TIMEOUT,
        cwd=root,
        env=env,
    )
    return installed


@pytest.fixture(scope="module")
def server(installed: Installed) -> Iterator[str]:
    """`controlplane serve` of the installed package with the packaged default rules (CONTROLPLANE_RULES_DIR
    unset). Prometheus, Alertmanager and paging point nowhere: the default playbooks fail at their first step."""
    hashed = installed.run("hash-password", stdin=f"{PASSWORD}\n")
    assert hashed.returncode == 0, hashed.stderr
    port = free_port()
    nowhere = f"http://{LOOPBACK}:{free_port()}"
    settings = {
        "database_url": f"sqlite:///{installed.workdir}/controlplane.db",
        "listen_host": LOOPBACK,
        "listen_port": str(port),
        "webhook_token": WEBHOOK_TOKEN,
        "read_token": READ_TOKEN,
        "console_users": json.dumps([{"name": "sre", "role": "operator", "password_hash": hashed.stdout.strip()}]),
        "prometheus_url": nowhere,
        "alertmanager_url": nowhere,
        "notify_routes": json.dumps({"*": "log"}),
    }
    log_path = installed.workdir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(installed.controlplane), "serve"],
            cwd=installed.workdir,
            env=installed.env(**settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_until_serving(
            f"{url}/ready", proc, lambda: log_path.read_text(errors="replace")[-4000:], 60.0, name="serve"
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _log_events(installed: Installed) -> list[dict[str, Any]]:
    lines = (installed.workdir / "serve.log").read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _inside(path: str, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory.resolve())


def test_the_installed_package_is_what_runs(installed: Installed) -> None:
    where = subprocess.run(
        [str(installed.python), "-c", "import controlplane; print(controlplane.__file__)"],
        cwd=installed.workdir,
        env=installed.env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=True,
    ).stdout.strip()
    assert _inside(where, installed.venv), where
    assert not _inside(where, SOURCE), where


def test_check_and_migrate_from_an_unrelated_directory(installed: Installed) -> None:
    check = installed.run("check")
    assert check.returncode == 0, check.stdout + check.stderr
    # The packaged defaults: rules, their scenario tests, and the alerting rules and dashboards beside them.
    summaries = check.stdout.splitlines()
    assert len(summaries) == 4, check.stdout
    assert "scenarios passed" in summaries[1], check.stdout
    assert all(_inside(line.removeprefix("ok: ").split(":")[0], installed.venv) for line in summaries), check.stdout

    database = installed.workdir / "migrated.db"
    migrated = installed.run("migrate", database_url=f"sqlite:///{database}")
    assert migrated.returncode == 0, migrated.stderr
    engine = make_engine("sqlite://")  # not connected: only for the source tree's newest revision
    try:
        head = migrate.head_revision(engine)
    finally:
        engine.dispose()
    assert f"database at revision {head}" in migrated.stdout  # every migration of the tree was shipped


def test_serve_says_it_uses_the_packaged_default_rules(installed: Installed, server: str) -> None:
    [event] = [e for e in _log_events(installed) if e.get("event") == "rules.defaults"]
    assert _inside(event["directory"], installed.venv), event
    [loaded] = [e for e in _log_events(installed) if e.get("event") == "rules.loaded"]
    assert loaded["rules"] > 0, loaded


def test_console_login_and_an_incident_page_render(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10.0) as browser:
        login = browser.get("/login")
        assert login.status_code == 200
        assert re.search(r'<form[^>]*method="post"', login.text) and 'name="password"' in login.text
        for asset in re.findall(r'(?:href|src)="(/static/console/[^"?]+)', login.text):
            assert browser.get(asset).status_code == 200, asset
        posted = httpx.post(
            f"{server}{WEBHOOK}",
            content=(DATA / "alertmanager_firing.json").read_bytes(),
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"},
            timeout=10.0,
        )
        assert posted.status_code == 200, posted.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
        assert token is not None
        signed_in = browser.post(
            "/login", data={"csrf_token": token[1], "username": "sre", "password": PASSWORD}, follow_redirects=False
        )
        assert signed_in.status_code == 303, signed_in.text
        incidents = httpx.get(
            f"{server}/api/v1/incidents", headers={"Authorization": f"Bearer {READ_TOKEN}"}, timeout=10.0
        ).json()
        [incident] = incidents["items"]
        page = browser.get(f"/incidents/{incident['id']}")
        assert page.status_code == 200
        assert "LangGraphHighErrorRate" in page.text and "support_bot" in page.text


def test_dashboards_and_alerting_rules_download(server: str) -> None:
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {READ_TOKEN}"}, timeout=10.0) as api:
        dashboards = api.get("/api/v1/dashboards")
        assert dashboards.status_code == 200
        uids = [d["uid"] for d in dashboards.json()]
        shipped = [json.loads(p.read_text())["uid"] for p in (DEFAULTS_DIR / "dashboards").glob("*.json")]
        assert sorted(uids) == sorted(shipped), uids  # every dashboard of the source tree, from the wheel
        for uid in uids:
            board = api.get(f"/api/v1/dashboards/{uid}")
            assert board.status_code == 200
            assert board.json()["uid"] == uid
        rules = api.get("/api/v1/alerting/rules")
        assert rules.status_code == 200
        alerts = {r["alert"] for g in yaml.safe_load(rules.text)["groups"] for r in g["rules"] if "alert" in r}
        assert "LangGraphHighErrorRate" in alerts


def test_the_api_docs_and_runbooks_load_with_their_assets(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10.0) as browser:
        assets: list[str] = []
        for page in ("/docs", "/redoc"):
            docs = browser.get(page)
            assert docs.status_code == 200
            assets += re.findall(r'(?:href|src)="(/static/console/apidocs/[^"]+)"', docs.text)
        assert {Path(a).name for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"}
        for asset in assets:
            assert browser.get(asset).status_code == 200, asset
        assert browser.get("/openapi.json").status_code == 200
        # The runbooks the alert rules link to: the packaged Markdown, rendered by a dependency.
        runbook = browser.get("/runbooks/RUNBOOKS.md")
        assert runbook.status_code == 200
        assert '<h2 id="langgraphhigherrorrate">LangGraphHighErrorRate</h2>' in runbook.text


def test_init_writes_a_starter_directory_that_checks(installed: Installed) -> None:
    written = installed.run("init", "starter")
    assert written.returncode == 0, written.stderr
    starter = installed.workdir / "starter"
    for part in ("rules", "rules/tests", "alerting", "alerting/tests", "dashboards"):
        assert any((starter / part).iterdir()), part
    assert (starter / "alerting" / "RUNBOOKS.md").is_file()
    assert "CONTROLPLANE_RULES_DIR=starter/rules" in (starter / "README.md").read_text()
    check = installed.run("check", "starter/rules")
    assert check.returncode == 0, check.stdout + check.stderr
    assert all(line.startswith("ok: starter/") for line in check.stdout.splitlines()), check.stdout
    again = installed.run("init", "starter")
    assert again.returncode == 2
    assert "--force" in again.stderr
