"""`controlplane check`: exit 0 with a summary, or exit 1 with one `file:line: message` per error on stderr."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.cli import main
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR
from tests.unit.test_rules_loader import VALID, make_registry, write


@pytest.fixture
def test_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check against the test registry, so these tests do not depend on the built-in actions."""
    registry = make_registry()
    monkeypatch.setattr("controlplane.actions.builtin.build_registry", lambda: registry)


@pytest.mark.usefixtures("test_actions")
def test_valid_rules_exit_0_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"a.yaml": VALID, "b.yaml": ""})
    assert main(["check", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"ok: {tmp_path}: 4 rules, 1 playbook, 2 files\n"
    assert err == ""


@pytest.mark.usefixtures("test_actions")
def test_errors_exit_1_one_line_each_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = VALID.replace("action: test.echo", "action: test.ecko").replace("cooldown: 10m", "cooldown: soon")
    write(tmp_path, {"a.yaml": bad, "b.yaml": "rules: ["})
    assert main(["check", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines == [
        f"{tmp_path}/a.yaml:6: rule \"disable-failing-graph\": guards.cooldown: invalid duration 'soon': use a "
        "number of seconds or e.g. 30s, 5m, 1h30m, 2d",
        f"{tmp_path}/a.yaml:21: playbook \"disable-graph\": steps[0].action: unknown action 'test.ecko' (did you "
        "mean test.echo?)",
        f"{tmp_path}/b.yaml:1: invalid YAML: expected the node content, but found '<stream end>' (while parsing a "
        "flow node)",
    ]
    assert all(re.match(r"^\S+:\d+: ", line) for line in lines)


def test_default_directory_is_the_rules_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "rules", {"a.yaml": "rules: []\nplaybooks: []\n"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTROLPLANE_RULES_DIR", "rules")
    assert main(["check"]) == 0  # with the built-in actions
    assert capsys.readouterr().out == "ok: rules: 0 rules, 0 playbooks, 1 file\n"


def test_without_the_setting_the_packaged_defaults_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "rules", {"a.yaml": "rules: ["})  # ./rules is no longer the default: never read
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONTROLPLANE_RULES_DIR", raising=False)
    assert main(["check"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"ok: {DEFAULTS_DIR / 'rules'}: ") and " 0 rules" not in first


@pytest.mark.parametrize("make", ["missing", "file"])
def test_check_refuses_an_unusable_rules_directory_in_one_line(
    make: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rules"
    if make == "file":
        path.write_text("rules: []\n")
    problem = "no such directory" if make == "missing" else "not a directory"
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err == f"controlplane: rules directory {path} (the command line): {problem}\n"
    monkeypatch.setenv("CONTROLPLANE_RULES_DIR", str(path))
    assert main(["check"]) == 2
    assert capsys.readouterr().err == f"controlplane: rules directory {path} (CONTROLPLANE_RULES_DIR): {problem}\n"
