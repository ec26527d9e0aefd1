"""Owns the default configuration shipped inside the package (remediation rules, alerting rules, dashboards) and
copying it into a starter directory of a team's own (`controlplane init`).

Laid out as a team's own directory is (`rules/`, `alerting/` with its promtool tests and runbooks,
`dashboards/`), so `dashboards/` and `alerting/` sit beside the rules here as they do there. Found
beside this file: a wheel installs them as plain files in the package (package data in pyproject.toml).
"""

from __future__ import annotations

import shutil
from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent
RULES_DIR = DIRECTORY / "rules"
PARTS = ("rules", "alerting", "dashboards")
README = "README.md"

STARTER_README = """\
# controlplane configuration

Written by `controlplane init` from the defaults shipped with controlplane {version}. Edit these
files and keep them in git; `controlplane init --force` writes the shipped versions again.

- `rules/`: remediation rules, playbooks, targets and failover groups (`*.yaml`): what the
  control plane does about which alert; `rules/tests/` holds their scenario tests
  (`controlplane test rules/tests`: alerts over a fake clock, the executions, plans and pages expected).
- `alerting/`: Prometheus alerting rules (`*.rules.yaml`), their promtool unit tests (`tests/`)
  and the runbooks their `runbook_url` points at (`RUNBOOKS.md`, served at /runbooks/RUNBOOKS.md).
  `${{CONTROLPLANE_PUBLIC_URL}}` in a `runbook_url` is left as it is here: the service fills it in
  where it serves the rules (`GET /api/v1/alerting/rules`), so one directory fits every environment.
- `dashboards/`: Grafana dashboards (JSON), served by the control plane and pushed into Grafana
  by `controlplane provision grafana`.

Check them (the rules, and the alerting rules and dashboards beside them; promtool, when on
PATH, checks the PromQL) and run the alerting rules' unit tests:

    controlplane check {rules}
    promtool test rules {alerting_tests}

Point the service at them; it serves `dashboards/` and `alerting/` from beside the rules
(`GET /api/v1/dashboards`, `GET /api/v1/alerting/rules`):

    CONTROLPLANE_RULES_DIR={rules} controlplane serve
"""


class StarterExists(Exception):
    """Files the starter would write are there already; `existing` lists them (none is touched)."""

    def __init__(self, existing: list[Path]) -> None:
        self.existing = existing
        super().__init__(f"{len(existing)} files exist")


def shipped_files() -> list[Path]:
    """Every default file, relative to DIRECTORY (the Python module and its caches are not configuration)."""
    return sorted(
        path.relative_to(DIRECTORY)
        for part in PARTS
        for path in (DIRECTORY / part).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def write_starter(directory: Path, *, version: str, force: bool = False) -> list[Path]:
    """Copy the defaults and a README into `directory` (created if missing); return the paths written.

    Without `force`, any file already there stops it before anything is written (StarterExists). Files of
    the team's own that the starter has no copy of are never touched, with or without `force`.
    """
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(0, "not a directory", str(directory))
    files = {directory / relative: DIRECTORY / relative for relative in shipped_files()}
    readme = directory / README
    existing = [path for path in (*files, readme) if path.exists() or path.is_symlink()]
    if existing and not force:
        raise StarterExists(existing)
    for target, source in files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    readme.write_text(
        STARTER_README.format(
            version=version, rules=directory / "rules", alerting_tests=directory / "alerting" / "tests" / "*.yaml"
        )
    )
    return [*files, readme]
