"""Owns what the console's templates are given: the frame every page shares, and one typed screen per template.

A template sees the fields of its PageContext and of its screen side by side, by name
(rendering.py builds that namespace, in one place). A screen names its own template and the
block an htmx request gets, so a route only says which screen it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from controlplane.failover.heartbeats import Registration
from controlplane.failover.schemas import FailoverEventView, GroupStatus
from controlplane.grafana import Dashboard
from controlplane.incidents.schemas import IncidentPage
from controlplane.playbooks.guards import Automation
from controlplane.resilience.circuit_breaker import BreakerSnapshot
from controlplane.runbooks import Runbook
from controlplane.web.approvals_view import ApprovalView
from controlplane.web.auth import User
from controlplane.web.rules_view import RulesView
from controlplane.web.views import INCIDENT_STATUSES, SEVERITIES, IncidentFilters, IncidentView


@dataclass(frozen=True)
class Flash:
    kind: Literal["ok", "error"]
    text: str


@dataclass(frozen=True)
class PageContext:
    """The frame of every page (base.html): who is logged in, the nav, the automation banner, the flash."""

    user: User | None
    csrf: str  # this session's token: every form and htmx request carries it
    refresh_seconds: float  # how often live blocks fetch themselves
    path: str  # marks the current screen in the nav
    flash: Flash | None = None
    automation: Automation | None = None  # the banner; read only for a logged-in user's full page


@dataclass(frozen=True)
class Screen:
    """One template's own data; subclasses are frozen dataclasses whose fields the template reads."""

    template: ClassVar[str]
    htmx_block: ClassVar[str | None] = None  # the block an htmx request gets instead of the page


@dataclass(frozen=True)
class LoginScreen(Screen):
    template = "login.html"

    next: str
    error: str | None
    configured: bool  # a user or an auth proxy is configured, else the page says how


@dataclass(frozen=True)
class ErrorScreen(Screen):
    template = "error.html"

    status: int
    message: str


@dataclass(frozen=True)
class IncidentsScreen(Screen):
    template = "incidents.html"
    htmx_block = "list"

    page: IncidentPage
    filters: IncidentFilters
    statuses: tuple[str, ...] = INCIDENT_STATUSES
    severities: tuple[str, ...] = SEVERITIES


@dataclass(frozen=True)
class IncidentScreen(Screen):
    template = "incident.html"
    htmx_block = "live"

    view: IncidentView
    version: str  # the live block's digest: a refresh that brings it back unchanged redraws nothing
    durations: tuple[str, ...]  # what a person may silence for


@dataclass(frozen=True)
class ApprovalsScreen(Screen):
    template = "approvals.html"
    htmx_block = "list"

    waiting: list[ApprovalView]


@dataclass(frozen=True)
class RulesScreen(Screen):
    template = "rules.html"

    view: RulesView


@dataclass(frozen=True)
class EndpointsScreen(Screen):
    template = "endpoints.html"
    htmx_block = "live"

    groups: list[GroupStatus]
    events: list[FailoverEventView]
    breakers: list[BreakerSnapshot]  # this replica's: breakers live in memory
    heartbeats: list[Registration] = field(default_factory=list)  # endpoints that registered with a heartbeat


@dataclass(frozen=True)
class DashboardsScreen(Screen):
    template = "dashboards.html"

    dashboards: list[Dashboard]
    errors: list[str]  # files left out, `file: message`


@dataclass(frozen=True)
class RunbooksScreen(Screen):
    template = "runbooks.html"

    runbooks: list[Runbook]
    errors: list[str]  # files that cannot be shown, `file: message`


@dataclass(frozen=True)
class RunbookScreen(Screen):
    template = "runbook.html"

    runbook: Runbook
