"""Owns loading rules/*.yaml into a RuleSet, and every load-time check, reported as `file:line: message`.

A bad rule file must fail `controlplane check` in CI, not a playbook at 3 a.m., so beyond the
schema this checks what only the whole directory and the action registry know: names unique
across files, playbooks and actions that exist, step params against each action's params model,
regexes, templates and `steps.<id>` references. Any content, however odd, ends in RuleLoadError.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar, get_args

import yaml
from pydantic import BaseModel, PydanticUserError, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controlplane.actions.base import ActionRegistry, ActionSpec
from controlplane.rules import templates
from controlplane.rules.index import RuleIndex
from controlplane.rules.matchers import LABEL_NAME, Matcher, parse_matcher
from controlplane.rules.schema import NAME_PATTERN, FailoverGroup, Playbook, Rule, RuleFile, Step, Target

SUFFIXES = (".yaml", ".yml")
# Aliases can make a few lines expand to millions of nodes ("billion laughs"); refuse instead of hanging.
MAX_NODES = 200_000
_MERGE_TAG = "tag:yaml.org,2002:merge"

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RuleFileError:
    """One problem in one rule file; `line` is 1-based, 0 when it concerns the file or directory as a whole."""

    file: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


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


def load_rules(directory: Path, registry: ActionRegistry) -> RuleSet:
    """Load and check every *.yaml / *.yml file directly in `directory`; raise RuleLoadError listing all errors."""
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
    loaded = _Loaded()
    for path in paths:
        source = _read(path, errors)
        if source is not None:
            _validate(source, loaded)
    _Checker(registry, loaded).run()
    if errors:
        raise RuleLoadError(errors)
    rules = [item.model for item in loaded.rules]
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


# --- YAML with line numbers -------------------------------------------------------------


class _YAMLProblem(yaml.MarkedYAMLError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML keeps the last one silently, hiding half a rule."""

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node: MappingNode = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                first = seen.setdefault((key.tag, key.value), key.start_mark.line + 1)
                if first != key.start_mark.line + 1:
                    raise _YAMLProblem(
                        problem=f"duplicate key {key.value!r} (first at line {first})", problem_mark=key.start_mark
                    )
        return node


@dataclass
class _Pos:
    """Where a value sits: the line of its key (or of the list item), and where its children sit."""

    line: int
    children: dict[str | int, _Pos] = field(default_factory=dict)
    is_list: bool = False

    def child(self, part: str | int) -> _Pos | None:
        if self.is_list:
            return self.children.get(part) if isinstance(part, int) else None
        return self.children.get(str(part))


def _positions(root: Node) -> _Pos:
    count = 0

    def walk(node: Node, line: int) -> _Pos:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise _YAMLProblem(
                problem=f"the document expands to more than {MAX_NODES} values (aliases?)", problem_mark=node.start_mark
            )
        pos = _Pos(line)
        if isinstance(node, MappingNode):
            # After construction, merge keys (`<<: *base`) are flattened into node.value, merged
            # pairs first, so a key written in the mapping itself overrides a merged one here too.
            for key, value in node.value:
                if isinstance(key, ScalarNode):
                    pos.children[key.value] = walk(value, key.start_mark.line + 1)
        elif isinstance(node, SequenceNode):
            pos.is_list = True
            for i, item in enumerate(node.value):
                pos.children[i] = walk(item, item.start_mark.line + 1)
        return pos

    return walk(root, root.start_mark.line + 1)


@dataclass
class _Source:
    """One parsed rule file, and the list its errors go to."""

    path: Path
    data: Any
    pos: _Pos
    errors: list[RuleFileError]

    def locate(self, at: Path_) -> tuple[int, Path_]:
        """The line of the deepest part of `at` present in the file, and `at` without pydantic-only steps."""
        pos, clean, found = self.pos, [], True
        for i, part in enumerate(at):
            if found:
                child = pos.child(part)
                if child is not None:
                    pos = child
                    clean.append(part)
                    continue
                if i + 1 < len(at) and pos.child(at[i + 1]) is not None:
                    continue  # a step of pydantic's own (a union member's name) between two YAML keys
                found = False  # a missing field: named in the message, located at its parent
            clean.append(part)
        return pos.line, tuple(clean)

    def error(self, at: Path_, message: str) -> None:
        line, clean = self.locate(at)
        where = self._where(clean)
        self.errors.append(RuleFileError(self.path, line, f"{where}: {message}" if where else message))

    def _where(self, at: Path_) -> str:
        """`rule "name": match.severity` when the rule's name is readable, else `rules[0].match.severity`."""
        if len(at) >= 2 and at[0] in ("rules", "playbooks") and isinstance(at[1], int):
            items = self.data.get(at[0]) if isinstance(self.data, dict) else None
            raw = items[at[1]] if isinstance(items, list) and at[1] < len(items) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):
                head = f'{"rule" if at[0] == "rules" else "playbook"} "{name}"'
                return f"{head}: {_dotted(at[2:])}" if len(at) > 2 else head
        return _dotted(at)


def _dotted(at: Path_) -> str:
    out = ""
    for part in at:
        if isinstance(part, str) and not (part.startswith("[") and out):
            out += f".{part}" if out else part
        else:  # a list index, pydantic's `[key]`, or a YAML key that is not a string (`1:`, `null:`)
            out += part if isinstance(part, str) else f"[{part!r}]"
    return out


def _read(path: Path, errors: list[RuleFileError]) -> _Source | None:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        errors.append(RuleFileError(path, 0, f"cannot read: {exc.strerror}"))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.append(RuleFileError(path, raw[: exc.start].count(b"\n") + 1, "not UTF-8 text"))
        return None
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks for control characters already
        node = loader.get_single_node()
        if node is None:  # empty, or only comments
            return _Source(path, None, _Pos(1), errors)
        data = loader.construct_document(node)
        return _Source(path, data, _positions(node), errors)
    except yaml.MarkedYAMLError as exc:
        errors.append(RuleFileError(path, *_yaml_problem(exc)))
    except yaml.YAMLError as exc:  # reader errors: control characters and the like
        position = getattr(exc, "position", 0)
        errors.append(RuleFileError(path, text[:position].count("\n") + 1, f"invalid YAML: {exc}"))
    except RecursionError:
        errors.append(RuleFileError(path, 1, "invalid YAML: nested too deeply"))
    finally:
        if loader is not None:
            loader.dispose()
    return None


def _yaml_problem(exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
    if exc.context and exc.problem:
        message = f"invalid YAML: {exc.problem} ({exc.context}"
        started = exc.context_mark.line + 1 if exc.context_mark else line
        message += f" at line {started})" if started != line else ")"
    return line, message


# --- schema validation ------------------------------------------------------------------


@dataclass
class _Item(Generic[M]):
    source: _Source
    index: int
    model: M
    matchers: list[Matcher] = field(default_factory=list)
    # For playbooks: (index, the step if valid, its id); a playbook that failed validation
    # keeps its valid steps here, so their errors are reported in the same run.
    steps: list[tuple[int, Step | None, str | None]] = field(default_factory=list)

    def at(self, *parts: str | int) -> Path_:
        return (_SECTION[type(self.model)], self.index, *parts)

    def error(self, message: str, *parts: str | int) -> None:
        self.source.error(self.at(*parts), message)


_SECTION: dict[type, str] = {Rule: "rules", Playbook: "playbooks", Target: "targets", FailoverGroup: "failover"}


@dataclass
class _Loaded:
    rules: list[_Item[Rule]] = field(default_factory=list)
    playbooks: list[_Item[Playbook]] = field(default_factory=list)
    # Playbooks that failed validation: checked step by step, and not reported as missing.
    broken_playbooks: list[_Item[Playbook]] = field(default_factory=list)
    # Rules that failed validation, with a readable `match:` that is still checked.
    broken_rules: list[_Item[Rule]] = field(default_factory=list)
    targets: list[_Item[Target]] = field(default_factory=list)
    failover: list[_Item[FailoverGroup]] = field(default_factory=list)


def _validate(source: _Source, loaded: _Loaded) -> None:
    data = source.data
    if data is None:
        return
    if not isinstance(data, dict):
        source.error((), f"a rule file is a mapping with `rules:` and `playbooks:` lists, not {_kind(data)}")
        return
    try:
        parsed = RuleFile.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = (*err["loc"], *(err.get("ctx") or {}).get("at", ()))
            source.error(loc, _pydantic_message(err, loc))
        _salvage(source, loaded)  # so one bad rule does not hide the other rules' errors
        return
    loaded.rules.extend(_Item(source, i, r) for i, r in enumerate(parsed.rules))
    loaded.playbooks.extend(_playbook_item(source, i, p) for i, p in enumerate(parsed.playbooks))
    loaded.targets.extend(_Item(source, i, t) for i, t in enumerate(parsed.targets))
    loaded.failover.extend(_Item(source, i, g) for i, g in enumerate(parsed.failover))


def _playbook_item(source: _Source, index: int, playbook: Playbook) -> _Item[Playbook]:
    return _Item(source, index, playbook, steps=[(j, step, step.id) for j, step in enumerate(playbook.steps)])


def _salvage(source: _Source, loaded: _Loaded) -> None:
    rules, playbooks = source.data.get("rules"), source.data.get("playbooks")
    for i, raw in enumerate(rules if isinstance(rules, list) else []):
        try:
            loaded.rules.append(_Item(source, i, Rule.model_validate(raw)))
        except ValidationError:
            match = raw.get("match") if isinstance(raw, dict) else None
            if isinstance(match, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in match.items()):
                loaded.broken_rules.append(_Item(source, i, Rule.model_construct(match=match)))
    for i, raw in enumerate(playbooks if isinstance(playbooks, list) else []):
        try:
            loaded.playbooks.append(_playbook_item(source, i, Playbook.model_validate(raw)))
        except ValidationError:
            if isinstance(raw, dict):
                loaded.broken_playbooks.append(_broken_playbook(source, i, raw))


def _broken_playbook(source: _Source, index: int, raw: dict[Any, Any]) -> _Item[Playbook]:
    name = raw.get("name")
    playbook = Playbook.model_construct(name=name if isinstance(name, str) else "", steps=[])
    item = _Item(source, index, playbook)
    steps = raw.get("steps")
    for j, step in enumerate(steps if isinstance(steps, list) else []):
        step_id = step.get("id") if isinstance(step, dict) and isinstance(step.get("id"), str) else None
        try:
            item.steps.append((j, Step.model_validate(step), step_id))
        except ValidationError:
            item.steps.append((j, None, step_id))
    return item


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


_NAME_HELP = "a name is lower-case letters, digits, '_', '.' or '-', starting with a letter or digit (at most 128)"


def _pydantic_message(err: Any, loc: Path_) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        model = _model_at(loc[:-1])
        known = sorted(_field_keys(model)) if model else []
        hint = _did_you_mean(str(key), known) or (f" (expected one of: {', '.join(known)})" if known else "")
        return f"unknown field {key!r}{hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NAME_PATTERN:
        return f"{err.get('input')!r} is not a valid name: {_NAME_HELP}"
    return re.sub(r" or instance of \w+", "", str(msg))


def _field_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: Path_) -> type[BaseModel] | None:
    """The schema model that describes the value at `loc` (for naming its fields in a message)."""
    model: type[BaseModel] | None = RuleFile
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = next((i for n, i in model.model_fields.items() if part in (n, i.alias)), None)
        if info is None:
            return None
        model = _inner_model(info.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


# --- checks across rules, playbooks and actions ------------------------------------------


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


def _strings(value: Any, at: Path_) -> Iterator[tuple[Path_, str]]:
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


class _Checker:
    def __init__(self, registry: ActionRegistry, loaded: _Loaded) -> None:
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

    def _unique(self, items: list[_Item[Any]], kind: str, key: str = "name") -> None:
        first: dict[str, _Item[Any]] = {}
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
                    hint = _did_you_mean(target, known) or f" (defined: {', '.join(known) or 'none'})"
                    playbook.error(f"unknown target {target!r}{hint}", "steps", j, "with", "target")

    def _matchers(self, item: _Item[Rule]) -> None:
        for label, raw in (item.model.match or {}).items():
            try:
                item.matchers.append(parse_matcher(label, raw))
            except ValueError as exc:
                item.error(str(exc), "match", label)

    def _rule(self, item: _Item[Rule]) -> None:
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
            item.error(f"no playbook named {rule.playbook!r}{_did_you_mean(rule.playbook, sorted(known))}", "playbook")
        self._templates(item, rule.params, None, "params")

    def _playbook(self, item: _Item[Playbook]) -> None:
        self._templates(item, item.model.params, None, "params")
        scope = _Scope(all={step_id for _, _, step_id in item.steps if step_id})
        for i, step, step_id in item.steps:
            if step is not None:
                self._step(item, i, step, scope)
            if step_id:
                scope.earlier.add(step_id)

    def _step(self, item: _Item[Playbook], i: int, step: Step, scope: _Scope) -> None:
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

    def _action(self, item: _Item[Any], name: str, *at: str | int) -> ActionSpec[Any] | None:
        if name in self.registry:
            return self.registry.get(name)
        item.error(f"unknown action {name!r}{_did_you_mean(name, self.registry.names())}", *at)
        return None

    def _templates(self, item: _Item[Any], value: Any, scope: _Scope | None, *at: str | int) -> None:
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

    def _references(self, item: _Item[Any], used: set[str], scope: _Scope, at: Path_) -> None:
        for name in sorted(used - scope.earlier):
            problem = "runs later" if name in scope.all else "does not exist"
            item.error(f"refers to steps.{name}, but the step with id {name!r} {problem}", *at)

    def _params(
        self, item: _Item[Any], spec: ActionSpec[Any], values: dict[str, Any], *at: str | int, note: str = ""
    ) -> None:
        model = spec.params
        fields = {info.alias or name: (name, info) for name, info in model.model_fields.items()}
        accepted = ", ".join(sorted(fields)) or "none"
        for key, value in values.items():
            if key not in fields:
                if model.model_config.get("extra") == "forbid":
                    item.error(
                        f"action {spec.name}: unknown param {key!r}"
                        f"{_did_you_mean(key, sorted(fields)) or f' (accepted: {accepted})'}{note}",
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
                    detail = _pydantic_message(err, ())
                    item.error(f"action {spec.name}: param {key!r}: {detail}{note}", *at, key, *err["loc"])
            except OverflowError:
                item.error(f"action {spec.name}: param {key!r}: value out of range{note}", *at, key)
        for key, (_, info) in fields.items():
            if info.is_required() and key not in values:
                item.error(f"action {spec.name}: missing required param {key!r}{note}", *at)
