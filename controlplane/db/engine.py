"""Owns database connections: one engine per URL, with SQLite made durable and savepoint-correct."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url


def json_dumps(value: Any) -> str:
    """JSON columns' text: orjson's, several times faster than the json module's (a new alert writes seven
    documents: its labels and annotations, two audit details, its execution's playbook, params and context)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, full fsync on commit, a busy timeout and explicit BEGINs."""
    kwargs = {"json_serializer": json_dumps, "json_deserializer": orjson.loads, **kwargs}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):  # one connection, no queue: pool sizes do not apply
            kwargs = {k: v for k, v in kwargs.items() if k not in ("pool_size", "max_overflow")}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10}, **kwargs)
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # default to psycopg 3, the driver we ship
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        # Keepalives and a user timeout make a silent network partition fail in seconds, not when
        # the kernel gives up retransmitting, so webhooks get their 503 and the writer recovers.
        connect_args = {
            "connect_timeout": 3,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
            **kwargs.pop("connect_args", {}),
        }
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    """Explicit BEGINs (pysqlite's own handling breaks SAVEPOINT and defers BEGIN, as SQLAlchemy's
    documentation warns), WAL, and one in-process queue for writers.

    Writers (execution option `write=True`) queue on a lock of this process and then take
    SQLite's write lock with BEGIN IMMEDIATE: without the queue, colliding writers wait in
    SQLite's busy handler, which sleeps in steps of up to 100 ms. `sync="normal"` lets a
    writer skip the fsync (WAL + NORMAL survives kill -9, not power loss): for execution
    progress, which a resumed step recovers; alerts keep FULL.
    """
    writers = threading.RLock()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # In a new, empty file only (before its first table): retention then gives freed pages back to the
        # file system bit by bit. Asking any other file takes the write lock (a connection opened while a
        # writer held it waited and failed); an older file keeps it off until `controlplane vacuum`.
        if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if not options.get("write"):
            conn.exec_driver_sql("BEGIN")
            return
        writers.acquire()
        conn.info["holds_writer_lock"] = True
        try:
            conn.exec_driver_sql("PRAGMA synchronous=" + ("NORMAL" if options.get("sync") == "normal" else "FULL"))
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(conn)
            raise

    def _release(conn: Any) -> None:
        if conn.info.pop("holds_writer_lock", False):
            writers.release()

    # Released as the COMMIT starts: the next writer waits at most one fsync in SQLite's handler.
    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)


@contextmanager
def write_transaction(engine: Engine, *, sync: Literal["full", "normal"] = "full") -> Iterator[Connection]:
    """A write transaction, committed on success: on SQLite it queues with this process's writers
    and takes the lock up front (BEGIN IMMEDIATE). `sync="normal"` skips the fsync on SQLite, for
    writes a crash may lose because they are redone (execution progress re-runs its step)."""
    with engine.connect().execution_options(write=True, sync=sync) as conn, conn.begin():
        yield conn
