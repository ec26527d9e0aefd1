"""Owns the wording of rule-file errors: pydantic's validation errors in an operator's words, "did you mean"."""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel

from controlplane.rules.schema import NAME_PATTERN, RuleFile
from controlplane.rules.source import KeyPath


def value_kind(value: object) -> str:
    """What a YAML value is, as a message names it: "a list", "a string"."""
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


def pydantic_message(err: Any, loc: KeyPath) -> str:
    """One pydantic error at `loc`, worded for someone editing a rule file."""
    kind, msg = err["type"], err["msg"]
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        model = _model_at(loc[:-1])
        known = sorted(_field_keys(model)) if model else []
        hint = did_you_mean(str(key), known) or (f" (expected one of: {', '.join(known)})" if known else "")
        return f"unknown field {key!r}{hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NAME_PATTERN:
        return f"{err.get('input')!r} is not a valid name: {_NAME_HELP}"
    return re.sub(r" or instance of \w+", "", str(msg))


def _field_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: KeyPath) -> type[BaseModel] | None:
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


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    return f" (did you mean {' or '.join(close)}?)" if close else ""
