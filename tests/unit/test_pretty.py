"""How the console writes JSON details (web/rendering.pretty): indented, keys sorted, nothing refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from controlplane.web.rendering import pretty


@pytest.mark.parametrize(
    "value",
    [
        {"replicas": 3, "previous": 2, "graphs": ["a", {"b": None}], "ok": True},
        {"label": "été ✓", "nested": {"z": 1, "a": 2}},
        {"at": datetime(2026, 12, 6, 3, 0, tzinfo=UTC)},  # written as str() wrote it
        {2: "two", 1: "one"},
        [],
        "text",
        None,
    ],
)
def test_reads_as_the_json_module_wrote_it(value: Any) -> None:
    assert pretty(value) == json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def test_an_integer_beyond_64_bits_in_a_step_output_is_still_shown() -> None:
    """Step outputs are untrusted JSON: orjson refuses such integers, the page must not fail on them."""
    assert pretty({"id": 2**70}) == '{\n  "id": 1180591620717411303424\n}'
