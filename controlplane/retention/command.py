"""The `controlplane archive import FILE...` and `controlplane vacuum` commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from controlplane.retention.archive import TABLES


def add_parser(sub: Any) -> None:
    archive = sub.add_parser("archive", help="read what retention archived back into a database")
    actions = archive.add_subparsers(dest="archive_command", required=True)
    read = actions.add_parser(
        "import",
        help="import archive files (controlplane-archive-DAY.jsonl.gz) into a database",
        description=(
            "Reads archive files written by retention (CONTROLPLANE_ARCHIVE_DIR) into a database, migrated "
            "first: for an investigation, best a database of its own (--database-url), since a running "
            "service's retention deletes old rows again. Rows already there are kept; a reference to a row "
            "in no file and not in the database is cleared, or its row skipped: import the days together. "
            "Exit 0 when read, 2 when a file cannot be read (the message names file and line)."
        ),
    )
    read.add_argument("files", nargs="+", type=Path, metavar="FILE")
    read.add_argument("--database-url", help="the database to import into (default: CONTROLPLANE_DATABASE_URL)")
    read.add_argument("--json", action="store_true", help="print the counts as JSON")
    read.set_defaults(func=cmd_archive_import)
    vacuum = sub.add_parser(
        "vacuum",
        help="SQLite: rewrite the file once so retention gives freed space back (stop the service first)",
        description=(
            "SQLite databases made by this version give the space of pruned rows back as retention runs. "
            "An older file keeps it (freed pages are reused, the file never shrinks) until this command "
            "rewrites it once: stop the service first, as writes wait while it runs. PostgreSQL: nothing to "
            "do, autovacuum makes the space of deleted rows reusable."
        ),
    )
    vacuum.add_argument("--database-url", help="default: CONTROLPLANE_DATABASE_URL")
    vacuum.set_defaults(func=cmd_vacuum)


def cmd_archive_import(args: argparse.Namespace) -> int:
    from controlplane.cli import _redact, _settings
    from controlplane.db import migrate
    from controlplane.db.engine import make_engine
    from controlplane.retention.archive import ArchiveError, import_files

    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"controlplane archive import: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = _settings(args)
    if not args.database_url:
        print(
            f"importing into CONTROLPLANE_DATABASE_URL ({_redact(settings.database_url)}): its service's "
            "retention deletes old rows again; --database-url names a database of their own",
            file=sys.stderr,
        )
    engine = make_engine(settings.database_url)
    try:
        migrate.upgrade(engine)
        result = import_files(engine, args.files)
    except ArchiveError as exc:
        print(f"controlplane archive import: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    counts = {
        name: {
            "read": result.read[name],
            "inserted": result.inserted[name],
            "present": result.present[name],
            "skipped": result.skipped[name],
            "cleared": result.cleared[name],
        }
        for name in TABLES
        if result.read[name]
    }
    if args.json:
        print(json.dumps({"database": _redact(settings.database_url), "tables": counts}, indent=2))
        return 0
    print(f"{'table':<22}{'read':>10}{'inserted':>10}{'present':>10}{'skipped':>10}{'cleared':>10}")
    for name, row in counts.items():
        print(f"{name:<22}" + "".join(f"{value:>10}" for value in row.values()))
    if any(row["skipped"] or row["cleared"] for row in counts.values()):
        print(
            "skipped: rows whose parent is in no file and not in the database; cleared: references to such rows "
            "(import the earlier days' files with these)"
        )
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    import sqlite3

    from controlplane.cli import _redact, _settings
    from controlplane.db.engine import make_engine

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        if engine.dialect.name != "sqlite":
            print("PostgreSQL: nothing to do; autovacuum makes the space of deleted rows reusable")
            return 0
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            before = _size(cursor)
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
            cursor.execute("VACUUM")
            mode = _pragma(cursor, "auto_vacuum")
            after = _size(cursor)
        except sqlite3.OperationalError as exc:
            print(f"controlplane vacuum: {exc} (stop the service first)", file=sys.stderr)
            return 1
        finally:
            raw.close()
    finally:
        engine.dispose()
    sizes = f"{before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
    print(f"{_redact(settings.database_url)}: {sizes}; incremental vacuum {'on' if mode == 2 else 'still off'}")
    return 0


def _pragma(cursor: Any, name: str) -> int:
    cursor.execute(f"PRAGMA {name}")
    return int(cursor.fetchone()[0])


def _size(cursor: Any) -> int:
    return _pragma(cursor, "page_count") * _pragma(cursor, "page_size")
