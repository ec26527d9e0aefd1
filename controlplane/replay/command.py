"""Owns `controlplane replay`: its arguments, its progress line on a terminal, and Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from controlplane.durations import parse_duration
from controlplane.errors import InvalidInput


def add_parser(sub: Any) -> None:
    replay = sub.add_parser(
        "replay",
        help="replay stored alerts through the rules (or candidate rules) and compare with what ran",
        description=(
            "Replays the alerts the service stored in a time range through a rule set, with every guard's "
            "clock as it was at each alert, in a throw-away database: nothing runs, nothing is written to the "
            "service's database. Reports per rule what would run and what each guard would suppress, against "
            "what actually ran. With the rules in force it must reproduce history: --check exits 1 if not."
        ),
    )
    span = replay.add_mutually_exclusive_group(required=True)
    span.add_argument("--since", type=parse_duration, metavar="DURATION", help="the last DURATION, e.g. 7d, 12h")
    span.add_argument("--from", dest="start", type=iso_time, metavar="TIME", help="ISO 8601 start (UTC if no zone)")
    replay.add_argument("--to", dest="end", type=iso_time, metavar="TIME", help="ISO 8601 end (default: now)")
    replay.add_argument("--rules", type=Path, metavar="DIR", help="candidate rules (default: CONTROLPLANE_RULES_DIR)")
    replay.add_argument("--database-url", help="the service's database (default: CONTROLPLANE_DATABASE_URL)")
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.add_argument("--check", action="store_true", help="exit 1 when any decision differs from history")
    replay.set_defaults(func=cmd_replay)


def iso_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r} (e.g. 2026-12-01T00:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ProgressLine:
    """`12,000 / 100,000 alerts  25,300 alerts/s  3 s left`, redrawn in place at most 5 times a second."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.began = time.perf_counter()
        self.shown = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.shown < 0.2 and done < total:
            return
        self.shown = now
        rate = done / (now - self.began) if now > self.began else 0.0
        left = f"{(total - done) / rate:,.0f} s left" if rate else ""
        self.out.write(
            f"\r{done:,} / {total:,} alerts  {rate:,.0f} alerts/s  {left}  (Ctrl-C stops with a partial report) "
        )
        self.out.flush()

    def end(self) -> None:
        self.out.write("\n")


def cmd_replay(args: argparse.Namespace) -> int:
    from controlplane.cli import RULES_SETTING, _load_rules, _settings
    from controlplane.db.engine import make_engine
    from controlplane.replay.run import replay

    settings = _settings(args)
    directory, named_by = (args.rules, "--rules") if args.rules else (settings.rules_dir, RULES_SETTING)
    rules = _load_rules(directory, named_by)
    end = args.end or datetime.now(UTC)
    start = end - args.since if args.since is not None else args.start
    stop = threading.Event()
    progress = ProgressLine(sys.stderr) if sys.stderr.isatty() else None

    def on_interrupt(_signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        stop.set()

    previous = (
        signal.signal(signal.SIGINT, on_interrupt) if threading.current_thread() is threading.main_thread() else None
    )
    engine = make_engine(settings.database_url)
    try:
        report = replay(
            engine,
            rules=rules,
            rules_label=str(directory),
            default_group_by=settings.incident_group_by,
            start=start,
            end=end,
            progress=progress,
            should_stop=stop.is_set,
        )
    except InvalidInput as exc:
        print(f"controlplane replay: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if progress is not None:
            progress.end()
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        print("\n".join(report.lines()))
    if report.partial:
        return 130
    return 1 if args.check and not report.reproduces else 0
