"""The `controlplane` command: serve, migrate."""

from __future__ import annotations

import argparse
import sys

from controlplane import __version__
from controlplane.config import Settings, SettingsError, load_settings


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
    from controlplane.telemetry import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    url = f"http://{settings.listen_host}:{settings.listen_port}"
    structlog.get_logger("controlplane").info(
        "serving", url=url, webhook=f"{url}/api/v1/alerts/alertmanager", database=_redact(settings.database_url)
    )
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from controlplane.db import migrate
    from controlplane.db.engine import make_engine

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    print(f"database at revision {migrate.current_revision(engine)} ({_redact(settings.database_url)})")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
