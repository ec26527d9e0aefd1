"""The `controlplane` command: serve, migrate, check, init, demo, render, plan, replay (replay/command.py),
test (scenarios/command.py); incidents, incident, postmortem, approve, pause, resume (operator_cli.py); archive
import, vacuum (retention/command.py)."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controlplane import __version__, operator_cli, plan_cli
from controlplane.checks import CheckResult, check_alert_rules, check_dashboards
from controlplane.config import ENV_PREFIX, Settings, SettingsError, http_url, load_settings
from controlplane.defaults import RULES_DIR as DEFAULT_RULES_DIR
from controlplane.replay import command as replay_command
from controlplane.retention import command as retention_command
from controlplane.rules.loader import RuleLoadError, RuleSet
from controlplane.scenarios import command as test_command

RULES_SETTING = f"{ENV_PREFIX}RULES_DIR"


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "host", None):
        overrides["listen_host"] = args.host
    if getattr(args, "port", None):
        overrides["listen_port"] = args.port
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return load_settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import structlog
    import uvicorn

    from controlplane.app import create_app
    from controlplane.connections import RESERVED_FDS, ConnectionLimits, fd_limit_too_low, protocol_for
    from controlplane.telemetry import configure_logging

    settings = _settings(args)
    # Checked before anything starts: a bad rules directory is a few plain lines on stderr, not a
    # traceback from the application's start-up (which loads them again, to serve them).
    try:
        _load_rules(settings.rules_dir, RULES_SETTING)
    except RuleLoadError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        where = f"rules directory {settings.rules_dir.absolute()} ({RULES_SETTING})"
        print(f"controlplane: {where}: {_count(len(exc.errors), 'error')}; not serving", file=sys.stderr)
        return 2
    # A fatal signal (SIGBUS from SQLite's mapped -shm file, SIGSEGV) prints every thread's Python
    # traceback on stderr instead of killing the process without a word.
    faulthandler.enable(all_threads=True)
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("controlplane")
    if settings.rules_dir == DEFAULT_RULES_DIR:
        log.info(
            "rules.defaults",
            directory=str(settings.rules_dir),
            hint=f"set {RULES_SETTING} to rules of your own (`controlplane init DIR` writes a starter)",
        )
    _log_sqlite_files(log, settings.database_url)
    app = create_app(settings)
    url = f"http://{settings.listen_host}:{settings.listen_port}"
    log.info("serving", url=url, webhook=f"{url}/api/v1/alerts/alertmanager", database=_redact(settings.database_url))
    fd_limit = fd_limit_too_low(settings.max_connections)
    if fd_limit is not None:  # the cap could not keep connections from exhausting file descriptors
        log.warning(
            "serve.fd_limit_low",
            fd_limit=fd_limit,
            max_connections=settings.max_connections,
            hint=f"raise ulimit -n to {settings.max_connections + RESERVED_FDS} or lower CONTROLPLANE_MAX_CONNECTIONS",
        )
    # uvicorn re-raises SIGTERM after its graceful shutdown; exit 0 then, as a clean stop should.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    limits = ConnectionLimits(
        max_connections=settings.max_connections,
        header_timeout=settings.request_header_timeout_seconds,
        body_timeout=settings.request_body_timeout_seconds,
    )
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        http=protocol_for(limits, lambda reason: app.state.services.metrics.connections_closed.labels(reason).inc()),
        ws="none",  # no route speaks WebSocket; an upgrade request is served as plain HTTP
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        forwarded_allow_ips=settings.forwarded_allow_ips,  # whose X-Forwarded-Proto/-For set scheme and client
    )
    return 0


def _log_sqlite_files(log: Any, database_url: str) -> None:
    """Say where SQLite keeps its files (a warning on a filesystem where its -shm mapping can SIGBUS)."""
    from controlplane.db.sqlite_files import sqlite_files

    files = sqlite_files(database_url)
    if files is None:
        return
    (log.warning if files.risk else log.info)(
        "sqlite.files",
        database=str(files.database),
        wal=str(files.wal),
        shm=str(files.shm),
        filesystem=files.filesystem,
        free_bytes=files.free_bytes,
        risk=files.risk,
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from controlplane.db import migrate
    from controlplane.db.engine import make_engine

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    current = migrate.current_revision(engine)
    newer = " (a newer release's: left as it is)" if migrate.is_newer(engine, current) else ""
    print(f"database at revision {current}{newer} ({_redact(settings.database_url)})")
    return 0


def cmd_sample_app(args: argparse.Namespace) -> int:
    from controlplane.sample.app import serve
    from controlplane.sample.llm import parse_models

    try:
        token = args.admin_token_file.read_text().strip() if args.admin_token_file else None
    except OSError as exc:
        print(f"controlplane: --admin-token-file {args.admin_token_file}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.admin_token_file and not token:
        print(f"controlplane: --admin-token-file {args.admin_token_file} is empty", file=sys.stderr)
        return 2
    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    try:
        models = parse_models(args.llm_models)
        serve(
            host=args.host,
            port=args.port,
            graphs=graphs,
            interval=args.interval,
            admin_token=token,
            seed=args.seed,
            models=models,
        )
    except ValueError as exc:  # a graph name or model the service refuses
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from controlplane.demo import run_demo

    return run_demo(graph=args.graph, timeout=args.timeout, keep=args.keep)


def _load_rules(directory: Path, named_by: str) -> RuleSet:
    """The rules in `directory`. One that cannot be read is a SettingsError naming it and what named it (main
    prints it on one line, exit 2); errors in its files pass through as RuleLoadError (`file:line: message`)."""
    from controlplane.actions.builtin import build_registry
    from controlplane.rules.loader import RulesDirectoryError, load_rules

    try:
        return load_rules(directory, build_registry())
    except RulesDirectoryError as exc:
        raise SettingsError(f"rules directory {directory.absolute()} ({named_by}): {exc.problem}") from None


def check_rules(args: argparse.Namespace) -> CheckResult:
    if args.directory is not None:
        directory, named_by = args.directory, "the command line"
    else:
        directory, named_by = _settings(args).rules_dir, RULES_SETTING
    try:
        rules = _load_rules(directory, named_by)
    except RuleLoadError as exc:
        return CheckResult(errors=[str(e) for e in exc.errors])
    counts = [
        _count(len(rules.rules), "rule"),
        _count(len(rules.playbooks), "playbook"),
        _count(len(rules.files), "file"),
    ]
    return CheckResult(summary=f"{directory}: {', '.join(counts)}")


def _http_url(value: str) -> str:
    try:
        return http_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# Each checker validates one kind of configuration; `controlplane check` runs them all.
# Alerting rules and dashboards are checked where they sit beside the rules directory (controlplane.checks).
def check_rule_tests(args: argparse.Namespace) -> CheckResult:
    directory = args.directory if args.directory is not None else _settings(args).rules_dir
    errors, summary = test_command.check_rule_tests(directory)
    return CheckResult(errors=errors, summary="" if errors else summary)


CHECKERS: list[Callable[[argparse.Namespace], CheckResult]] = [
    check_rules,
    check_rule_tests,
    check_alert_rules,
    check_dashboards,
]


def cmd_check(args: argparse.Namespace) -> int:
    results = [checker(args) for checker in CHECKERS]
    errors = [error for result in results for error in result.errors]
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        return 1
    for result in results:
        if result.summary:  # a checker with nothing to check (no dashboards/ here) says nothing
            print(f"ok: {result.summary}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from controlplane.defaults import StarterExists, write_starter

    directory: Path = args.directory
    try:
        written = write_starter(directory, version=__version__, force=args.force)
    except StarterExists as exc:
        first, more = exc.existing[0], len(exc.existing) - 1
        also = f" and {_count(more, 'more file')} exist" if more else " exists"
        print(
            f"controlplane: init {directory}: {first}{also}; nothing written (--force replaces them)",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != str(directory) else ""
        print(f"controlplane: init {directory}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    parts = "rules/, alerting/ (tests/, RUNBOOKS.md), dashboards/, README.md"
    print(f"wrote {_count(len(written), 'file')} in {directory}: {parts}")
    print(f"check them: controlplane check {directory / 'rules'}")
    print(f"use them:   CONTROLPLANE_RULES_DIR={directory / 'rules'} controlplane serve")
    return 0


def cmd_provision_grafana(args: argparse.Namespace) -> int:
    from controlplane import grafana

    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        print(f"controlplane: --token-file {args.token_file}: {exc.strerror}", file=sys.stderr)
        return 2
    if not token:
        print(f"controlplane: --token-file {args.token_file} is empty", file=sys.stderr)
        return 2
    directory: Path = args.dir if args.dir is not None else grafana.shipped_dir(_settings(args).rules_dir, "dashboards")
    found = grafana.load_dashboards(directory=directory)
    for error in found.errors:
        print(f"FAILED {error}", file=sys.stderr)
    if not found.dashboards and not found.errors:
        # Provisioning nothing is almost always a wrong --dir; say so instead of succeeding.
        print(f"controlplane: no dashboards (*.json) in {directory}", file=sys.stderr)
        return 1
    client = grafana.GrafanaClient(url=args.url, token=token)
    results = grafana.provision(client=client, dashboards=found.dashboards, folder_uid=args.folder_uid)
    for result in results:
        if result.ok:
            print(f"ok     {result.file} ({result.uid}): {result.detail}")
        else:
            print(f"FAILED {result.file} ({result.uid}): {result.detail}", file=sys.stderr)
    return 1 if found.errors or not all(r.ok for r in results) else 0


def cmd_render_prometheusrule(args: argparse.Namespace) -> int:
    from controlplane import grafana, runbooks
    from controlplane.prometheus_operator import prometheus_rule

    directory: Path | None = args.dir
    public_url: str | None = args.public_url
    if directory is None or public_url is None:  # the settings only for what the options leave out
        settings = _settings(args)
        directory = directory or grafana.shipped_dir(settings.rules_dir, "alerting")
        public_url = public_url or settings.public_url
    try:
        rendered = prometheus_rule(directory=directory, name=args.name, namespace=args.namespace, public_url=public_url)
    except grafana.MonitoringFileError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 1
    if runbooks.PUBLIC_URL in rendered:
        print(
            f"controlplane: the runbook links keep {runbooks.PUBLIC_URL} (no --public-url, no CONTROLPLANE_PUBLIC_URL):"
            " they will not open from Alertmanager's own notifications",
            file=sys.stderr,
        )
    sys.stdout.write(rendered)
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_hash_password(_args: argparse.Namespace) -> int:
    """Print an argon2 hash for `console_users`: the password is read without echo, or from stdin when piped."""
    import getpass

    from controlplane.web.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("controlplane: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("controlplane: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controlplane", description=__doc__)
    parser.add_argument("--version", action="version", version=f"controlplane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the webhook, API and metrics (migrates first)")
    serve.add_argument("--host", help="listen address (CONTROLPLANE_LISTEN_HOST)")
    serve.add_argument("--port", type=int, help="listen port (CONTROLPLANE_LISTEN_PORT)")
    serve.add_argument("--database-url", help="database URL (CONTROLPLANE_DATABASE_URL)")
    serve.set_defaults(func=cmd_serve)
    mig = sub.add_parser("migrate", help="upgrade the database schema to the newest revision")
    mig.add_argument("--database-url", help="database URL (CONTROLPLANE_DATABASE_URL)")
    mig.set_defaults(func=cmd_migrate)
    check = sub.add_parser(
        "check", help="validate rules, alerting rules and dashboards; errors as file:line: message, exit 1 on any"
    )
    check.add_argument(
        "directory",
        nargs="?",
        type=Path,
        help="rules directory (default: CONTROLPLANE_RULES_DIR, else the packaged defaults)",
    )
    check.set_defaults(func=cmd_check)
    init = sub.add_parser(
        "init",
        help="write a starter configuration directory (rules, alerting rules, dashboards) to edit and keep in git",
    )
    init.add_argument("directory", type=Path, help="where to write it (created if missing)")
    init.add_argument("--force", action="store_true", help="replace files the starter would write that exist")
    init.set_defaults(func=cmd_init)
    sample = sub.add_parser("sample-app", help="run the sample LangGraph-style service (metrics, admin API, faults)")
    sample.add_argument("--port", type=int, required=True, help="listen port")
    sample.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    sample.add_argument("--graphs", default="chat,search,summarize", help="comma-separated graph names")
    sample.add_argument("--interval", type=float, default=0.2, help="seconds between runs of each graph")
    sample.add_argument("--admin-token-file", type=Path, help="file holding the /admin API's bearer token")
    sample.add_argument("--seed", type=int, default=0, help="seed of the simulated outcomes")
    sample.add_argument(
        "--llm-models",
        default="anthropic/claude-sonnet-4,openai/gpt-4o,google/gemini-2.5-pro",
        help="comma-separated provider/model catalogue; every graph starts on the first",
    )
    sample.set_defaults(func=cmd_sample_app)
    provision = sub.add_parser("provision", help="push shipped configuration into the tools around the control plane")
    targets = provision.add_subparsers(dest="target", required=True)
    graf = targets.add_parser(
        "grafana", help="create or update every dashboard in Grafana (POST /api/dashboards/db); exit 1 on any failure"
    )
    graf.add_argument("--url", required=True, help="Grafana's base URL, e.g. http://grafana:3000")
    graf.add_argument(
        "--token-file", required=True, type=Path, help="file holding a Grafana service-account token (sent as Bearer)"
    )
    graf.add_argument("--folder-uid", help="Grafana folder to put the dashboards in (default: General)")
    graf.add_argument(
        "--dir", type=Path, help="dashboards directory (default: dashboards/ beside CONTROLPLANE_RULES_DIR)"
    )
    graf.set_defaults(func=cmd_provision_grafana)
    render = sub.add_parser("render", help="print shipped configuration as objects for other tools")
    kinds = render.add_subparsers(dest="kind", required=True)
    rule = kinds.add_parser(
        "prometheusrule", help="the alerting rules as a prometheus-operator PrometheusRule (YAML on stdout)"
    )
    rule.add_argument(
        "--dir", type=Path, help="alerting rules directory (default: alerting/ beside CONTROLPLANE_RULES_DIR)"
    )
    rule.add_argument("--name", default="controlplane", help="metadata.name (default controlplane)")
    rule.add_argument("--namespace", default="controlplane", help="metadata.namespace (default controlplane)")
    rule.add_argument(
        "--public-url",
        type=_http_url,
        help="the control plane's URL, for the runbook links (default: CONTROLPLANE_PUBLIC_URL)",
    )
    rule.set_defaults(func=cmd_render_prometheusrule)
    demo = sub.add_parser(
        "demo",
        help="run the whole loop on loopback (sample service, Prometheus, Alertmanager, control plane) and narrate it",
    )
    demo.add_argument("--graph", default="chat", choices=["chat", "search", "summarize"], help="the graph to break")
    demo.add_argument("--timeout", type=float, default=150.0, help="seconds the loop may take before exit 1")
    demo.add_argument("--keep", action="store_true", help="keep the stack running after the loop until Ctrl-C")
    demo.set_defaults(func=cmd_demo)
    hashpw = sub.add_parser("hash-password", help="print an argon2 hash of a console password (for console_users)")
    hashpw.set_defaults(func=cmd_hash_password)
    plan_cli.add_parser(sub)
    replay_command.add_parser(sub)
    test_command.add_parser(sub)
    operator_cli.add_parsers(sub)
    retention_command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
