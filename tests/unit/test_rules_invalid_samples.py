"""Every sample in tests/data/rules_invalid/ fails to load with exactly the errors its `# Expect:` lines announce."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from controlplane.rules.loader import RuleLoadError, load_rules
from tests.unit.test_rules_loader import make_registry

SAMPLES = Path(__file__).parent.parent / "data" / "rules_invalid"
EXPECT = re.compile(r"^# Expect: (\d+): (.+)$", re.MULTILINE)


def expectations(path: Path) -> list[tuple[int, str]]:
    return [(int(line), text) for line, text in EXPECT.findall(path.read_text())]


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_sample_fails_as_announced(sample: Path, tmp_path: Path) -> None:
    expected = expectations(sample)
    assert expected, f"{sample.name} has no `# Expect: <line>: <message>` comment"
    assert sample.read_text().startswith("# Wrong: "), f"{sample.name} must start by saying what is wrong"
    shutil.copy(sample, tmp_path / sample.name)  # alone, so no other sample defines what it lacks
    with pytest.raises(RuleLoadError) as info:
        load_rules(tmp_path, make_registry())
    got = [(e.line, e.message) for e in info.value.errors]
    assert len(got) == len(expected), got
    for line, text in expected:
        assert any(g_line == line and text in message for g_line, message in got), (line, text, got)


def test_there_are_samples() -> None:
    # The mistakes the samples cover; a sample may be added, none lost.
    covered = {
        "yaml_syntax",
        "top_level_list",
        "duplicate_key",
        "unknown_field",
        "name_not_a_string",
        "duplicate_rule_name",
        "duplicate_step_id",
        "missing_playbook",
        "match_and_when",
        "unknown_action",
        "step_params",
        "step_reference",
        "template_syntax",
        "bad_regex",
        "bad_duration",
        "approval_timeout_zero",
    }
    assert covered <= {sample.stem for sample in SAMPLES.glob("*.yaml")}
