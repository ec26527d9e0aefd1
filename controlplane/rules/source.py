"""Owns reading one rule file as YAML that keeps line numbers, and the `file:line: message` an error becomes.

PyYAML's SafeLoader is used with two changes: a duplicate key is an error (PyYAML keeps the last
one silently), and a document that expands to too many values is refused. Each value's line is
kept beside the data, so a problem found later (by pydantic, by a cross-check) points at its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controlplane.rules.schema import NAME_PATTERN

# Aliases can make a few lines expand to millions of nodes ("billion laughs"); refuse instead of hanging.
MAX_NODES = 200_000
_MERGE_TAG = "tag:yaml.org,2002:merge"

KeyPath = tuple[str | int, ...]  # keys and list indexes from the document's root to one value


@dataclass(frozen=True)
class RuleFileError:
    """One problem in one rule file; `line` is 1-based, 0 when it concerns the file or directory as a whole."""

    file: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


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
class Source:
    """One parsed rule file, and the list its errors go to."""

    path: Path
    data: Any
    pos: _Pos
    errors: list[RuleFileError]

    def locate(self, at: KeyPath) -> tuple[int, KeyPath]:
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

    def error(self, at: KeyPath, message: str) -> None:
        line, clean = self.locate(at)
        where = self._where(clean)
        self.errors.append(RuleFileError(self.path, line, f"{where}: {message}" if where else message))

    def _where(self, at: KeyPath) -> str:
        """`rule "name": match.severity` when the rule's name is readable, else `rules[0].match.severity`."""
        if len(at) >= 2 and at[0] in ("rules", "playbooks") and isinstance(at[1], int):
            items = self.data.get(at[0]) if isinstance(self.data, dict) else None
            raw = items[at[1]] if isinstance(items, list) and at[1] < len(items) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):
                head = f'{"rule" if at[0] == "rules" else "playbook"} "{name}"'
                return f"{head}: {_dotted(at[2:])}" if len(at) > 2 else head
        return _dotted(at)


def _dotted(at: KeyPath) -> str:
    out = ""
    for part in at:
        if isinstance(part, str) and not (part.startswith("[") and out):
            out += f".{part}" if out else part
        else:  # a list index, pydantic's `[key]`, or a YAML key that is not a string (`1:`, `null:`)
            out += part if isinstance(part, str) else f"[{part!r}]"
    return out


def read_source(path: Path, errors: list[RuleFileError]) -> Source | None:
    """Parse one rule file; None, with the problem added to `errors`, if it is not readable UTF-8 YAML."""
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
            return Source(path, None, _Pos(1), errors)
        data = loader.construct_document(node)
        return Source(path, data, _positions(node), errors)
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
