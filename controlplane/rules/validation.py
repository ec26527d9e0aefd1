"""Owns schema validation of one parsed rule file into located items, salvaging what it can of a broken file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from controlplane.rules.matchers import Matcher
from controlplane.rules.messages import pydantic_message, value_kind
from controlplane.rules.schema import FailoverGroup, Playbook, Rule, RuleFile, Step, Target
from controlplane.rules.source import KeyPath, Source

M = TypeVar("M", bound=BaseModel)


@dataclass
class Item(Generic[M]):
    """One rule, playbook, target or failover group of a file, with where it sits, so errors name its line."""

    source: Source
    index: int
    model: M
    matchers: list[Matcher] = field(default_factory=list)
    # For playbooks: (index, the step if valid, its id); a playbook that failed validation
    # keeps its valid steps here, so their errors are reported in the same run.
    steps: list[tuple[int, Step | None, str | None]] = field(default_factory=list)

    def at(self, *parts: str | int) -> KeyPath:
        return (_SECTION[type(self.model)], self.index, *parts)

    def error(self, message: str, *parts: str | int) -> None:
        self.source.error(self.at(*parts), message)


_SECTION: dict[type, str] = {Rule: "rules", Playbook: "playbooks", Target: "targets", FailoverGroup: "failover"}


@dataclass
class Loaded:
    """Everything the files of one directory hold, gathered for the cross-checks."""

    rules: list[Item[Rule]] = field(default_factory=list)
    playbooks: list[Item[Playbook]] = field(default_factory=list)
    # Playbooks that failed validation: checked step by step, and not reported as missing.
    broken_playbooks: list[Item[Playbook]] = field(default_factory=list)
    # Rules that failed validation, with a readable `match:` that is still checked.
    broken_rules: list[Item[Rule]] = field(default_factory=list)
    targets: list[Item[Target]] = field(default_factory=list)
    failover: list[Item[FailoverGroup]] = field(default_factory=list)


def validate_file(source: Source, loaded: Loaded) -> None:
    """Validate one file against the schema into `loaded`; each problem goes to the file's errors."""
    data = source.data
    if data is None:
        return
    if not isinstance(data, dict):
        source.error((), f"a rule file is a mapping with `rules:` and `playbooks:` lists, not {value_kind(data)}")
        return
    try:
        parsed = RuleFile.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = (*err["loc"], *(err.get("ctx") or {}).get("at", ()))
            source.error(loc, pydantic_message(err, loc))
        _salvage(source, loaded)  # so one bad rule does not hide the other rules' errors
        return
    loaded.rules.extend(Item(source, i, r) for i, r in enumerate(parsed.rules))
    loaded.playbooks.extend(_playbook_item(source, i, p) for i, p in enumerate(parsed.playbooks))
    loaded.targets.extend(Item(source, i, t) for i, t in enumerate(parsed.targets))
    loaded.failover.extend(Item(source, i, g) for i, g in enumerate(parsed.failover))


def _playbook_item(source: Source, index: int, playbook: Playbook) -> Item[Playbook]:
    return Item(source, index, playbook, steps=[(j, step, step.id) for j, step in enumerate(playbook.steps)])


def _salvage(source: Source, loaded: Loaded) -> None:
    rules, playbooks = source.data.get("rules"), source.data.get("playbooks")
    for i, raw in enumerate(rules if isinstance(rules, list) else []):
        try:
            loaded.rules.append(Item(source, i, Rule.model_validate(raw)))
        except ValidationError:
            match = raw.get("match") if isinstance(raw, dict) else None
            if isinstance(match, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in match.items()):
                loaded.broken_rules.append(Item(source, i, Rule.model_construct(match=match)))
    for i, raw in enumerate(playbooks if isinstance(playbooks, list) else []):
        try:
            loaded.playbooks.append(_playbook_item(source, i, Playbook.model_validate(raw)))
        except ValidationError:
            if isinstance(raw, dict):
                loaded.broken_playbooks.append(_broken_playbook(source, i, raw))


def _broken_playbook(source: Source, index: int, raw: dict[Any, Any]) -> Item[Playbook]:
    name = raw.get("name")
    playbook = Playbook.model_construct(name=name if isinstance(name, str) else "", steps=[])
    item = Item(source, index, playbook)
    steps = raw.get("steps")
    for j, step in enumerate(steps if isinstance(steps, list) else []):
        step_id = step.get("id") if isinstance(step, dict) and isinstance(step.get("id"), str) else None
        try:
            item.steps.append((j, Step.model_validate(step), step_id))
        except ValidationError:
            item.steps.append((j, None, step_id))
    return item
