"""Owns the Jinja2 environment that step templates are checked and rendered with.

Only the rule file's own strings are templates. Alert labels and annotations are untrusted
data: they reach a template as values in the render context and are never compiled, so a
label value of `{{ 7*7 }}` stays that text. The sandbox blocks attribute tricks such as
`''.__class__`, and StrictUndefined turns a typo'd name into an error instead of "".
"""

from __future__ import annotations

from functools import lru_cache

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.environment import TemplateExpression
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment


def make_environment() -> SandboxedEnvironment:
    """A fresh environment with the project's settings; prefer the shared `environment()`."""
    return SandboxedEnvironment(autoescape=False, undefined=StrictUndefined, extensions=())


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    """The shared environment (Jinja environments are safe to share once configured)."""
    return make_environment()


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def strip_braces(expression: str) -> str:
    """A step's `when:` may be written `x > 1` or `{{ x > 1 }}`; both mean the expression `x > 1`."""
    text = expression.strip()
    if text.startswith("{{") and text.endswith("}}"):
        return text[2:-2]
    return text


@lru_cache(maxsize=4096)
def template(text: str) -> Template:
    """The compiled template for a rule-file string, compiled once (raises TemplateSyntaxError)."""
    return environment().from_string(text)


@lru_cache(maxsize=4096)
def expression(text: str) -> TemplateExpression:
    """The compiled `when:` expression, braces optional (raises TemplateSyntaxError)."""
    return environment().compile_expression(strip_braces(text))


def _describe(exc: TemplateSyntaxError) -> str:
    where = f" (template line {exc.lineno})" if exc.lineno and exc.lineno > 1 else ""
    return f"template syntax error: {exc.message}{where}"


def compile_check(text: str) -> None:
    """Raise ValueError naming the syntax error if `text` is not a valid template."""
    try:
        template(text)
    except TemplateSyntaxError as exc:
        raise ValueError(_describe(exc)) from None


def expression_check(text: str) -> None:
    """Raise ValueError naming the syntax error if `text` is not a valid `when:` expression."""
    try:
        expression(text)
    except TemplateSyntaxError as exc:
        raise ValueError(_describe(exc)) from None


def referenced_steps(text: str, *, is_expression: bool = False) -> set[str]:
    """Step ids a valid template or expression reads as `steps.<id>` or `steps['<id>']`."""
    env = environment()
    if is_expression:
        parser = Parser(env, strip_braces(text), state="variable")
        tree: nodes.Node = parser.parse_expression()
    else:
        tree = env.parse(text)
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)  # what find_all was asked for
        if not (isinstance(node.node, nodes.Name) and node.node.name == "steps"):
            continue
        if isinstance(node, nodes.Getattr):
            found.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            found.add(node.arg.value)
    return found
