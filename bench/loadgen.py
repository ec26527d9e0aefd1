"""Owns the fallback load generator (when wrk is missing): keep-alive HTTP/1.1 POSTs from asyncio, like ingest.lua.

Same arguments and same output line as bench/ingest.lua under wrk:
    python bench/loadgen.py URL BODY_FILE same|unique PREFIX --duration 10 --connections 32 [--groups N] [--quantiles]
prints BENCH_JSON {"sent":..,"ok":..,"non2xx":..,"errors":..,"duration_us":..,"p50_us":..,"p99_us":..}
(--quantiles adds "quantiles_us":[[percentile,us],..] on ingest.lua's grid).
No request is started after the deadline; those in flight are awaited, so sent == ok + non2xx + errors.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 10.0


@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    non2xx: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


# ingest.lua's percentile grid: fine near the tail, where merged p99s are read.
QUANTILE_GRID = [float(p) for p in range(1, 98)] + [p / 10 for p in range(971, 1000)] + [99.95, 99.99]


class Bodies:
    """The body of each request: the template as is ("same") or with a fresh fingerprint and startsAt ("unique").

    With `groups`, "unique" also replaces @GROUP@ with the counter modulo groups (which incident the alerts join).
    """

    def __init__(self, template: str, unique: bool, prefix: str, groups: int = 0) -> None:
        self._fixed = template.encode()
        self._template = template
        self._unique = unique
        self._prefix = prefix
        self._groups = groups
        self._counter = itertools.count(1)

    def next(self) -> bytes:
        if not self._unique:
            return self._fixed
        n = next(self._counter)
        body = self._template.replace("@FINGERPRINT@", f"{self._prefix}0-{n}")
        if self._groups:
            body = body.replace("@GROUP@", str(n % self._groups))
        return body.replace("@MICROS@", f"{n % 1_000_000:06d}").encode()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ConnectionError("response without Content-Length")
    await reader.readexactly(length)
    return status


async def _connection(url: str, bodies: Bodies, deadline: float, stats: Stats) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.perf_counter() < deadline:
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(host, port)
            body = bodies.next()
            request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
            stats.sent += 1
            started = time.perf_counter()
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status = await _exchange(reader, writer, request)
            stats.latencies.append(time.perf_counter() - started)
            if 200 <= status < 300:
                stats.ok += 1
            else:
                stats.non2xx += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            stats.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def _percentile_us(sorted_seconds: list[float], q: float) -> int:
    if not sorted_seconds:
        return 0
    return round(sorted_seconds[min(len(sorted_seconds) - 1, int(q * len(sorted_seconds)))] * 1e6)


async def run(url: str, bodies: Bodies, duration: float, connections: int, quantiles: bool = False) -> dict[str, Any]:
    stats = Stats()
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(_connection(url, bodies, deadline, stats) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies = sorted(stats.latencies)
    summary: dict[str, Any] = {
        "sent": stats.sent,
        "ok": stats.ok,
        "non2xx": stats.non2xx,
        "errors": stats.errors,
        "duration_us": round(elapsed * 1e6),
        "p50_us": _percentile_us(latencies, 0.50),
        "p99_us": _percentile_us(latencies, 0.99),
    }
    if quantiles:
        grid = [[p, _percentile_us(latencies, p / 100)] for p in QUANTILE_GRID]
        ends = [[0, round(latencies[0] * 1e6)], *grid, [100, round(latencies[-1] * 1e6)]] if latencies else []
        summary["quantiles_us"] = ends
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("body_file", type=Path)
    parser.add_argument("mode", choices=["same", "unique"])
    parser.add_argument("prefix")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--groups", type=int, default=0, help='"unique": @GROUP@ becomes the counter modulo this')
    parser.add_argument("--quantiles", action="store_true", help="add the latency at a grid of percentiles")
    args = parser.parse_args()
    bodies = Bodies(args.body_file.read_text(), args.mode == "unique", args.prefix, args.groups)
    load = run(args.url, bodies, args.duration, args.connections, args.quantiles)
    try:
        import uvloop  # the event loop uvicorn uses here too: less CPU taken from the server
    except ImportError:
        summary = asyncio.run(load)
    else:
        summary = uvloop.run(load)
    print("BENCH_JSON " + json.dumps(summary, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
