"""Owns label matchers with Alertmanager's semantics: `=`, `!=`, `=~`, `!~`, anchored regexes, absent = "".

In a rule's `match:` mapping, `label: value` is equality; a value starting with `=~`, `!~`, `!=`
or `=` uses that operator (`=` forces literal equality: `"=!weird"` equals `!weird`).
Whitespace around a value after an operator is dropped, as Alertmanager's matcher parser does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Literal

Op = Literal["=", "!=", "=~", "!~"]

# Checked longest first, so `=~` is not read as `=` followed by `~...`.
_OPERATORS: tuple[Op, ...] = ("=~", "!~", "!=", "=")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Go's RE2 accepts `(?i)` anywhere, but Python only at the start of the whole pattern, so
# leading flags are lifted out of the anchoring group: `(?i)crit` -> `(?i)(?:crit)`.
_LEADING_FLAGS = re.compile(r"^\(\?[a-zA-Z]+\)")


def compile_anchored(pattern: str) -> re.Pattern[str]:
    """Compile like Alertmanager's `^(?:pattern)$`; raises re.error."""
    re.compile(pattern)  # alone first, so an error's position is in the text the user wrote
    flags = _LEADING_FLAGS.match(pattern)
    prefix = flags.group(0) if flags else ""
    return re.compile(f"{prefix}(?:{pattern[len(prefix) :]})")


class Matcher:
    """One label condition; `matches` treats a label missing from the alert as the empty string."""

    __slots__ = ("_test", "name", "op", "value")

    def __init__(self, name: str, op: Op, value: str) -> None:
        self.name = name
        self.op: Op = op
        self.value = value
        self._test = _tester(name, op, value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self._test(labels.get(self.name, ""))

    @property
    def test(self) -> Callable[[str], bool]:
        """The check on the label's value alone, for callers that fetch the label themselves."""
        return self._test

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Matcher):
            return NotImplemented
        return (self.name, self.op, self.value) == (other.name, other.op, other.value)

    def __hash__(self) -> int:
        return hash((self.name, self.op, self.value))

    def __repr__(self) -> str:
        return f"Matcher({self.name!r}, {self.op!r}, {self.value!r})"

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{escaped}"'


def _tester(name: str, op: Op, value: str) -> Callable[[str], bool]:
    if op == "=":
        return value.__eq__
    if op == "!=":
        return value.__ne__
    try:
        fullmatch = compile_anchored(value).fullmatch
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"label {name!r}: invalid regex {value!r}: {exc}") from None
    if op == "=~":
        return lambda text: fullmatch(text) is not None
    return lambda text: fullmatch(text) is None


def parse_matcher(name: str, raw: str) -> Matcher:
    """`severity: "=~crit.*"` -> Matcher("severity", "=~", "crit.*"); raises ValueError naming the label."""
    if not LABEL_NAME.fullmatch(name):
        raise ValueError(f"label {name!r}: not a valid label name (letters, digits and _, not starting with a digit)")
    for op in _OPERATORS:
        if raw.startswith(op):
            return Matcher(name, op, raw[len(op) :].strip())
    return Matcher(name, "=", raw)


def parse_matchers(mapping: Mapping[str, str]) -> list[Matcher]:
    """A rule's `match:` mapping as matchers, in mapping order."""
    return [parse_matcher(name, raw) for name, raw in mapping.items()]


def shown(mapping: Mapping[str, str]) -> list[Matcher]:
    """A `match:` mapping as matchers to show, each with its operator: `severity=~crit.*`, never `severity==~crit.*`.

    A value that does not parse (an invalid regex, only in a rule file that failed to load) is shown as written.
    """
    out = []
    for name, raw in mapping.items():
        try:
            out.append(parse_matcher(name, raw))
        except ValueError:
            out.append(Matcher(name, "=", raw))
    return out


def matches_all(matchers: list[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
