"""Owns rendering a step's templates: rule-file strings are templates, alert data never is.

The sandbox blocks attribute tricks (`''.__class__`); label values reach templates only as
data in the context, and rendered output is never rendered again, so a label value of
`{{ 7*7 }}` stays exactly that text. Templates compile through `rules.templates`, the same
environment `controlplane check` validates with.
"""

from __future__ import annotations

from typing import Any

from jinja2 import ChainableUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from controlplane.rules import templates

# Dry runs render steps whose inputs name outputs of steps that were never called.
_LENIENT = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)


class RenderError(Exception):
    pass


def render_value(value: Any, context: dict[str, Any], *, lenient: bool = False) -> Any:
    """Render every template string inside `value` (dicts and lists recursively)."""
    if isinstance(value, str):
        if not templates.is_template(value):
            return value
        try:
            compiled = _LENIENT.from_string(value) if lenient else templates.template(value)
            return compiled.render(context)
        except TemplateError as exc:
            raise RenderError(f"template {value!r}: {exc}") from None
    if isinstance(value, dict):
        return {key: render_value(item, context, lenient=lenient) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context, lenient=lenient) for item in value]
    return value


def evaluate_condition(expression: str, context: dict[str, Any], *, lenient: bool = False) -> bool:
    """A step's `when:` (a Jinja expression, with or without braces)."""
    try:
        if lenient:
            return bool(_LENIENT.compile_expression(templates.strip_braces(expression))(**context))
        return bool(templates.expression(expression)(**context))
    except TemplateError as exc:
        raise RenderError(f"condition {expression!r}: {exc}") from None
