"""Owns loading rules/*.yaml into a RuleSet, reporting every problem as `file:line: message` in one RuleLoadError.

A bad rule file must fail `controlplane check` in CI, not a playbook at 3 a.m., so beyond the
schema this checks what only the whole directory and the action registry know: names unique
across files, playbooks and actions that exist, step params against each action's params model,
regexes, templates and `steps.<id>` references. Any content, however odd, ends in RuleLoadError.
Each file is read (source.py), validated against the schema (validation.py), then the whole set is
cross-checked (crosscheck.py); this module orders those steps and builds the RuleSet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.actions.base import ActionRegistry
from controlplane.rules.crosscheck import Checker
from controlplane.rules.index import RuleIndex
from controlplane.rules.schema import FailoverGroup, Playbook, Rule, Target
from controlplane.rules.source import RuleFileError, read_source
from controlplane.rules.validation import Loaded, validate_file

__all__ = ["SUFFIXES", "RuleFileError", "RuleLoadError", "RuleSet", "RulesDirectoryError", "load_rules"]

SUFFIXES = (".yaml", ".yml")


class RuleLoadError(Exception):
    """The rules directory has errors; `errors` holds all of them, sorted by file and line."""

    def __init__(self, errors: list[RuleFileError]) -> None:
        self.errors = sorted(errors, key=lambda e: (str(e.file), e.line))
        super().__init__("\n".join(str(e) for e in self.errors))


class RulesDirectoryError(RuleLoadError):
    """The rules directory itself cannot be read (missing, not a directory, unreadable): a setting to fix,
    not a rule. `problem` says which, without the path."""

    def __init__(self, directory: Path, problem: str) -> None:
        self.directory = directory
        self.problem = problem
        super().__init__([RuleFileError(directory, 0, f"rules directory: {problem}")])


@dataclass(frozen=True)
class RuleSet:
    """Validated rules and playbooks. `rules` holds every rule in file order, disabled ones too."""

    rules: list[Rule] = field(default_factory=list)
    playbooks: dict[str, Playbook] = field(default_factory=dict)
    index: RuleIndex[Rule] = field(default_factory=lambda: RuleIndex([]))  # enabled alert rules
    metric_rules: list[Rule] = field(default_factory=list)  # enabled metric rules
    files: list[Path] = field(default_factory=list)
    targets: dict[str, Target] = field(default_factory=dict)
    failover: dict[str, FailoverGroup] = field(default_factory=dict)  # by service

    @classmethod
    def empty(cls) -> RuleSet:
        return cls()

    def match(self, labels: Mapping[str, str]) -> list[Rule]:
        """Enabled alert rules whose matchers all hold for `labels`, in file order."""
        return self.index.match(labels)

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def load_rules(directory: Path, registry: ActionRegistry, *, enable: frozenset[str] = frozenset()) -> RuleSet:
    """Load and check every *.yaml / *.yml file directly in `directory`; raise RuleLoadError listing all errors.

    Rules named in `enable` count as enabled whatever their files say (a scenario test of a rule
    that is not switched on yet, scenarios/).
    """
    if not directory.is_dir():
        raise RulesDirectoryError(directory, "not a directory" if directory.exists() else "no such directory")
    try:
        entries = list(directory.iterdir())
    except OSError as exc:  # e.g. a mount the service's user may not list
        raise RulesDirectoryError(directory, exc.strerror or type(exc).__name__) from None
    paths = sorted(
        (p for p in entries if p.suffix in SUFFIXES and p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    errors: list[RuleFileError] = []
    loaded = Loaded()
    for path in paths:
        source = read_source(path, errors)
        if source is not None:
            validate_file(source, loaded)
    Checker(registry, loaded).run()
    if errors:
        raise RuleLoadError(errors)
    rules = [
        item.model.model_copy(update={"enabled": True}) if item.model.name in enable else item.model
        for item in loaded.rules
    ]
    matchers = {item.model.name: item.matchers for item in loaded.rules}
    return RuleSet(
        rules=rules,
        playbooks={item.model.name: item.model for item in loaded.playbooks},
        index=RuleIndex((r, matchers[r.name]) for r in rules if r.enabled and r.match is not None),
        metric_rules=[r for r in rules if r.enabled and r.when is not None],
        files=paths,
        targets={item.model.name: item.model for item in loaded.targets},
        failover={item.model.service: item.model for item in loaded.failover},
    )
