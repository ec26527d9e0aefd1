"""The operator commands: `controlplane incidents`, `incident ID`, `postmortem ID`, `approve EXECUTION`,
`pause`, `resume`, talking to a running service's HTTP API (operator_api.py: URL, token, exit codes).

Output is plain aligned tables, or with --json the API's JSON document as it is (for scripts: the
choice is explicit, never guessed from whether stdout is a terminal). `postmortem` prints the document
the service makes (Markdown, or JSON with --format json), to redirect into a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from controlplane.operator_api import (
    DEFAULT_URL,
    EXIT_OK,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    URL_ENV,
    Api,
    CommandFailed,
    read_token,
    service_url,
)

DETAIL_WIDTH = 100  # a timeline row's detail column is cut here (--json has it whole)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; the last column is not padded (titles run long)."""
    cells = [[_cell(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)), row[-1]]) for row in cells
    )


def _cell(value: object) -> str:
    """One line of printable text: labels and titles come from alerts, and a newline or a terminal escape
    sequence in one must neither break the table nor reach the terminal."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


def _when(value: str | None) -> str:
    """`2026-12-06T11:51:04.123456Z` as `2026-12-06 11:51:04` (the API's times are UTC)."""
    if not value:
        return "-"
    return value.replace("T", " ")[:19]


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _api(args: argparse.Namespace) -> Api:
    token = read_token(args.token_file)
    return Api(
        url=service_url(args.url),
        token=token.value if token else None,
        token_source=token.source if token else None,
        timeout=args.timeout,
    )


def cmd_incidents(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"status": args.status or [], "limit": args.limit}
    if args.severity:
        params["severity"] = args.severity
    if args.before:
        params["before"] = args.before
    page = _api(args).get("/api/v1/incidents", params=params).json()
    if args.json:
        _print_json(page)
        return EXIT_OK
    if not page["items"]:
        print("no incidents")
        return EXIT_OK
    rows = [
        (
            i["id"],
            i["status"],
            i["severity"],
            _when(i["opened_at"]),
            f"{i['alerts_firing']}/{i['alerts_total']}",
            i["automation"],
            i["title"],
        )
        for i in page["items"]
    ]
    print(table(("ID", "STATUS", "SEVERITY", "OPENED (UTC)", "FIRING", "AUTOMATION", "TITLE"), rows))
    if page.get("next_cursor"):
        print(f"(more: the same with --before {page['next_cursor']})")
    return EXIT_OK


def cmd_incident(args: argparse.Namespace) -> int:
    detail = _api(args).get(f"/api/v1/incidents/{args.id}").json()
    if args.json:
        _print_json(detail)
        return EXIT_OK
    fields = [
        ("incident", f"{detail['id']}: {detail['title']}"),
        ("status", detail["status"]),
        ("severity", detail["severity"]),
        ("automation", detail["automation"]),
        ("opened", _when(detail["opened_at"])),
        ("acknowledged", _when(detail["acknowledged_at"])),
        ("resolved", _when(detail["resolved_at"])),
        ("alerts", f"{detail['alerts_firing']} firing of {detail['alerts_total']}"),
        ("labels", " ".join(f"{k}={v}" for k, v in sorted(detail["group_labels"].items())) or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    print("\n".join(f"{name.ljust(width)}  {value}" for name, value in fields))
    alerts = [
        (a["id"], a["status"], a["alertname"], _when(a["starts_at"]), _when(a["ends_at"]), a["fingerprint"])
        for a in detail["alerts"]
    ]
    print(f"\nalerts ({_shown(len(alerts), detail['alerts_total'])}):")
    print(table(("ID", "STATUS", "ALERTNAME", "STARTS (UTC)", "ENDS (UTC)", "FINGERPRINT"), alerts))
    events = [(_when(e["at"]), e["actor"], e["action"], _detail(e["detail"])) for e in detail["timeline"]]
    more = " (the first page: --json, or GET .../timeline, for the rest)" if detail["timeline_next_cursor"] else ""
    print(f"\ntimeline{more}:")
    print(table(("AT (UTC)", "ACTOR", "ACTION", "DETAIL"), events))
    return EXIT_OK


def _shown(shown: int, total: int) -> str:
    return f"{total}" if shown >= total else f"the first {shown} of {total}"


def _detail(detail: dict[str, Any]) -> str:
    text = " ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}" for k, v in detail.items()
    )
    text = _cell(text)
    return text if len(text) <= DETAIL_WIDTH else text[: DETAIL_WIDTH - 3] + "..."


def cmd_postmortem(args: argparse.Namespace) -> int:
    accept = "application/json" if args.format == "json" else "text/markdown, text/plain;q=0.9, */*;q=0.1"
    response = _api(args).get(f"/api/v1/incidents/{args.id}/postmortem", params={"format": args.format}, accept=accept)
    if args.format == "json":
        try:
            _print_json(response.json())
        except ValueError:
            raise CommandFailed(1, "the service's postmortem is not JSON") from None
        return EXIT_OK
    text = response.text
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.plan_digest:
        body["plan_digest"] = args.plan_digest
    execution = _api(args).post(f"/api/v1/executions/{args.execution}/approve", body).json()
    if args.json:
        _print_json(execution)
        return EXIT_OK
    progress = f" ({execution['approval_progress']})" if execution.get("approval_progress") else ""
    print(
        f"execution {execution['id']} ({execution['rule_name']}, incident {execution['incident_id'] or '-'}):"
        f" approved, now {execution['status']}{progress}"
    )
    return EXIT_OK


def _switch(action: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        state = _api(args).post(f"/api/v1/automation/{action}", {"reason": args.reason}).json()
        if args.json:
            _print_json(state)
            return EXIT_OK
        said = f": {state['reason']}" if state.get("reason") else ""
        now = "paused (new triggers are suppressed)" if state["paused"] else "running"
        dry = ", dry run on" if state.get("dry_run") else ""
        print(f"automation {now}{dry}; set by {state['updated_by']} at {_when(state['updated_at'])}{said}")
        return EXIT_OK

    return command


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return number


def _page_size(value: str) -> int:
    number = _positive(value)
    if number > 500:
        raise argparse.ArgumentTypeError(f"{value!r} is more than 500")
    return number


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    talk = common.add_argument_group("the service")
    talk.add_argument("--url", help=f"the service's base URL (default: {URL_ENV}, else {DEFAULT_URL})")
    talk.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the read or admin token (default: {TOKEN_FILE_ENV}, else the token in {TOKEN_ENV})",
    )
    talk.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    return common


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the operator commands on `controlplane`'s subcommands."""
    common = _common()
    json_out = argparse.ArgumentParser(add_help=False)
    json_out.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    parents = [common, json_out]
    exits = "exit 0 ok, 1 refused or not found (4xx), 2 usage, 3 unreachable or 5xx"

    incidents = sub.add_parser("incidents", parents=parents, help=f"list incidents, newest first ({exits})")
    incidents.add_argument(
        "--status",
        action="extend",
        nargs="+",
        choices=["open", "acknowledged", "resolved"],
        help="only incidents in these states (several: --status open acknowledged)",
    )
    incidents.add_argument("--severity", help="only this severity")
    incidents.add_argument("--limit", type=_page_size, default=50, metavar="N", help="page size, 1-500 (default 50)")
    incidents.add_argument("--before", type=_positive, metavar="ID", help="the next page: incidents older than ID")
    incidents.set_defaults(func=_guarded(cmd_incidents))

    incident = sub.add_parser("incident", parents=parents, help="one incident: its alerts and timeline")
    incident.add_argument("id", type=_positive, metavar="ID")
    incident.set_defaults(func=_guarded(cmd_incident))

    postmortem = sub.add_parser(
        "postmortem", parents=[common], help="an incident's postmortem document on stdout (> file.md)"
    )
    postmortem.add_argument("id", type=_positive, metavar="ID")
    postmortem.add_argument("--format", choices=["md", "json"], default="md", help="Markdown (default) or JSON")
    postmortem.set_defaults(func=_guarded(cmd_postmortem))

    approve = sub.add_parser("approve", parents=parents, help="approve an execution awaiting approval (admin token)")
    approve.add_argument("execution", type=_positive, metavar="EXECUTION")
    approve.add_argument("--reason", default="", help="recorded in the audit trail")
    approve.add_argument("--plan-digest", help="approve only if the plan is still this one (GET .../plan)")
    approve.set_defaults(func=_guarded(cmd_approve))

    for action, text in (
        ("pause", "pause automation: new triggers are suppressed (admin token)"),
        ("resume", "resume automation after a pause (admin token)"),
    ):
        switch = sub.add_parser(action, parents=parents, help=text)
        switch.add_argument("--reason", default="", help="recorded with the switch and in the audit trail")
        switch.set_defaults(func=_guarded(_switch(action)))


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The command, with a CommandFailed turned into its message on stderr and its exit code."""

    def command(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CommandFailed as exc:
            print(f"controlplane: {exc.message}", file=sys.stderr)
            return exc.code

    return command
