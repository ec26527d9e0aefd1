"""Owns the monitoring files shipped beside the rules: Grafana dashboards, Prometheus alerting rules, and
pushing the dashboards into a running Grafana through its HTTP API.

Where they are: `dashboards/` and `alerting/` next to the rules directory (in the Kubernetes
Deployment, ConfigMaps under /etc/controlplane/), else the copies shipped in the package
(controlplane/defaults). A file that cannot be read is reported by name; it never hides the good ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import structlog
import yaml

from controlplane import runbooks
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR
from controlplane.errors import DomainError
from controlplane.resilience.retry import retrying
from controlplane.rules.schema import RetryPolicy

PROVISION_MESSAGE = "provisioned by controlplane"

log = structlog.get_logger("controlplane.grafana")


class MonitoringFileError(DomainError):
    """A shipped monitoring file cannot be served as it is; the message names the file.

    Not mapped to a 4xx on purpose: the request was fine, the deployment's files are not.
    """


def shipped_dir(rules_dir: Path, name: str) -> Path:
    """`name` (dashboards, alerting) beside `rules_dir`; the package's default copy when there is none there.

    When neither exists the sibling path is returned: missing means empty, not an error, so a
    deployment without dashboards still serves the rest.
    """
    beside = rules_dir.parent / name
    if beside.is_dir():
        return beside
    packaged = DEFAULTS_DIR / name
    return packaged if packaged.is_dir() else beside


# -- dashboards --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dashboard:
    """One dashboard file. `source` is the file's bytes, served as stored so a download imports unchanged."""

    uid: str
    title: str
    tags: tuple[str, ...]
    file: str
    source: bytes

    @property
    def model(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.source)
        return parsed


@dataclass(frozen=True)
class DashboardSet:
    dashboards: list[Dashboard]
    errors: list[str]  # `file: message`, one per file left out

    def by_uid(self, uid: str) -> Dashboard | None:
        return next((d for d in self.dashboards if d.uid == uid), None)


def load_dashboards(*, directory: Path) -> DashboardSet:
    """Every `*.json` directly in `directory`, sorted by file name; a missing directory holds none."""
    dashboards: list[Dashboard] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            dashboard = _read_dashboard(path)
        except (OSError, ValueError) as exc:
            errors.append(f"{path.name}: {exc}")
            continue
        if dashboard.uid in seen:
            # Grafana keys dashboards by uid: the second file would silently replace the first.
            errors.append(f"{path.name}: uid {dashboard.uid!r} is already used by {seen[dashboard.uid]}")
            continue
        seen[dashboard.uid] = path.name
        dashboards.append(dashboard)
    for error in errors:
        log.warning("dashboard file left out", directory=str(directory), error=error)
    return DashboardSet(dashboards, errors)


def _read_dashboard(path: Path) -> Dashboard:
    source = path.read_bytes()
    try:
        model = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(model, dict):
        raise ValueError("not a dashboard: the top level must be a JSON object")
    uid, title, tags = model.get("uid"), model.get("title"), model.get("tags", [])
    if not isinstance(uid, str) or not uid:
        raise ValueError("dashboard has no uid (Grafana needs one to update it in place)")
    if not isinstance(title, str) or not title:
        raise ValueError("dashboard has no title")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("tags must be a list of strings")
    return Dashboard(uid=uid, title=title, tags=tuple(tags), file=path.name, source=source)


# -- alerting rules ----------------------------------------------------------------------------


class _RulesDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as `|` blocks, so the merged file reads like the sources."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RulesDumper.add_representer(str, _str_representer)


def merged_alerting_rules(*, directory: Path, public_url: str | None = None) -> str:
    """The rule groups of every `*.yaml`/`*.yml` in `directory` as one Prometheus rule file.

    promtool unit-test files (`rule_files:`/`tests:`) live beside the rules and are skipped.
    Prometheus wants group names unique within a file, so a name used twice is an error here
    rather than a rule file Prometheus refuses to load. `${CONTROLPLANE_PUBLIC_URL}` in an
    annotation (the shipped runbook_url) becomes `public_url`; without one it stays, the header
    says so, and the control plane still resolves it where it links the annotation itself.
    """
    paths = sorted(p for p in directory.iterdir() if p.suffix in {".yaml", ".yml"}) if directory.is_dir() else []
    groups: list[Any] = []
    origin: dict[str, str] = {}
    used: list[str] = []
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise MonitoringFileError(f"alerting/{path.name}: {exc}") from None
        if isinstance(document, dict) and "groups" not in document and {"rule_files", "tests"} & document.keys():
            continue
        if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
            raise MonitoringFileError(f"alerting/{path.name}: not a Prometheus rule file (no `groups:` list)")
        for group in document["groups"]:
            name = group.get("name") if isinstance(group, dict) else None
            if not isinstance(name, str):
                raise MonitoringFileError(f"alerting/{path.name}: a group without a name")
            if name in origin:
                raise MonitoringFileError(f"alerting/{path.name}: group {name!r} is already defined in {origin[name]}")
            origin[name] = path.name
            groups.append(group)
        used.append(path.name)
    unresolved = _expand_annotations(groups, public_url)
    header = f"# Prometheus alerting rules merged by controlplane from: {', '.join(used) or '(no files)'}\n"
    if unresolved:
        header += (
            f"# {unresolved} annotations keep {runbooks.PUBLIC_URL}: set CONTROLPLANE_PUBLIC_URL (or pass\n"
            "# --public-url to `controlplane render prometheusrule`) to make their links absolute.\n"
        )
    # A wide line limit: folding long annotations would make the file read unlike its sources.
    dumped = yaml.dump({"groups": groups}, Dumper=_RulesDumper, sort_keys=False, allow_unicode=True, width=4096)
    return header + dumped


def _expand_annotations(groups: list[Any], public_url: str | None) -> int:
    """Put the public URL into every annotation (in place); returns how many still hold the placeholder."""
    unresolved = 0
    for group in groups:
        for rule in group.get("rules") or []:  # groups are mappings: checked above
            annotations = rule.get("annotations") if isinstance(rule, dict) else None
            if not isinstance(annotations, dict):
                continue
            for key, value in annotations.items():
                if isinstance(value, str) and runbooks.PUBLIC_URL in value:
                    annotations[key] = runbooks.expand(value, public_url)
                    unresolved += runbooks.PUBLIC_URL in annotations[key]
    return unresolved


# -- provisioning into Grafana -----------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """What Grafana answered for one dashboard: its URL and version, or its error message."""

    file: str
    uid: str
    ok: bool
    detail: str
    status: int | None = None  # HTTP status of the last try; None when Grafana was not reached


@dataclass
class GrafanaClient:
    """`POST /api/dashboards/db` against one Grafana, with a service-account token (Bearer)."""

    url: str
    token: str
    timeout: float = 10.0
    attempts: int = 4  # 5xx and connection errors: a restarting Grafana comes back within seconds
    first_wait: timedelta = timedelta(milliseconds=250)

    def push(self, dashboard: Dashboard, *, folder_uid: str | None = None) -> PushResult:
        # id must be null: ids are per Grafana instance, and a stale one would update the wrong
        # dashboard or 404. The uid is what makes a re-run update in place (overwrite: true).
        body: dict[str, Any] = {
            "dashboard": {**dashboard.model, "id": None},
            "overwrite": True,
            "message": PROVISION_MESSAGE,
        }
        if folder_uid is not None:
            body["folderUid"] = folder_uid
        try:
            response = self._post_with_retries(body)
        except httpx.HTTPError as exc:
            return PushResult(dashboard.file, dashboard.uid, ok=False, detail=f"Grafana unreachable: {exc}")
        if response.status_code == 200:
            answer = response.json()
            detail = f"{self.url.rstrip('/')}{answer.get('url', '')} (version {answer.get('version')})"
            return PushResult(dashboard.file, dashboard.uid, ok=True, detail=detail, status=200)
        return PushResult(
            dashboard.file, dashboard.uid, ok=False, detail=_grafana_message(response), status=response.status_code
        )

    def _post_with_retries(self, body: dict[str, Any]) -> httpx.Response:
        policy = RetryPolicy(
            attempts=self.attempts, initial=self.first_wait, max=timedelta(seconds=4), jitter=timedelta(0)
        )
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:

            def post() -> httpx.Response:
                response = client.post("/api/dashboards/db", json=body, headers=headers)
                if response.status_code >= 500:
                    response.raise_for_status()  # retriable; the last one is turned back into a response below
                return response

            try:
                return retrying(policy)(post)
            except httpx.HTTPStatusError as exc:
                return exc.response


def _grafana_message(response: httpx.Response) -> str:
    """Grafana's own words: `{"message": ..., "status": ...}` on errors; the raw body if it is not JSON."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        status = f" ({answer['status']})" if isinstance(answer.get("status"), str) else ""
        return f"HTTP {response.status_code}: {answer['message']}{status}"
    text = re.sub(r"\s+", " ", response.text).strip()[:200]
    return f"HTTP {response.status_code}: {text or response.reason_phrase}"


def provision(
    *, client: GrafanaClient, dashboards: Iterable[Dashboard], folder_uid: str | None = None
) -> list[PushResult]:
    """Push each dashboard in turn; one failure does not stop the others (each is reported)."""
    return [client.push(dashboard, folder_uid=folder_uid) for dashboard in dashboards]
