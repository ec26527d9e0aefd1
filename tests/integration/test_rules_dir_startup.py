"""Where `serve` and `check` get their rules: the packaged defaults when CONTROLPLANE_RULES_DIR is unset (said in
one start-up log line), and a rules directory that is missing, not a directory, or holds a bad file stops them
with a clear message and exit status 2, never a traceback. `serve` runs as a real process here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.defaults import RULES_DIR
from tests.helpers import wait_until_serving
from tests.integration.serverproc import LOOPBACK, free_port

pytestmark = pytest.mark.slow

SETTING = "CONTROLPLANE_RULES_DIR"
START_TIMEOUT = 60.0


def serve_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env.update(
        {
            "CONTROLPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/cp.db",
            "CONTROLPLANE_LISTEN_HOST": LOOPBACK,
            "CONTROLPLANE_LOG_LEVEL": "info",
            **{f"CONTROLPLANE_{name.upper()}": value for name, value in settings.items()},
        }
    )
    return env


def serve_until_exit(tmp_path: Path, rules_dir: Path) -> subprocess.CompletedProcess[str]:
    """`controlplane serve` that is expected to stop by itself; a server that starts is killed at the deadline."""
    env = serve_env(tmp_path, rules_dir=str(rules_dir), listen_port=str(free_port()))
    try:
        return subprocess.run(
            [sys.executable, "-m", "controlplane", "serve"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"serve still running after {START_TIMEOUT:g}s with rules dir {rules_dir}:\n{exc.stdout}")


def assert_one_clear_line(result: subprocess.CompletedProcess[str], path: Path, problem: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"controlplane: rules directory {path} ({SETTING}): {problem}"]


def test_serve_refuses_a_missing_rules_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-rules"
    assert_one_clear_line(serve_until_exit(tmp_path, missing), missing, "no such directory")


def test_serve_refuses_a_file_for_a_rules_directory(tmp_path: Path) -> None:
    file = tmp_path / "rules.yaml"
    file.write_text("rules: []\n")
    assert_one_clear_line(serve_until_exit(tmp_path, file), file, "not a directory")


def test_serve_refuses_bad_rule_files_naming_each_error_at_its_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text("rules:\n  - name: x\n    match: {alertname: A}\n    playbook: nowhere\n")
    result = serve_until_exit(tmp_path, rules)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    *errors, last = result.stderr.splitlines()
    assert errors == [f"{rules}/a.yaml:4: rule \"x\": playbook: no playbook named 'nowhere'"]
    assert last == f"controlplane: rules directory {rules} ({SETTING}): 1 error; not serving"


def test_serve_without_the_setting_uses_the_packaged_rules_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "serve"],
            cwd=tmp_path,  # no ./rules here, nor anywhere relative to it
            env=serve_env(tmp_path, listen_port=str(port), prometheus_url=f"http://{LOOPBACK}:{free_port()}"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(f"http://{LOOPBACK}:{port}/ready", proc, log_path.read_text, START_TIMEOUT)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    [defaults] = [e for e in events if e["event"] == "rules.defaults"]
    assert defaults["directory"] == str(RULES_DIR)
    assert SETTING in defaults["hint"]
    [loaded] = [e for e in events if e["event"] == "rules.loaded"]
    assert (loaded["directory"], loaded["rules"] > 0) == (str(RULES_DIR), True)
