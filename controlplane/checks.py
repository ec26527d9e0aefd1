"""Owns `controlplane check`'s checks of the Prometheus alerting rules and the Grafana dashboards, and CheckResult.

Checked are `alerting/` and `dashboards/` beside the rules directory, i.e. in its parent: where the
API serves them from and `controlplane provision grafana` pushes them from. With the default rules
directory (the package's controlplane/defaults/rules) they are the packaged defaults. A deployment
without them has nothing to check there, and the check says nothing (the API then falls back to the
packaged defaults, which `controlplane check` with the default rules directory covers). Errors read
`file:line: message` like the rule checker's, `file: message` where no line is known. promtool, when
on PATH, checks the rule files and the PromQL of every dashboard query.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controlplane import runbooks
from controlplane.rules.loader import RuleFileError

ALERTING_DIR = "alerting"
DASHBOARDS_DIR = "dashboards"
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")
DATASOURCE = "${datasource}"
# What Grafana's built-in variables stand for when a dashboard query runs as plain PromQL
# (promtool here, a real Prometheus in the tests); template variables become `.*` (all values).
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
}
PROMTOOL_TIMEOUT = 60.0
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)")


@dataclass
class CheckResult:
    """What one checker found: errors as `file:line: message`, and a one-line summary when there are none."""

    errors: list[str] = field(default_factory=list)
    summary: str = ""


def check_alert_rules(args: argparse.Namespace) -> CheckResult:
    """Every alert has expr, labels.severity and the summary/description/runbook_url annotations."""
    directory = _locate(args, ALERTING_DIR)
    if directory is None:
        return CheckResult()
    # Every YAML file there is served to Prometheus (grafana.merged_alerting_rules), unit tests aside.
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
    errors: list[RuleFileError] = []
    rule_files: list[Path] = []
    alerts = 0
    groups: dict[str, Path] = {}
    for path in files:
        found, problems = _check_rule_file(path, repo=directory.parent, groups=groups)
        errors += problems
        if found is not None:
            rule_files.append(path)
            alerts += found
    syntax = "promtool not on PATH, PromQL not checked"
    if rule_files and shutil.which("promtool"):
        errors += _promtool_check(rule_files)  # only files that parsed: YAML errors are reported once
        syntax = "promtool check rules"
    return _result(errors, f"{directory}: {alerts} alerts in {len(rule_files)} files ({syntax})")


def check_dashboards(args: argparse.Namespace) -> CheckResult:
    """Valid JSON with uid and title; every panel queries `${datasource}` with PromQL."""
    directory = _locate(args, DASHBOARDS_DIR)
    if directory is None:
        return CheckResult()
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ".json")
    errors: list[RuleFileError] = []
    queries: list[DashboardQuery] = []
    for path in files:
        found, problems = _check_dashboard(path)
        queries += found
        errors += problems
    syntax = "promtool not on PATH, PromQL not checked"
    if queries and shutil.which("promtool"):
        errors += _promtool_check_queries(queries)
        syntax = "PromQL checked by promtool"
    return _result(errors, f"{directory}: {len(queries)} queries in {len(files)} dashboards ({syntax})")


# --- Prometheus rule files ------------------------------------------------------------------


def _check_rule_file(path: Path, *, repo: Path, groups: dict[str, Path]) -> tuple[int | None, list[RuleFileError]]:
    """(alerts found, or None for a promtool test file or one that is no rule file; problems).

    Composed, not loaded, so that nodes keep their lines.

    `groups` collects group names across files: merged into one rule file they must be unique.
    """
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        return None, [RuleFileError(path, 0, f"cannot read: {exc}")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return None, [RuleFileError(path, mark.line + 1 if mark else 1, f"invalid YAML: {exc.problem or exc.context}")]
    top = _fields(root)
    if "groups" not in top and {"rule_files", "tests"} & top.keys():
        return None, []
    if not isinstance(top.get("groups"), SequenceNode):
        return None, [RuleFileError(path, _line(root), "not a Prometheus rule file: no `groups:` list")]
    errors: list[RuleFileError] = []
    alerts = 0
    for group in top["groups"].value:
        name = _text(_fields(group).get("name"))
        if name in groups:
            errors.append(RuleFileError(path, _line(group), f"group {name!r} is already defined in {groups[name]}"))
        elif name is not None:
            groups[name] = path
        rules = _fields(group).get("rules")
        if not isinstance(rules, SequenceNode):
            errors.append(RuleFileError(path, _line(group), "rule group without a `rules:` list"))
            continue
        for rule in rules.value:
            fields = _fields(rule)
            name = _text(fields.get("alert"))
            if name is None:
                if _text(fields.get("record")) is None:
                    errors.append(RuleFileError(path, _line(rule), "rule with neither `alert` nor `record`"))
                continue  # recording rules carry no severity or annotations
            alerts += 1
            errors += [RuleFileError(path, _line(rule), f"alert {name}: {p}") for p in _alert_problems(fields, repo)]
    return alerts, errors


def _alert_problems(fields: Mapping[str, Node], repo: Path) -> Iterator[str]:
    if _text(fields.get("expr")) is None:
        yield "no expr"
    if _text(_fields(fields.get("labels")).get("severity")) is None:
        yield "no labels.severity"
    annotations = _fields(fields.get("annotations"))
    for key in REQUIRED_ANNOTATIONS:
        if _text(annotations.get(key)) is None:
            yield f"no annotations.{key}"
    url = _text(annotations.get("runbook_url"))
    if url is not None:
        problem = _runbook_problem(url, repo)
        if problem:
            yield problem


def _runbook_problem(url: str, repo: Path) -> str | None:
    """A runbook the control plane serves (`${CONTROLPLANE_PUBLIC_URL}/runbooks/<file>#<anchor>`, or the same path
    alone) or a path in the configuration directory (`alerting/RUNBOOKS.md#<anchor>`) must name an existing file
    and heading. Other http(s) URLs are not fetched; any other scheme is an error: the console never links it."""
    if url.startswith((runbooks.PUBLIC_URL, "/")) and not url.startswith("//"):  # a page of the control plane
        served = url.removeprefix(runbooks.PUBLIC_URL).lstrip("/")
        if not served.startswith("runbooks/"):
            return None  # another page of the control plane
        name, _, anchor = served.removeprefix("runbooks/").partition("#")
        if not name:
            return None  # the list of runbooks
        if name not in runbooks.files(repo / ALERTING_DIR):
            return f"runbook_url {url}: no runbook {name} in {_show(repo / ALERTING_DIR)}"
        return _anchor_problem(url, repo / ALERTING_DIR / name, anchor, shown=name)
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return f"runbook_url {url}: not a URL"
    if scheme:
        return None if scheme in ("http", "https") else f"runbook_url {url}: only http and https links are followed"
    file, _, anchor = url.partition("#")
    target = repo / file
    if not target.is_file():
        return f"runbook_url {url}: no file {file} in {_show(repo)}"
    return _anchor_problem(url, target, anchor, shown=file)


def _anchor_problem(url: str, path: Path, anchor: str, *, shown: str) -> str | None:
    if anchor and anchor not in runbooks.anchors(path.read_text(encoding="utf-8")):
        return f"runbook_url {url}: {shown} has no heading #{anchor}"
    return None


def _promtool_check(files: list[Path]) -> list[RuleFileError]:
    proc = _promtool("check", "rules", *map(str, files))
    if proc is None or proc.returncode == 0:
        return []
    by_name = {str(p): p for p in files}
    errors: list[RuleFileError] = []
    for line in (proc.stderr + proc.stdout).splitlines():
        name, sep, message = line.partition(": ")
        if sep and name in by_name:
            error = _promtool_error(by_name[name], message)
            if error not in errors:  # promtool repeats YAML errors
                errors.append(error)
    return errors or [RuleFileError(files[0].parent, 0, f"promtool check rules failed: {_tail(proc)}")]


def _promtool_error(path: Path, message: str) -> RuleFileError:
    # "12:5: group ..." (a rule's expression) or "yaml: line 3: ..." (the file).
    located = re.match(r"(\d+):\d+: (.*)", message) or re.match(r"yaml: line (\d+): (.*)", message)
    if located:
        return RuleFileError(path, int(located.group(1)), f"promtool: {located.group(2)}")
    return RuleFileError(path, 0, f"promtool: {message}")


def _promtool(*args: str) -> subprocess.CompletedProcess[str] | None:
    binary = shutil.which("promtool")
    if binary is None:
        return None
    try:
        return subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:  # a hung or broken promtool is a failed check, not a crash
        return subprocess.CompletedProcess([binary, *args], 1, "", str(exc))


# --- Grafana dashboards ---------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardQuery:
    """One panel target: its PromQL as written, and as Prometheus runs it with variables substituted."""

    file: Path
    line: int
    panel: str
    ref_id: str
    expr: str
    promql: str


def dashboard_queries(path: Path) -> list[DashboardQuery]:
    """Every panel target of a dashboard file (the integration tests run them against Prometheus)."""
    queries, _errors = _check_dashboard(path)
    return queries


def substitute_variables(expr: str, template_variables: Mapping[str, str] | set[str]) -> str:
    """`expr` as plain PromQL: built-ins by BUILTIN_VARIABLES, each template variable by `.*` or its value."""
    values = template_variables if isinstance(template_variables, Mapping) else dict.fromkeys(template_variables, ".*")

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return BUILTIN_VARIABLES.get(name) or values.get(name) or match.group(0)

    return _VARIABLE.sub(value, expr)


def _check_dashboard(path: Path) -> tuple[list[DashboardQuery], list[RuleFileError]]:
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        return [], [RuleFileError(path, 0, f"cannot read: {exc}")]
    except json.JSONDecodeError as exc:
        return [], [RuleFileError(path, exc.lineno, f"invalid JSON: {exc.msg}")]
    if not isinstance(doc, dict):
        return [], [RuleFileError(path, 1, "not a dashboard: the top level is not an object")]
    errors: list[RuleFileError] = []

    def error(message: str, near: str | None = None) -> None:
        errors.append(RuleFileError(path, _line_of(text, near) if near else 0, message))

    for key in ("uid", "title"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            error(f"no {key}: provisioning and links need a stable one")
    if "__inputs" in doc:
        error("__inputs: file provisioning does not resolve them; use the `datasource` variable", '"__inputs"')
    for match in sorted(set(re.findall(r"\$\{?DS_\w+\}?", text))):
        error(f"{match}: an __inputs data source; use {DATASOURCE}", match)

    variables = [v for v in _list(_dict(doc.get("templating")).get("list")) if isinstance(v, dict)]
    names = {str(v.get("name")) for v in variables}
    if not any(v.get("name") == "datasource" and v.get("type") == "datasource" for v in variables):
        error(f"no `datasource` template variable of type datasource for panels to use as {DATASOURCE}")
    for variable in variables:
        if variable.get("type") == "query" and not _uses_datasource(variable.get("datasource")):
            error(f"variable {variable.get('name')}: data source is not {DATASOURCE}", f'"{variable.get("name")}"')

    queries: list[DashboardQuery] = []
    for panel in _panels(doc.get("panels")):
        title = str(panel.get("title") or f"#{panel.get('id')}")
        where = json.dumps(title)
        if not _uses_datasource(panel.get("datasource")):
            error(f"panel {title!r}: data source is not {DATASOURCE}", where)
        targets = [t for t in _list(panel.get("targets")) if isinstance(t, dict)]
        if not targets:
            error(f"panel {title!r}: no queries", where)
        for target in targets:
            ref = str(target.get("refId") or "?")
            expr = target.get("expr")
            if not _uses_datasource(target.get("datasource")):
                error(f"panel {title!r} query {ref}: data source is not {DATASOURCE}", where)
            if not isinstance(expr, str) or not expr.strip():
                error(f"panel {title!r} query {ref}: no PromQL expr", where)
                continue
            line = _line_of(text, json.dumps(expr)) or _line_of(text, where)
            for match in _VARIABLE.finditer(expr):
                name = match.group(1) or match.group(2)
                if name not in names and name not in BUILTIN_VARIABLES:
                    errors.append(RuleFileError(path, line, f"panel {title!r} query {ref}: unknown variable ${name}"))
            queries.append(DashboardQuery(path, line, title, ref, expr, substitute_variables(expr, names)))
    return queries, errors


def _promtool_check_queries(queries: list[DashboardQuery]) -> list[RuleFileError]:
    """PromQL syntax of every query, by promtool: each becomes a recording rule of a scratch rule file."""
    rules = [{"record": f"dashboard_query_{i}", "expr": q.promql} for i, q in enumerate(queries)]
    with tempfile.TemporaryDirectory(prefix="controlplane-check-") as tmp:
        scratch = Path(tmp) / "dashboards.rules.yaml"
        scratch.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
        proc = _promtool("check", "rules", str(scratch))
    if proc is None or proc.returncode == 0:
        return []
    errors = []
    for match in re.finditer(r'rule (\d+), "dashboard_query_\d+": (.*)', proc.stderr + proc.stdout):
        q = queries[int(match.group(1)) - 1]
        errors.append(RuleFileError(q.file, q.line, f"panel {q.panel!r} query {q.ref_id}: {match.group(2)}"))
    return errors or [RuleFileError(queries[0].file.parent, 0, f"promtool failed on the queries: {_tail(proc)}")]


def _panels(value: object) -> Iterator[dict[str, Any]]:
    """Every panel but rows; a collapsed row keeps its panels inside it."""
    for panel in _list(value):
        if not isinstance(panel, dict):
            continue
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels"))
        else:
            yield panel


def _uses_datasource(value: object) -> bool:
    return value == DATASOURCE or (isinstance(value, dict) and value.get("uid") == DATASOURCE)


# --- helpers --------------------------------------------------------------------------------


def _locate(args: argparse.Namespace, name: str) -> Path | None:
    from controlplane.config import load_settings

    rules_dir: Path = args.directory if getattr(args, "directory", None) is not None else load_settings().rules_dir
    directory = rules_dir.resolve().parent / name
    return _show(directory) if directory.is_dir() else None


def _result(errors: list[RuleFileError], summary: str) -> CheckResult:
    errors = sorted(errors, key=lambda e: (str(e.file), e.line))
    return CheckResult(errors=[str(e) for e in errors], summary="" if errors else summary)


def _show(path: Path) -> Path:
    """Paths under the working directory print relative to it, as the rule checker's do."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _fields(node: Node | None) -> dict[str, Node]:
    if not isinstance(node, MappingNode):
        return {}
    return {key.value: value for key, value in node.value if isinstance(key, ScalarNode)}


def _text(node: Node | None) -> str | None:
    """A scalar's text, None when it is missing, empty or not a scalar."""
    if isinstance(node, ScalarNode) and isinstance(node.value, str) and node.value.strip():
        return node.value
    return None


def _line(node: Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first occurrence of `needle`, 0 when it is not there."""
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else 0


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
