"""Owns the bare baseline: a plain FastAPI endpoint that stores the raw webhook body in SQLite and nothing else.

Same durability as the service (journal_mode=WAL, synchronous=FULL): one INSERT and one commit per
request on a single connection guarded by a lock, answered 200 only after the commit. No parsing, no
dedup, no incidents: what an ordinary engineer writes first, and what the service is measured against.

Run: python bench/bare_app.py --port 8081 --db /tmp/bare.db   (one uvicorn worker)
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Request

WEBHOOK_PATH = "/api/v1/alerts/alertmanager"


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS notifications"
        " (id INTEGER PRIMARY KEY, received_at REAL NOT NULL, body BLOB NOT NULL)"
    )
    conn.commit()
    return conn


async def raw_body(request: Request) -> bytes:
    return await request.body()


def create_app(db_path: str) -> FastAPI:
    conn = connect(db_path)
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(WEBHOOK_PATH)
    def receive(body: Annotated[bytes, Depends(raw_body)]) -> dict[str, str]:
        with lock:
            conn.execute("INSERT INTO notifications (received_at, body) VALUES (?, ?)", (time.time(), body))
            conn.commit()
        return {"status": "accepted"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--db", required=True, help="SQLite file to insert into")
    args = parser.parse_args()
    uvicorn.run(create_app(args.db), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
