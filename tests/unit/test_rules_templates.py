"""Step templates: one sandboxed environment; alert labels are data and never templates."""

from __future__ import annotations

import pytest
from jinja2 import UndefinedError
from jinja2.sandbox import SecurityError

from controlplane.rules import templates


def test_label_values_are_data_not_templates() -> None:
    labels = {"graph": "{{ 7*7 }}", "evil": "{% for x in range(10**9) %}x{% endfor %}"}
    out = templates.template("graph={{ alert.labels.graph }} evil={{ alert.labels.evil }}").render(
        alert={"labels": labels}
    )
    assert out == f"graph={labels['graph']} evil={labels['evil']}"


def test_sandbox_blocks_attribute_tricks() -> None:
    with pytest.raises(SecurityError):
        templates.template("{{ ''.__class__.__mro__[1].__subclasses__() }}").render()


def test_undefined_names_are_errors_not_empty_strings() -> None:
    with pytest.raises(UndefinedError):
        templates.template("{{ steps.wrost.value }}").render(steps={"worst": {"value": 1}})


def test_no_autoescape() -> None:
    assert templates.template("{{ x }}").render(x="<a & b>") == "<a & b>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("{{ x }}", True), ("{% if x %}y{% endif %}", True), ("plain", False), ("{ x }", False), (3, False)],
)
def test_is_template(value: object, expected: bool) -> None:
    assert templates.is_template(value) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ x }", "unexpected '}'"),
        ("{% if x %}", "end of template"),
        ("{{ x | nosuchfilter }}", "No filter named 'nosuchfilter'"),
        ("line one\n{{ x. }}", "template line 2"),
    ],
)
def test_compile_check_names_the_syntax_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="template syntax error") as info:
        templates.compile_check(text)
    assert message in str(info.value)


def test_expression_check_accepts_braces_or_not() -> None:
    templates.expression_check("steps.worst.value > 3")
    templates.expression_check("{{ steps.worst.value > 3 }}")
    assert templates.expression("{{ x > 3 }}")(x=4) is True
    with pytest.raises(ValueError, match="template syntax error"):
        templates.expression_check("x >")


def test_referenced_steps() -> None:
    text = "{{ steps.a.value }} {{ steps['b'].output }} {{ other.c }} {% if steps.d %}{% endif %}"
    assert templates.referenced_steps(text) == {"a", "b", "d"}
    assert templates.referenced_steps("steps.x.value and steps.y", is_expression=True) == {"x", "y"}
