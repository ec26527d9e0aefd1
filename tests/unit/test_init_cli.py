"""`controlplane init DIR`: a starter directory a team edits and keeps in git (rules, alerting rules with their
promtool tests and runbooks, dashboards, a README), copied from the packaged defaults; existing files are
never overwritten without --force."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.cli import main
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR

PARTS = ("rules", "alerting", "dashboards")


def shipped() -> dict[Path, bytes]:
    """Every packaged default file by its path relative to the defaults directory."""
    return {
        path.relative_to(DEFAULTS_DIR): path.read_bytes()
        for part in PARTS
        for path in sorted((DEFAULTS_DIR / part).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_init_writes_every_default_file_and_a_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "ops/controlplane"]) == 0
    starter = tmp_path / "ops" / "controlplane"
    expected = shipped()
    assert Path("alerting/tests/langgraph_test.yaml") in expected and Path("alerting/RUNBOOKS.md") in expected
    for relative, content in expected.items():
        assert (starter / relative).read_bytes() == content, relative
    readme = (starter / "README.md").read_text()
    assert "controlplane check ops/controlplane/rules" in readme
    assert "CONTROLPLANE_RULES_DIR=ops/controlplane/rules" in readme
    assert all(f"`{part}/`" in readme for part in PARTS)
    written = {p.relative_to(starter) for p in starter.rglob("*") if p.is_file()}
    assert written == {*expected, Path("README.md")}  # nothing else (no __init__.py, no caches)
    assert "ops/controlplane" in capsys.readouterr().out


def test_the_starter_directory_passes_check_with_its_own_alerting_and_dashboards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "starter"]) == 0
    capsys.readouterr()
    assert main(["check", "starter/rules"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in out] == [
        "starter/rules",
        "starter/rules/tests",
        "starter/alerting",
        "starter/dashboards",
    ]


def test_init_refuses_to_overwrite_and_writes_nothing_then_force_replaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    starter = tmp_path / "starter"
    (starter / "rules").mkdir(parents=True)
    edited = starter / "rules" / "langgraph.yaml"
    edited.write_text("rules: []\n")
    own = starter / "rules" / "team.yaml"  # a file of the team's that init has no copy of
    own.write_text("rules: []\n")
    assert main(["init", str(starter)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(edited) in err and "--force" in err
    assert edited.read_text() == "rules: []\n"
    assert sorted(p.name for p in starter.rglob("*")) == ["langgraph.yaml", "rules", "team.yaml"]  # nothing new

    assert main(["init", "--force", str(starter)]) == 0
    assert edited.read_bytes() == (DEFAULTS_DIR / "rules" / "langgraph.yaml").read_bytes()
    assert own.read_text() == "rules: []\n"


def test_init_into_a_file_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "taken"
    target.write_text("")
    assert main(["init", str(target)]) == 2
    assert capsys.readouterr().err == f"controlplane: init {target}: not a directory\n"


def test_init_into_an_existing_empty_directory(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path)]) == 0
    assert (tmp_path / "rules" / "langgraph.yaml").is_file()
