"""Owns the demo's copies of the shipped rules, sped up: alert `for:` and range windows scaled down, verify polled fast.

Production time scales do not fit a demo or a test: alerts wait minutes (`for: 2m`) and average
over minutes (`rate(...[5m])`), and a graph disabled by the playbook would keep its alert firing
for the whole 5-minute window. So the alerting rules are copied with every `for:` and range
window divided by `time_scale` (30: 2m -> 4s, 5m -> 10s), and the rules copy polls
`verify.resolved` every second instead of every 30 s. Nothing else differs from the shipped files.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from controlplane.durations import format_duration, parse_duration
from controlplane.grafana import merged_alerting_rules

_RANGE = re.compile(r"\[((?:\d+(?:ms|[smhdw]))+)(?::((?:\d+(?:ms|[smhdw]))*))?\]")


def scale(duration: str, factor: float, *, minimum: float) -> str:
    """A Prometheus duration divided by `factor`, in whole seconds and at least `minimum` seconds."""
    seconds = max(minimum, round(parse_duration(duration).total_seconds() / factor))
    return format_duration(timedelta(seconds=seconds))


def scale_expr(expr: str, factor: float) -> str:
    """Every range window (and subquery step) in a PromQL expression divided by `factor`.

    At least 5 s: with one scrape a second, a rate needs a few samples in its window.
    """

    def shorter(match: re.Match[str]) -> str:
        window = scale(match.group(1), factor, minimum=5)
        if match.group(2) is None:
            return f"[{window}]"
        step = f"{scale(match.group(2), factor, minimum=1)}" if match.group(2) else ""
        return f"[{window}:{step}]"

    return _RANGE.sub(shorter, expr)


def fast_alert_rules(alerting_dir: Path, factor: float, *, public_url: str | None = None) -> dict[str, Any]:
    """The shipped alerting rules as one rule file, with `for:` and range windows divided by `factor` (and the
    runbook links under `public_url`, as GET /api/v1/alerting/rules serves them)."""
    document: dict[str, Any] = yaml.safe_load(merged_alerting_rules(directory=alerting_dir, public_url=public_url))
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            rule["expr"] = scale_expr(str(rule["expr"]), factor)
            if "for" in rule:
                rule["for"] = scale(str(rule["for"]), factor, minimum=1)
    return document


def fast_remediation_rules(rules_dir: Path, out_dir: Path, *, admin_url: str, verify_poll: str = "1s") -> None:
    """Copy the rule files, pointing every http target at the sample's admin API and polling verify faster."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(rules_dir.glob("*.y*ml")):
        document = yaml.safe_load(path.read_text()) or {}
        for target in document.get("targets", []):
            if target.get("kind") == "http":
                target["url"] = admin_url
        for playbook in document.get("playbooks", []):
            for step in playbook.get("steps", []):
                if step.get("action") == "verify.resolved":
                    step.setdefault("with", {})["poll"] = verify_poll
        (out_dir / path.name).write_text(yaml.safe_dump(document, sort_keys=False))
