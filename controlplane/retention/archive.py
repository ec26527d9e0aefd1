"""Owns the archive of what retention deletes: gzip-compressed JSON Lines, one file per day, and reading
it back into a database (`controlplane archive import FILE...`).

Each line is `{"table": NAME, "row": {column: value}}`, datetimes in ISO 8601 with their UTC offset.
Each batch appends one gzip member (a file of several members is one valid gzip stream), written and
fsynced before the batch's deletes commit: a crash between the two leaves rows in the archive that
are still in the database, and the next round archives them again, so an import skips rows it has.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, func, select, text
from sqlalchemy.exc import DataError, IntegrityError

from controlplane.db.engine import write_transaction
from controlplane.db.models import Base, UTCDateTime
from controlplane.db.tables import dialect_insert

# Parents before children: the order an import inserts in, and the order a batch is written in.
TABLES = (
    "incidents",
    "alerts",
    "incident_alerts",
    "executions",
    "execution_steps",
    "pages",
    "audit_events",
    "notification_threads",
    "silences",
    "quarantines",
    "failover_events",
)
PREFIX = "controlplane-archive-"


def table_named(name: str) -> Table:
    return Base.metadata.tables[name]


def archive_path(directory: Path, day: datetime) -> Path:
    return directory / f"{PREFIX}{day:%Y-%m-%d}.jsonl.gz"


def append(directory: Path, rows: dict[str, list[dict[str, Any]]], now: datetime) -> Path:
    """Append one batch's deleted rows to the day's file and fsync it; raises OSError if that fails."""
    lines = b"".join(
        orjson.dumps({"table": name, "row": row}, option=orjson.OPT_NON_STR_KEYS) + b"\n"
        for name in TABLES
        for row in rows.get(name, ())
    )
    path = archive_path(directory, now)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # alert labels and audit details
    try:
        os.write(fd, gzip.compress(lines, compresslevel=6))
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def check_directory(directory: Path) -> None:
    """Raises OSError unless `directory` exists (it is created) and this process can write there."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".{PREFIX}probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


class ArchiveError(Exception):
    """An archive file that cannot be read: the message names the file and the line."""


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    number = 0
    try:
        with gzip.open(path, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ArchiveError(f"{path}:{number}: not JSON: {exc}") from None
                if (
                    not isinstance(entry, dict)
                    or entry.get("table") not in TABLES
                    or not isinstance(entry.get("row"), dict)
                ):
                    raise ArchiveError(f"{path}:{number}: not an archive line ({{'table': ..., 'row': {{...}}}})")
                yield number, entry
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ArchiveError(
            f"{path}: after line {number}: {exc} (a write cut short? the lines before it were read)"
        ) from None


@dataclass
class Imported:
    """Per table: rows read, inserted, already there, skipped (their parent is in no file and not in the
    database), and references to such parents cleared (the column allows it)."""

    read: Counter[str] = field(default_factory=Counter)
    inserted: Counter[str] = field(default_factory=Counter)
    present: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    cleared: Counter[str] = field(default_factory=Counter)


def _decoders(table: Table) -> dict[str, Any]:
    return {column.name: datetime.fromisoformat for column in table.c if isinstance(column.type, UTCDateTime)}


def _insert_chunk(conn: Connection, table: Table, rows: list[dict[str, Any]], result: Imported) -> None:
    """Insert `rows`, keeping what is there; a reference to a row that is not in the database is cleared
    when its column allows NULL, else the row is skipped."""
    for fk in table.foreign_keys:
        column, parent = fk.parent, fk.column
        wanted = {row[column.name] for row in rows if row.get(column.name) is not None}
        if not wanted:
            continue
        there = set(conn.scalars(select(parent).where(parent.in_(wanted))))
        missing = wanted - there
        if not missing:
            continue
        kept = []
        for row in rows:
            if row.get(column.name) not in missing:
                kept.append(row)
            elif column.nullable:
                kept.append({**row, column.name: None})
                result.cleared[table.name] += 1
            else:
                result.skipped[table.name] += 1
        rows = kept
    if not rows:
        return
    before = conn.scalar(select(func.count()).select_from(table)) or 0
    try:
        with conn.begin_nested():
            conn.execute(dialect_insert(conn, table).on_conflict_do_nothing(), rows)
    except (IntegrityError, DataError) as exc:
        raise ArchiveError(f"a row of {table.name} does not fit the schema: {str(exc.orig).splitlines()[0]}") from None
    added = (conn.scalar(select(func.count()).select_from(table)) or 0) - before
    result.inserted.update({table.name: added} if added else {})
    result.present.update({table.name: len(rows) - added} if len(rows) > added else {})


def import_files(engine: Engine, paths: Iterable[Path], *, chunk: int = 1000) -> Imported:
    """Read archive files into `engine`'s database (migrated): table by table, parents first, across all
    files, so a run of an incident archived a day before its incident still finds it. Raises ArchiveError."""
    files = list(paths)
    result = Imported()
    for name in TABLES:
        table = table_named(name)
        decoders = _decoders(table)
        columns = {column.name for column in table.c}
        pending: list[dict[str, Any]] = []
        for path in files:
            for number, entry in _lines(path):
                if entry["table"] != name:
                    continue
                row = entry["row"]
                unknown = set(row) - columns
                if unknown:
                    raise ArchiveError(f"{path}:{number}: {name} has no column {', '.join(sorted(unknown))}")
                try:
                    row = {
                        key: decoders[key](value) if key in decoders and value else value for key, value in row.items()
                    }
                except (TypeError, ValueError) as exc:
                    raise ArchiveError(f"{path}:{number}: {name}: {exc}") from None
                result.read[name] += 1
                pending.append(row)
                if len(pending) >= chunk:
                    with write_transaction(engine) as conn:
                        _insert_chunk(conn, table, pending, result)
                    pending = []
        if pending:
            with write_transaction(engine) as conn:
                _insert_chunk(conn, table, pending, result)
    if engine.dialect.name == "postgresql":
        advance_sequences(engine)
    return result


def advance_sequences(engine: Engine) -> None:
    """PostgreSQL's id sequences past the imported ids, so the database can take new rows afterwards."""
    with write_transaction(engine) as conn:
        for name in TABLES:
            table = table_named(name)
            if "id" not in table.c or not table.c.id.autoincrement:
                continue
            sequence = conn.scalar(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": name})
            highest = conn.scalar(select(func.max(table.c.id)))
            if sequence is None or highest is None:
                continue
            last = conn.scalar(text(f"SELECT last_value FROM {sequence}"))
            if last is None or highest > last:
                conn.execute(text("SELECT setval(:s, :v)"), {"s": sequence, "v": highest})
