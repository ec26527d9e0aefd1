"""Owns turning a screen's data into HTML: the Jinja2 environment (autoescaped), its filters, full page or block.

One template per screen; an htmx request gets a named block of the same template
(jinja2-fragments), so a fragment can never drift from the page it updates. Templates are
given typed objects (web/screens.py); `_namespace` is the one place they become template names.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import orjson
from jinja2_fragments import render_block
from markupsafe import Markup, escape

from controlplane import runbooks
from controlplane.durations import format_duration, spoken
from controlplane.rules import matchers
from controlplane.web import views
from controlplane.web.screens import PageContext, Screen
from controlplane.web.views import EventLine

# Templates and static files are package data beside this module (pyproject.toml).
WEB_DIR = Path(__file__).resolve().parent

SEVERITY_CLASS = {
    "critical": "sev-critical",
    "page": "sev-critical",
    "error": "sev-error",
    "high": "sev-error",
    "warning": "sev-warning",
    "info": "sev-info",
}


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """`3 min ago`, `in 2 h`: minutes are the finest unit, so a re-rendered page only changes when it should."""
    if value is None:
        return "never"
    now = now or datetime.now(UTC)
    seconds = (now - value).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        return "just now" if not future else "in under a minute"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    raise AssertionError("unreachable")


def absolute(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def clock(value: datetime | None) -> str:
    """The time of day in UTC, for a line whose date its heading gives."""
    return value.astimezone(UTC).strftime("%H:%M:%S UTC") if value else ""


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value else ""


def when(value: datetime | None, short: bool = False) -> Markup:
    """A time as UTC and relative; console.js adds the viewer's local time into `.local` (without it: UTC alone).

    `short`: the time of day only, for lines under a heading that gives the date (an execution's own events).
    A function, not a macro: a big incident draws it on thousands of lines, and a Jinja macro call costs more.
    """
    # Every part is text this module writes (digits, "UTC", "min ago"); escaped all the same. No Markup.format:
    # string.Formatter is the slowest part of a big incident's page.
    if value is None:
        return Markup('<span class="muted">—</span>')
    shown = clock(value) if short else absolute(value)
    attribute = " data-short" if short else ""
    return Markup(
        f'<time datetime="{escape(iso(value))}"{attribute}><span class="utc">{escape(shown)}</span>'
        f'<span class="local"></span><span class="sep"> · </span><span class="ago">{escape(ago(value))}</span></time>'
    )


def event_when(line: EventLine, short: bool = False) -> Markup:
    """The time of a timeline line; of a folded run of repeats, the last one's."""
    last = Markup('<span class="muted">last</span> ' if line.folded else "")
    return last + when(line.event.at, short)


def repeat_count(line: EventLine) -> Markup:
    """` \u00d712 in 6 min` after a folded line's action, with the first and last times in its title."""
    if not line.folded:
        return Markup("")
    title = escape(f"{line.count} times from {absolute(line.first_at)} to {absolute(line.event.at)}")
    return Markup(f' <span class="repeat" title="{title}">\u00d7{line.count} in {escape(spoken(line.span))}</span>')


def span(value: timedelta | None) -> str:
    """A duration rounded to the second, in the rule files' notation (`4m10s`)."""
    if value is None:
        return ""
    return format_duration(timedelta(seconds=round(value.total_seconds()))) if value.total_seconds() >= 1 else "0s"


_PRETTY = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
_PRETTY |= orjson.OPT_PASSTHROUGH_DATACLASS


def pretty(value: Any) -> str:
    """Indented JSON with sorted keys. orjson writes what json.dumps did, 25 times faster: a big incident's
    page shows hundreds of audit details and step inputs, and json.dumps was a tenth of its time. What orjson
    refuses (an integer beyond 64 bits in an untrusted step output) is written by json.dumps instead."""
    try:
        return orjson.dumps(value, default=str, option=_PRETTY).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def link(url: str | None) -> str:
    """The URL if it is http(s), else empty: alert URLs are untrusted, `javascript:` must never become a link."""
    if not url:
        return ""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return ""
    return url if scheme in ("http", "https") else ""


def runbook(url: str | None) -> str:
    """Where an alert's `runbook_url` links in the console, else empty: http(s) as it is, the runbooks served here
    as a path on this site (controlplane/runbooks.py), never another scheme."""
    return runbooks.link(url, public_url=None) or ""


def counted(value: int) -> str:
    """An alert count, which the console stops at ALERTS_COUNTED: `1,000+` beyond it."""
    cap = views.ALERTS_COUNTED
    return f"{cap:,}+" if value > cap else str(value)


def severity_class(severity: str | None) -> str:
    return SEVERITY_CLASS.get((severity or "").lower(), "sev-none")


class Templates:
    def __init__(self, directory: Path = WEB_DIR / "templates") -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            autoescape=True,  # every template: labels, annotations and step outputs are untrusted
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            ago=ago,
            absolute=absolute,
            clock=clock,
            iso=iso,
            span=span,
            spoken=spoken,
            pretty=pretty,
            link=link,
            runbook=runbook,
            severity=severity_class,
            counted=counted,
            matchers=matchers.shown,
        )
        # Macros as globals: a block rendered alone (jinja2-fragments) does not see its template's imports.
        macros = self.env.get_template("_macros.html").module
        self.env.globals.update({name: value for name, value in vars(macros).items() if not name.startswith("_")})
        self.env.globals.update(when=when, event_when=event_when, repeat_count=repeat_count)

    def render(self, context: PageContext, screen: Screen, *, block: str | None = None) -> str:
        """The screen's whole page, or only `block` of it."""
        values = _namespace(context, screen)
        if block is None:
            return self.env.get_template(screen.template).render(values)
        return render_block(self.env, screen.template, block, values)

    def flash(self, context: PageContext) -> str:
        """Only the context's flash message (base.html's `flash` block): what an htmx action gets back."""
        return render_block(self.env, "base.html", "flash", _namespace(context))


def _namespace(context: PageContext, screen: Screen | None = None) -> dict[str, Any]:
    """The names a template sees: the frame's fields and the screen's side by side (not deep-copied, as
    dataclasses.asdict would). A screen field must not hide one of the frame's, which every page reads."""
    values = {f.name: getattr(context, f.name) for f in fields(context)}
    own = {f.name: getattr(screen, f.name) for f in fields(screen)} if screen is not None else {}
    if hidden := values.keys() & own.keys():
        raise TypeError(f"{type(screen).__name__} hides the page's {', '.join(sorted(hidden))}")
    return values | own
