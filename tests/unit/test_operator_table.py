"""The operator commands' tables (controlplane/operator_cli.py): aligned, and one line of printable text per
row whatever an alert's labels or title hold."""

from __future__ import annotations

from controlplane.operator_cli import table


def test_columns_are_aligned_and_the_last_one_runs_on() -> None:
    assert table(("ID", "TITLE"), [(7, "chat fails"), (1234, None)]).splitlines() == [
        "ID    TITLE",
        "7     chat fails",
        "1234  -",
    ]


def test_a_newline_or_a_terminal_escape_in_a_title_stays_on_its_row_and_off_the_terminal() -> None:
    lines = table(("ID", "TITLE"), [(1, "first line\nsecond \x1b]0;owned\x07line")]).splitlines()
    assert lines == ["ID  TITLE", "1   first line second ?]0;owned?line"]
