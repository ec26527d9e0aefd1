"""Owns the runbooks: the Markdown files beside the alerting rules, rendered to HTML for /runbooks/<file>, and where
an alert's `runbook_url` annotation links to.

The shipped alerting rules write `runbook_url: ${CONTROLPLANE_PUBLIC_URL}/runbooks/RUNBOOKS.md#<alert>`:
Prometheus annotations are static, so the placeholder is replaced with the public URL where the
rules leave the control plane (GET /api/v1/alerting/rules, `controlplane render prometheusrule`),
and where the control plane shows a link itself (console, Slack, PagerDuty). Headings get the ids
GitHub gives them, so `#controlplanewebhookfailing` opens the same section here as in the repository.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from controlplane.errors import NotFound

PUBLIC_URL = "${CONTROLPLANE_PUBLIC_URL}"
ROUTE = "/runbooks"
# A path inside the configuration directory, as rules wrote runbook_url before the service served runbooks
# (and as `controlplane check` reads a relative one): the runbook files are those of alerting/.
REPOSITORY_PREFIX = "alerting/"
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.md")

# CommonMark with tables; raw HTML in a runbook is shown as text, and markdown-it refuses
# javascript:, vbscript:, file: and data: links. Runbooks are operators' files, but served without login.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    level: int


@dataclass(frozen=True)
class Runbook:
    file: str  # its name in alerting/
    title: str  # the first heading, else the file name
    html: str  # safe to insert as is: everything from the Markdown source is escaped
    sections: list[Section]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _heading_text(inline: Token) -> str:
    return "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))


def _number_sections(tokens: list[Token]) -> list[Section]:
    """Give every heading its id (set on the tokens); a repeated one gets -1, -2, ... as on GitHub."""
    sections: list[Section] = []
    seen: dict[str, int] = {}
    for opening, inline in itertools.pairwise(tokens):
        if opening.type != "heading_open":
            continue
        title = _heading_text(inline)
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchor = base if count == 0 else f"{base}-{count}"
        opening.attrSet("id", anchor)
        sections.append(Section(id=anchor, title=title, level=int(opening.tag[1])))
    return sections


def render(text: str, *, file: str) -> Runbook:
    tokens = _markdown.parse(text)
    sections = _number_sections(tokens)
    html = _markdown.renderer.render(tokens, _markdown.options, {})
    title = next((s.title for s in sections if s.level == 1), file)
    return Runbook(file=file, title=title, html=html, sections=sections)


def anchors(text: str) -> set[str]:
    """The ids of a Markdown text's headings, as the served page has them."""
    return {section.id for section in _number_sections(_markdown.parse(text))}


def files(directory: Path) -> list[str]:
    """The runbook files (`*.md`) directly in `directory`, by name; a missing directory holds none."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_file() and _FILE.fullmatch(p.name))


def load(directory: Path, name: str) -> Runbook:
    """One runbook file of `directory`, rendered. Only plain `*.md` names directly in it: never a path."""
    if not _FILE.fullmatch(name) or name not in files(directory):
        raise NotFound(f"no runbook {name!r}")
    try:
        text = (directory / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotFound(f"{name}: cannot be read: {exc}") from None
    return render(text, file=name)


def load_all(directory: Path) -> tuple[list[Runbook], list[str]]:
    """Every runbook of `directory`, rendered, and `file: message` for each that cannot be read."""
    found: list[Runbook] = []
    errors: list[str] = []
    for name in files(directory):
        try:
            found.append(load(directory, name))
        except NotFound as exc:
            errors.append(exc.message)
    return found, errors


def expand(value: str, public_url: str | None) -> str:
    """`value` with the placeholder replaced by the public URL; unchanged without one."""
    return value.replace(PUBLIC_URL, public_url.rstrip("/")) if public_url else value


def link(url: str | None, *, public_url: str | None) -> str | None:
    """Where a `runbook_url` annotation links, or None when it must not become a link.

    - an http(s) URL: as it is; any other scheme (`javascript:`, `data:`, ...): never;
    - `${CONTROLPLANE_PUBLIC_URL}/...` (the shipped rules): under the public URL;
    - `alerting/<file>.md#anchor` (a path in the configuration directory): that runbook under /runbooks/;
    - any other relative reference: a path under the public URL.
    Without a public URL the last three are paths on this site (`/runbooks/...`): the console links them
    as they are, while Slack and PagerDuty need an absolute URL and leave them out.
    Alert annotations are untrusted: whitespace, control characters and backslashes (which browsers
    strip or read as `/`, turning `/\\evil.example` into another host) make it no link at all.
    """
    if url is None:
        return None
    url = url.strip()
    if not url or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in url):
        return None
    if url.startswith(PUBLIC_URL):
        path = "/" + url[len(PUBLIC_URL) :].lstrip("/")
    else:
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        if parts.scheme:
            return url if parts.scheme.lower() in ("http", "https") and parts.netloc else None
        if url.startswith("//"):  # scheme-relative: another host
            return None
        repository = url.startswith(REPOSITORY_PREFIX)
        path = f"{ROUTE}/{url.removeprefix(REPOSITORY_PREFIX)}" if repository else "/" + url.lstrip("/")
    return (public_url or "").rstrip("/") + path
