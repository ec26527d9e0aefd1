"""Owns the rule checks that need the whole directory and the action registry: names, references, params, templates.

Names unique across files, playbooks, actions and targets that exist, step params against each
action's params model, matcher regexes, label names, template syntax and `steps.<id>` references
(only to earlier steps). Each problem is reported at its item's line through `Item.error`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, PydanticUserError, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from controlplane.actions.base import ActionRegistry, ActionSpec
from controlplane.rules import templates
from controlplane.rules.matchers import LABEL_NAME, parse_matcher
from controlplane.rules.messages import did_you_mean, pydantic_message
from controlplane.rules.schema import Playbook, Rule, Step
from controlplane.rules.source import KeyPath
from controlplane.rules.validation import Item, Loaded

_ADAPTERS: dict[tuple[type[BaseModel], str], TypeAdapter[Any] | None] = {}


def _adapter(model: type[BaseModel], name: str, info: FieldInfo) -> TypeAdapter[Any] | None:
    """Validates one param value like the model's field would (type and constraints, not validators)."""
    key = (model, name)
    if key not in _ADAPTERS:
        annotation: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        try:
            _ADAPTERS[key] = TypeAdapter(annotation)
        except PydanticUserError:  # a type pydantic only accepts inside its model: checked at run time
            _ADAPTERS[key] = None
    return _ADAPTERS[key]


def _strings(value: Any, at: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, str):
        yield at, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*at, i))


def _has_template(value: Any) -> bool:
    return any(templates.is_template(text) for _, text in _strings(value, ()))


@dataclass
class _Scope:
    """Step ids a template may read: those of earlier steps; `all` tells "runs later" from "no such step"."""

    earlier: set[str] = field(default_factory=set)
    all: set[str] = field(default_factory=set)


class Checker:
    """Runs the checks beyond each file's schema: across items, against the action registry, inside templates."""

    def __init__(self, registry: ActionRegistry, loaded: Loaded) -> None:
        self.registry = registry
        self.loaded = loaded

    def run(self) -> None:
        self._unique(self.loaded.rules, "rule")
        self._unique(self.loaded.playbooks, "playbook")
        self._unique(self.loaded.targets, "target")
        self._unique(self.loaded.failover, "failover service", key="service")
        self._step_targets()
        for playbook in [*self.loaded.playbooks, *self.loaded.broken_playbooks]:
            self._playbook(playbook)
        for rule in self.loaded.rules:
            self._rule(rule)
        for rule in self.loaded.broken_rules:
            self._matchers(rule)
        for group in self.loaded.failover:
            recovery = group.model.recovery
            if recovery is not None:
                spec = self._action(group, recovery.action, "recovery", "action")
                if spec is not None:
                    self._params(group, spec, recovery.with_, "recovery", "with")

    def _unique(self, items: list[Item[Any]], kind: str, key: str = "name") -> None:
        first: dict[str, Item[Any]] = {}
        for item in items:
            value = getattr(item.model, key)
            earlier = first.setdefault(value, item)
            if earlier is not item:
                line, _ = earlier.source.locate(earlier.at(key))
                where = f"line {line}" if earlier.source is item.source else f"{earlier.source.path}:{line}"
                item.error(f"{kind} {key} {value!r} is already used at {where}", key)

    def _step_targets(self) -> None:
        """A step naming a target (`with: {target: x}`) must name one that is defined."""
        known = sorted(item.model.name for item in self.loaded.targets)
        for playbook in self.loaded.playbooks:
            for j, step, _ in playbook.steps:
                target = step.with_.get("target") if step is not None else None
                if isinstance(target, str) and not templates.is_template(target) and target not in known:
                    hint = did_you_mean(target, known) or f" (defined: {', '.join(known) or 'none'})"
                    playbook.error(f"unknown target {target!r}{hint}", "steps", j, "with", "target")

    def _matchers(self, item: Item[Rule]) -> None:
        for label, raw in (item.model.match or {}).items():
            try:
                item.matchers.append(parse_matcher(label, raw))
            except ValueError as exc:
                item.error(str(exc), "match", label)

    def _rule(self, item: Item[Rule]) -> None:
        rule = item.model
        self._matchers(item)
        for i, label in enumerate(rule.group_by or []):
            if not LABEL_NAME.fullmatch(label):
                item.error(f"{label!r} is not a valid label name", "group_by", i)
        for label in rule.when.labels if rule.when else {}:
            if not LABEL_NAME.fullmatch(label):
                item.error(f"{label!r} is not a valid label name", "when", "labels", label)
        known = {p.model.name for p in self.loaded.playbooks}
        if rule.playbook not in known and rule.playbook not in {p.model.name for p in self.loaded.broken_playbooks}:
            item.error(f"no playbook named {rule.playbook!r}{did_you_mean(rule.playbook, sorted(known))}", "playbook")
        self._templates(item, rule.params, None, "params")

    def _playbook(self, item: Item[Playbook]) -> None:
        self._templates(item, item.model.params, None, "params")
        scope = _Scope(all={step_id for _, _, step_id in item.steps if step_id})
        for i, step, step_id in item.steps:
            if step is not None:
                self._step(item, i, step, scope)
            if step_id:
                scope.earlier.add(step_id)

    def _step(self, item: Item[Playbook], i: int, step: Step, scope: _Scope) -> None:
        at = ("steps", i)
        spec = self._action(item, step.action, *at, "action")
        self._templates(item, step.with_, scope, *at, "with")
        if spec is not None:
            self._params(item, spec, step.with_, *at, "with")
        if step.when is not None:
            try:
                templates.expression_check(step.when)
            except ValueError as exc:
                item.error(str(exc), *at, "when")
            else:
                self._references(item, templates.referenced_steps(step.when, is_expression=True), scope, (*at, "when"))
        if step.rollback is not None:
            rollback = step.rollback
            rollback_spec = self._action(item, rollback.action, *at, "rollback", "action")
            if rollback.with_ is not None:
                # A rollback runs after its own step, so it may read that step's result too.
                own = _Scope(earlier=scope.earlier | ({step.id} if step.id else set()), all=scope.all)
                self._templates(item, rollback.with_, own, *at, "rollback", "with")
                if rollback_spec is not None:
                    self._params(item, rollback_spec, rollback.with_, *at, "rollback", "with")
            elif rollback_spec is not None:
                # Without its own `with`, a rollback is called with the step's inputs.
                note = f" (rollback {rollback.action} is given the step's own `with`)"
                self._params(item, rollback_spec, step.with_, *at, "with", note=note)

    def _action(self, item: Item[Any], name: str, *at: str | int) -> ActionSpec[Any] | None:
        if name in self.registry:
            return self.registry.get(name)
        item.error(f"unknown action {name!r}{did_you_mean(name, self.registry.names())}", *at)
        return None

    def _templates(self, item: Item[Any], value: Any, scope: _Scope | None, *at: str | int) -> None:
        """Check the syntax of every template string in `value`, and with a scope, its `steps.<id>` names."""
        for path, text in _strings(value, tuple(at)):
            if not templates.is_template(text):
                continue
            try:
                templates.compile_check(text)
            except ValueError as exc:
                item.error(str(exc), *path)
            else:
                if scope is not None:
                    self._references(item, templates.referenced_steps(text), scope, path)

    def _references(self, item: Item[Any], used: set[str], scope: _Scope, at: KeyPath) -> None:
        for name in sorted(used - scope.earlier):
            problem = "runs later" if name in scope.all else "does not exist"
            item.error(f"refers to steps.{name}, but the step with id {name!r} {problem}", *at)

    def _params(
        self, item: Item[Any], spec: ActionSpec[Any], values: dict[str, Any], *at: str | int, note: str = ""
    ) -> None:
        model = spec.params
        fields = {info.alias or name: (name, info) for name, info in model.model_fields.items()}
        accepted = ", ".join(sorted(fields)) or "none"
        for key, value in values.items():
            if key not in fields:
                if model.model_config.get("extra") == "forbid":
                    item.error(
                        f"action {spec.name}: unknown param {key!r}"
                        f"{did_you_mean(key, sorted(fields)) or f' (accepted: {accepted})'}{note}",
                        *at,
                        key,
                    )
                continue
            if _has_template(value):
                continue  # its type is checked when the step runs, after rendering
            name, info = fields[key]
            adapter = _adapter(model, name, info)
            if adapter is None:
                continue
            try:
                adapter.validate_python(value)
            except ValidationError as exc:
                for err in exc.errors():
                    detail = pydantic_message(err, ())
                    item.error(f"action {spec.name}: param {key!r}: {detail}{note}", *at, key, *err["loc"])
            except OverflowError:
                item.error(f"action {spec.name}: param {key!r}: value out of range{note}", *at, key)
        for key, (_, info) in fields.items():
            if info.is_required() and key not in values:
                item.error(f"action {spec.name}: missing required param {key!r}{note}", *at)
