"""`controlplane test FILE|DIR...`: run scenario tests of rule files, in the manner of `promtool test rules`.

Each scenario (schema.py says the format) feeds its alerts, over a fake clock, through the
service's own ingest, guards and planning against in-memory targets (runner.py, world.py), and
compares what came of it with its `expect` section (expect.py). Nothing is called or sent; the
database is a temporary SQLite file. A directory means its `*.yaml` files.

The rules are the directory above the scenario file (`rules/tests/x.yaml` tests `rules/`), or
the scenario's `rules:` (relative to its file), or `--rules DIR` for all. `controlplane check`
runs the scenarios in `<rules>/tests/` when there are any.

Exit 0 when every scenario passes, 1 when one fails (each mismatch as `file:line: message`, then
a diff), 2 when a file cannot be read or the rules do not load. `--print` shows what came of each
scenario as YAML, to write or update its `expect`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controlplane.actions.base import ActionRegistry
from controlplane.config import Settings
from controlplane.rules.loader import SUFFIXES, RuleLoadError, RuleSet, load_rules
from controlplane.scenarios.expect import actual_sections, compare
from controlplane.scenarios.runner import run_scenario
from controlplane.scenarios.schema import HttpTarget, KubernetesTarget, Scenario, ScenarioFile, read_scenarios, report
from controlplane.scenarios.world import World


@dataclass
class TestRun:
    """What a run of scenario files found: `errors` are files or rules that could not be used (exit 2)."""

    passed: int = 0
    failed: list[str] = field(default_factory=list)  # a heading and its mismatch lines, per failed scenario
    errors: list[str] = field(default_factory=list)
    printed: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.failed else 0


def scenario_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        else:
            files.append(path)
    return files


def run_files(paths: list[Path], *, rules_dir: Path | None = None, show: bool = False) -> TestRun:
    from controlplane.actions.builtin import build_registry

    registry = build_registry()
    loaded: dict[tuple[Path, frozenset[str]], RuleSet | None] = {}  # None: they do not load (reported once)
    result = TestRun()
    for path in scenario_files(paths):
        parsed, problems = read_scenarios(path)
        if parsed is None:
            result.errors += [str(p) for p in problems] or [f"{path}: cannot be read"]
            continue
        for at, scenario in parsed.scenarios:
            directory = _rules_dir(path, scenario, rules_dir)
            key = (directory, frozenset(scenario.enable))
            if key not in loaded:
                try:
                    loaded[key] = load_rules(directory, registry, enable=key[1])
                except RuleLoadError as exc:
                    loaded[key] = None
                    result.errors += [f"{path}: the rules in {directory} do not load:"] + [f"  {e}" for e in exc.errors]
            rules = loaded[key]
            if rules is not None:
                _run_one(parsed, at, scenario, rules, registry, result, show=show)
    return result


def check_rule_tests(rules_dir: Path) -> tuple[list[str], str]:
    """`controlplane check`'s part: the scenarios in `<rules_dir>/tests/`, if any. (errors, summary)."""
    tests = rules_dir / "tests"
    if not tests.is_dir() or not scenario_files([tests]):
        return [], ""
    from controlplane.actions.builtin import build_registry

    try:
        load_rules(rules_dir, build_registry())
    except RuleLoadError:
        return [], ""  # the rules' own check reports it; their tests cannot run
    result = run_files([tests], rules_dir=rules_dir)
    total = result.passed + len(result.failed)
    return result.errors + result.failed, f"{tests}: {total} scenarios passed (controlplane test)"


def _rules_dir(path: Path, scenario: Scenario, given: Path | None) -> Path:
    if given is not None:
        return given
    if scenario.rules is not None:
        return (path.parent / scenario.rules).resolve()
    return path.resolve().parent.parent


def _run_one(
    file: ScenarioFile,
    at: tuple[str | int, ...],
    scenario: Scenario,
    rules: RuleSet,
    registry: ActionRegistry,
    result: TestRun,
    *,
    show: bool,
) -> None:
    title = f"{file.path}:{file.line(at) if at else 1}: scenario {scenario.name or '(unnamed)'!r}"
    for index, name in enumerate(scenario.enable):
        if rules.rule(name) is None:
            file.source.error((*at, "enable", index), f"no rule {name!r} in the rules")
    world = _world(file, at, scenario, rules)
    if world is None or file.source.errors:
        result.errors += [str(e) for e in file.source.errors]
        file.source.errors.clear()
        return
    outcome = run_scenario(scenario, rules=rules, registry=registry, world=world, settings=_settings())
    if show:
        shown = {"scenario": scenario.name, "outcome": actual_sections(outcome), "targets_at_end": outcome.world}
        result.printed.append(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, width=200))
    mismatches = compare(file, at, scenario, outcome)
    if mismatches:
        result.failed.append("\n".join([f"FAILED {title}", *("  " + line for line in mismatches)]))
    else:
        result.passed += 1


def _world(file: ScenarioFile, at: tuple[str | int, ...], scenario: Scenario, rules: RuleSet) -> World | None:
    """The scenario's targets, each checked against its kind in the rules; None when one is wrong (errors added)."""
    world = World(targets=rules.targets)
    ok = True
    for name, raw in scenario.targets.items():
        target = rules.targets.get(name)
        where = (*at, "targets", name)
        if target is None:
            known = ", ".join(sorted(rules.targets)) or "none"
            file.source.error(where, f"no such target in the rules (they define: {known})")
            ok = False
            continue
        model: Any = HttpTarget if target.kind == "http" else KubernetesTarget
        try:
            world.add(target, model.model_validate(raw))
        except ValidationError as exc:
            report(file.source, where, exc)
            ok = False
    return world if ok else None


def _settings() -> Settings:
    """The service's defaults, not this machine's environment: a scenario means the same everywhere."""
    return Settings.model_construct()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = sub.add_parser(
        "test",
        help="run scenario tests of rule files: alerts over a fake clock, expected executions, plans and pages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR", help="scenario files, or directories of them")
    test.add_argument("--rules", type=Path, help="test this rules directory instead of the one beside each file")
    test.add_argument("--print", dest="show", action="store_true", help="print what came of each scenario as YAML")
    test.set_defaults(func=cmd_test)


def cmd_test(args: argparse.Namespace) -> int:
    result = run_files(args.paths, rules_dir=args.rules, show=args.show)
    for text in result.printed:
        print("---")
        print(text, end="")
    sys.stdout.flush()  # the report follows on stderr
    for error in result.errors:
        print(error, file=sys.stderr)
    for failure in result.failed:
        print(failure, file=sys.stderr)
    total = result.passed + len(result.failed)
    if total == 0 and not result.errors:
        print("controlplane test: no scenarios found", file=sys.stderr)
        return 2
    print(f"{result.passed} of {total} scenarios passed", file=sys.stderr if result.exit_code else sys.stdout)
    return result.exit_code
