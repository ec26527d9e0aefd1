"""Owns the default configuration shipped inside the package: remediation rules, alerting rules, dashboards.

Laid out as a team's own directory is (`rules/`, `alerting/` with its promtool tests and runbooks,
`dashboards/`), so `dashboards/` and `alerting/` sit beside the rules here as they do there. Found
beside this file: a wheel installs them as plain files in the package (package data in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent
RULES_DIR = DIRECTORY / "rules"
