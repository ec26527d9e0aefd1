"""Owns comparing what a scenario expects with what came of it: `file:line: message` for each mismatch, and a
readable diff of each section that differs.

An expected item is compared on the keys it gives; `=~regex` matches the whole actual string;
times (`at`, `ended_at`, `opened_at`, `resolved_at`) compare as durations (`600s` is `10m`); a step
written as a string is its sentence. Lists must have as many items as expected.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import yaml

from controlplane.durations import parse_duration
from controlplane.scenarios.outcome import Outcome
from controlplane.scenarios.schema import Scenario, ScenarioFile

SECTIONS = ("incidents", "executions", "pages")
TIMES = frozenset({"at", "ended_at", "opened_at", "resolved_at"})
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Mismatch:
    at: KeyPath  # where in the expectation, from the section's list
    message: str


def actual_sections(outcome: Outcome) -> dict[str, list[dict[str, Any]]]:
    return {
        "incidents": outcome.incidents,
        "executions": [e.as_dict() for e in outcome.executions],
        "pages": outcome.pages,
    }


def compare(file: ScenarioFile, at: KeyPath, scenario: Scenario, outcome: Outcome) -> list[str]:
    """Every mismatch as `file:line: message`, each failing section followed by its diff (empty: it passed)."""
    lines: list[str] = []
    actual = actual_sections(outcome)
    for section in SECTIONS:
        expected = getattr(scenario.expect, section)
        if expected is None:
            continue
        found = _compare_list(expected, actual[section], (), _item_words(section))
        if not found:
            continue
        for mismatch in found:
            line = file.line((*at, "expect", section, *mismatch.at))
            lines.append(f"{file.path}:{line}: expect.{section}{_dotted(mismatch.at)}: {mismatch.message}")
        lines += _diff(section, expected, actual[section])
    return lines


def _item_words(section: str) -> str:
    return {"incidents": "incident", "executions": "execution", "pages": "page"}[section]


def _compare_list(expected: list[Any], actual: list[Any], at: KeyPath, noun: str) -> list[Mismatch]:
    found: list[Mismatch] = []
    for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
        found += _compare(want, got, (*at, index))
    if len(expected) != len(actual):
        more = actual[len(expected) :]
        detail = "; unexpected: " + "; ".join(_summary(item) for item in more[:5]) if more else ""
        missing = expected[len(actual) :]
        if missing:
            detail = "; missing: " + "; ".join(_summary(item) for item in missing[:5])
        plural = "" if len(expected) == 1 else "s"
        found.append(Mismatch(at, f"expected {len(expected)} {noun}{plural}, got {len(actual)}{detail}"))
    return found


def _compare(want: Any, got: Any, at: KeyPath) -> list[Mismatch]:
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [Mismatch(at, f"expected a mapping, got {got!r}")]
        found: list[Mismatch] = []
        for key, value in want.items():
            if key not in got:
                known = ", ".join(sorted(got))
                found.append(Mismatch((*at, key), f"unknown key (an item here has: {known})"))
            elif key == "steps" and isinstance(value, list) and isinstance(got[key], list):
                found += _compare_list(value, got[key], (*at, key), "step")
            elif key in TIMES and value is not None and got[key] is not None:
                found += _compare_time(value, got[key], (*at, key))
            else:
                found += _compare(value, got[key], (*at, key))
        return found
    if isinstance(want, str) and isinstance(got, dict) and "sentence" in got:  # a step given as its sentence
        return _compare(want, got["sentence"], at)
    if isinstance(want, list):
        if not isinstance(got, list):
            return [Mismatch(at, f"expected a list, got {got!r}")]
        return _compare_list(want, got, at, "item")
    if isinstance(want, str) and want.startswith("=~"):
        if isinstance(got, str) and re.fullmatch(want[2:], got, re.DOTALL):
            return []
        return [Mismatch(at, f"expected a match of /{want[2:]}/, got {got!r}")]
    if want == got:
        return []
    return [Mismatch(at, f"expected {want!r}, got {got!r}")]


def _compare_time(want: Any, got: str, at: KeyPath) -> list[Mismatch]:
    try:
        same = parse_duration(want) == parse_duration(got)
    except ValueError as exc:
        return [Mismatch(at, str(exc))]
    return [] if same else [Mismatch(at, f"expected {want}, got {got}")]


def _summary(item: Any) -> str:
    if not isinstance(item, dict):
        return repr(item)
    keys = ("at", "rule", "kind", "to", "decision", "guard", "status", "key", "title", "sentence")
    return " ".join(f"{k}={item[k]}" for k in keys if item.get(k) is not None)


def _project(want: Any, got: Any) -> Any:
    """The actual value cut to the keys the expectation gives, so the diff shows only what was compared."""
    if isinstance(want, dict) and isinstance(got, dict):
        return {key: _project(value, got.get(key)) for key, value in want.items() if key in got}
    if isinstance(want, str) and isinstance(got, dict) and "sentence" in got:
        return _project(want, got["sentence"])
    if isinstance(want, str) and want.startswith("=~") and isinstance(got, str):
        return want if re.fullmatch(want[2:], got, re.DOTALL) else got  # a match shows as no difference
    if isinstance(want, list) and isinstance(got, list):
        return _project_list(want, got)
    return got


def _project_list(want: list[Any], got: list[Any]) -> list[Any]:
    """Items beyond the expected ones are cut like the last expected item (all of them when none is given)."""
    shown = [_project(w, g) for w, g in zip(want, got, strict=False)]
    return shown + [_project(want[-1], g) if want else g for g in got[len(want) :]]


def _diff(section: str, expected: list[Any], actual: list[Any]) -> list[str]:
    shown = _project_list(expected, actual)
    want = yaml.safe_dump(expected, sort_keys=False, allow_unicode=True, width=200).splitlines()
    got = yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, width=200).splitlines()
    diff = difflib.unified_diff(want, got, fromfile=f"expected {section}", tofile=f"actual {section}", lineterm="")
    return ["    " + line for line in diff]


def _dotted(at: KeyPath) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in at)
