"""Owns the console's HTTP surface: pages, actions, login and logout; thin adapters to views and domain functions.

Every route is a ConsoleRoute, which answers in HTML whatever happens (an error page, or a
flash message for htmx), adds the security headers and writes the session cookie. Pages
answer an htmx request with a named block of their own template. Actions answer htmx with a
flash message and an `cp-changed` event (the page's live blocks then fetch themselves), and a
plain form POST with a redirect, so everything works without JavaScript too.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane import flows, grafana
from controlplane.api.deps import MAX_ID, IdPath, ServicesDep
from controlplane.api.errors import status_for
from controlplane.audit import audit
from controlplane.config import ConsoleRole
from controlplane.db.engine import write_transaction
from controlplane.errors import DomainError, Forbidden, InvalidInput, Unavailable
from controlplane.incidents import service as incident_service
from controlplane.incidents.schemas import IncidentStatus
from controlplane.playbooks import guards
from controlplane.playbooks import service as executions
from controlplane.playbooks.guards import Automation
from controlplane.services import Services
from controlplane.silences import service as silences
from controlplane.text import printable
from controlplane.web import csrf, views
from controlplane.web.auth import BUSY_RETRY_AFTER_SECONDS, COOKIE, Authenticator, LoginThrottle, Session, User
from controlplane.web.rendering import WEB_DIR, Templates
from controlplane.web.screens import (
    ApprovalsScreen,
    DashboardsScreen,
    EndpointsScreen,
    ErrorScreen,
    Flash,
    IncidentScreen,
    IncidentsScreen,
    LoginScreen,
    PageContext,
    RulesScreen,
    Screen,
)

log = structlog.get_logger("controlplane.console")

# Inline scripts and styles are refused: htmx is served from here and configured by a <meta> tag.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
_STATIC_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


@dataclass
class Console:
    """What the console keeps for the life of the app."""

    auth: Authenticator
    throttle: LoginThrottle
    templates: Templates
    secure_cookies: bool  # always Secure (the public URL is https), else whenever the request came over HTTPS
    refresh_seconds: float


@dataclass
class Visit:
    """The request as the console sees it: the session (made on first visit) and who is logged in."""

    session: Session
    user: User | None
    save: bool  # the cookie must be written: a new session, or login/logout


class LoginRequired(Exception):
    pass


def get_console(request: Request) -> Console:
    return request.app.state.console


ConsoleDep = Annotated[Console, Depends(get_console)]


def _read_visit(request: Request, console: Console) -> Visit:
    auth = console.auth
    session = auth.decode(request.cookies.get(COOKIE))
    if session is None:
        return Visit(Session.fresh(), auth.proxy_user(request.headers), save=True)
    user = auth.proxy_user(request.headers) or auth.session_user(session, now=_now())
    if user is None and session.sid is not None:  # logged out, expired, or the password changed
        return Visit(Session.fresh(), None, save=True)  # drop the dead id from the cookie
    return Visit(session, user, save=False)


def get_visit(request: Request, console: ConsoleDep) -> Visit:
    visit = _read_visit(request, console)
    request.state.visit = visit
    return visit


VisitDep = Annotated[Visit, Depends(get_visit)]
FormDep = Annotated[dict[str, str], Depends(csrf.read_text_form)]
# Login reads NUL too: a name with one is still a failed attempt, counted and audited.
LoginFormDep = Annotated[dict[str, str], Depends(csrf.read_form)]


def logged_in(visit: VisitDep) -> User:
    if visit.user is None:
        raise LoginRequired
    return visit.user


def acting_as(role: ConsoleRole) -> Callable[..., User]:
    """For state-changing requests: logged in, this session's CSRF token, and at least `role`."""

    def dependency(request: Request, visit: VisitDep, form: FormDep) -> User:
        user = logged_in(visit)
        csrf.check(visit.session, request, form)
        if not user.can(role):
            raise Forbidden(f"this needs the {role} role; {user.name} is {user.role}")
        return user

    return dependency


ViewerDep = Annotated[User, Depends(logged_in)]
OperatorDep = Annotated[User, Depends(acting_as("operator"))]
AdminDep = Annotated[User, Depends(acting_as("admin"))]


def is_htmx(request: Request) -> bool:
    # A history restore wants the whole page even though htmx sends it.
    return request.headers.get("hx-request") == "true" and request.headers.get("hx-history-restore-request") != "true"


def safe_next(value: str | None, default: str = "/incidents") -> str:
    """Only a path on this site: `//evil.example` and `https://...` would make the redirect an open one."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(ch) < 32 for ch in value) or urlsplit(value).netloc:
        return default
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _actor(user: User) -> str:
    return f"user:{user.name}"


def write_tx(engine: Engine) -> AbstractContextManager[Connection]:
    """Committed before the response is built, so the redirect or refresh that follows sees the change."""
    return write_transaction(engine)


# -- rendering ---------------------------------------------------------------------------------


def _visit_of(request: Request) -> Visit:
    visit = getattr(request.state, "visit", None)
    if visit is None:  # failed before get_visit ran: render as a stranger
        visit = Visit(Session.fresh(), None, save=False)
    return visit


def page_context(request: Request, *, automation: Automation | None = None, flash: Flash | None = None) -> PageContext:
    """The frame of every page, from the visit; the one place it is made."""
    visit = _visit_of(request)
    return PageContext(
        user=visit.user,
        csrf=visit.session.csrf,
        refresh_seconds=get_console(request).refresh_seconds,
        path=request.url.path,
        flash=flash,
        automation=automation,
    )


def page(request: Request, services: Services, screen: Screen, *, status: int = 200) -> HTMLResponse:
    """The screen's page, or only its htmx block for an htmx request."""
    partial = screen.htmx_block is not None and is_htmx(request)
    automation = None
    if not partial and _visit_of(request).user is not None:
        with services.engine.connect() as conn:
            automation = guards.automation(conn)  # the banner on every page
    html = get_console(request).templates.render(
        page_context(request, automation=automation), screen, block=screen.htmx_block if partial else None
    )
    return HTMLResponse(html, status_code=status)


def _flash(request: Request, flash: Flash, status: int, headers: dict[str, str]) -> HTMLResponse:
    html = get_console(request).templates.flash(page_context(request, flash=flash))
    return HTMLResponse(
        html, status_code=status, headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML", **headers}
    )


def done(request: Request, message: str, form: dict[str, str], default: str, *, reload: bool = False) -> Response:
    """After an action: htmx gets a flash and a change event (or a reload); a plain form a redirect."""
    if not is_htmx(request):
        return RedirectResponse(safe_next(form.get("next"), default), status_code=303)
    headers = {"HX-Refresh": "true"} if reload else {"HX-Trigger": "cp-changed"}
    return _flash(request, Flash("ok", message), 200, headers)


def _error(request: Request, status: int, message: str) -> Response:
    if is_htmx(request):
        return _flash(request, Flash("error", message), status, {})
    # No banner: the error may be the database's, and the page must render without it.
    html = get_console(request).templates.render(page_context(request), ErrorScreen(status, message))
    return HTMLResponse(html, status_code=status)


def _to_login(request: Request) -> Response:
    if is_htmx(request):
        current = urlsplit(request.headers.get("hx-current-url", ""))
        back = current.path + (f"?{current.query}" if current.query else "")
        return Response(status_code=401, headers={"HX-Redirect": "/login?next=" + quote(safe_next(back), safe="")})
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = "/login" if request.method != "GET" else "/login?next=" + quote(safe_next(back), safe="")
    return RedirectResponse(target, status_code=303)


def _finish(request: Request, response: Response) -> None:
    console = get_console(request)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-store"  # pages hold incident data and a CSRF token
    response.headers["Vary"] = "HX-Request, Cookie"
    visit = getattr(request.state, "visit", None)
    if visit is not None and visit.save:
        # The scheme is https when the request came over HTTPS, or (uvicorn's proxy headers) from a
        # proxy in `forwarded_allow_ips` that says so in X-Forwarded-Proto.
        response.set_cookie(
            COOKIE,
            console.auth.encode(visit.session),
            max_age=console.auth.max_age,
            path="/",
            httponly=True,
            samesite="lax",
            secure=console.secure_cookies or request.url.scheme == "https",
        )


class ConsoleRoute(APIRoute):
    """Console routes answer in HTML: errors become an error page or an htmx flash, never the API's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = _to_login(request)
            except DomainError as exc:
                response = _error(request, status_for(exc), exc.message)
            except RequestValidationError as exc:
                where = ", ".join(".".join(str(p) for p in e["loc"][1:]) or "request" for e in exc.errors())
                response = _error(request, 422, f"invalid {where}")
            except (OperationalError, InterfaceError):
                response = _error(request, 503, "the database is unavailable: try again in a moment")
            except HTTPException as exc:  # Starlette's own: 413 past the body limit
                response = _error(request, exc.status_code, str(exc.detail))
            _finish(request, response)
            return response

        return console_handler


router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


# -- login -------------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, services: ServicesDep, visit: VisitDep, next: str = "/incidents") -> Response:
    if visit.user is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    configured = get_console(request).auth.enabled
    return page(request, services, LoginScreen(next=safe_next(next), error=None, configured=configured))


@router.post("/login")
def login(request: Request, services: ServicesDep, visit: VisitDep, form: LoginFormDep) -> Response:
    console = get_console(request)
    csrf.check(visit.session, request, form)
    name = printable(form.get("username", "")).strip()[:128]
    next_url = safe_next(form.get("next"))
    address = request.client.host if request.client else "unknown"  # from X-Forwarded-For of a trusted proxy

    def refuse(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
        screen = LoginScreen(next=next_url, error=message, configured=console.auth.enabled)
        response = page(request, services, screen, status=status)
        response.headers.update(headers or {})
        return response

    # Counted (and committed) before the password is checked: concurrent guesses each see the others.
    with write_tx(services.engine) as conn:
        wait = console.throttle.attempt(conn, name=name, address=address, now=_now())
    if wait is not None:
        # Not audited: under a guessing attack that would write a row per request; the log has it.
        log.warning("console.login_throttled", user=name, address=address)
        return refuse(f"Too many failed attempts: try again in {wait} s.", 429, {"Retry-After": str(wait)})
    try:
        user = console.auth.check_password(name, form.get("password", "")[:1024])
    except Unavailable as exc:
        log.warning("console.login_busy", user=name, address=address)
        return refuse(exc.message, 503, {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})
    with write_tx(services.engine) as conn:
        now = _now()
        audit(
            conn,
            actor=_actor(user) if user else "console",
            action="console.login" if user else "console.login_failed",
            incident_id=None,
            detail={"user": name, "address": address},
            now=now,
        )
        if user is not None:
            console.throttle.succeeded(conn, name=name, address=address)
            visit.session, visit.user, visit.save = console.auth.login(conn, user=user, now=now), user, True
    if user is None:
        return refuse("Wrong user name or password.", 401)
    return RedirectResponse(next_url, status_code=303)


@router.post("/logout")
def logout(request: Request, services: ServicesDep, visit: VisitDep, form: FormDep) -> Response:
    csrf.check(visit.session, request, form)
    if visit.user is not None:
        with write_tx(services.engine) as conn:
            audit(conn, actor=_actor(visit.user), action="console.logout", incident_id=None, detail={}, now=_now())
            get_console(request).auth.logout(conn, session=visit.session)
    # A fresh anonymous session replaces the cookie: its CSRF token is dropped too.
    visit.session, visit.user, visit.save = Session.fresh(), None, True
    return RedirectResponse("/login", status_code=303)


# -- incidents ---------------------------------------------------------------------------------


@router.get("/")
def home(_user: ViewerDep) -> Response:
    return RedirectResponse("/incidents", status_code=303)


@router.get("/incidents")
def incidents_page(
    request: Request,
    services: ServicesDep,
    _user: ViewerDep,
    status: Annotated[list[IncidentStatus] | None, Query()] = None,
    severity: Annotated[str, Query(max_length=32)] = "",
    q: Annotated[str, Query(max_length=200)] = "",
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    filters = views.IncidentFilters(tuple(status or ()), severity.strip(), q.strip(), before)
    with services.engine.connect() as conn:
        incidents = views.list_incidents(conn=conn, filters=filters)
    return page(request, services, IncidentsScreen(page=incidents, filters=filters))


@router.get("/incidents/{incident_id}")
def incident_page(
    request: Request, services: ServicesDep, _user: ViewerDep, incident_id: IdPath, v: str | None = None
) -> Response:
    with services.engine.connect() as conn:
        version = views.incident_version(conn=conn, incident_id=incident_id)
        if v == version and is_htmx(request):
            return Response(status_code=204)  # unchanged: keep what the reader has open
        view = views.incident_view(conn=conn, incident_id=incident_id)
    return page(request, services, IncidentScreen(view=view, version=version, durations=tuple(silences.DURATIONS)))


@router.post("/incidents/{incident_id}/acknowledge")
def acknowledge(
    request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, incident_id: IdPath
) -> Response:
    with write_tx(services.engine) as conn:
        incident_service.acknowledge(conn=conn, incident_id=incident_id, actor=_actor(user), now=_now())
    return done(request, f"Incident #{incident_id} acknowledged.", form, f"/incidents/{incident_id}")


@router.post("/incidents/{incident_id}/resolve")
def resolve(request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, incident_id: IdPath) -> Response:
    reason = form.get("reason", "")[:2000]
    with write_tx(services.engine) as conn:
        incident_service.resolve(conn=conn, incident_id=incident_id, actor=_actor(user), now=_now(), reason=reason)
    return done(request, f"Incident #{incident_id} resolved.", form, f"/incidents/{incident_id}")


@router.post("/incidents/{incident_id}/notes")
def add_note(
    request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, incident_id: IdPath
) -> Response:
    with write_tx(services.engine) as conn:
        incident_service.add_note(
            conn=conn, incident_id=incident_id, actor=_actor(user), text=form.get("text", ""), now=_now()
        )
    return done(request, "Note added.", form, f"/incidents/{incident_id}")


@router.post("/incidents/{incident_id}/silence")
def silence(request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, incident_id: IdPath) -> Response:
    silence_id = silences.silence_incident(
        engine=services.engine,
        alertmanager_url=services.settings.alertmanager_url,
        incident_id=incident_id,
        duration=form.get("duration", ""),
        comment=form.get("comment", ""),
        actor=_actor(user),
        now=_now(),
    )
    return done(request, f"Silenced in Alertmanager ({silence_id}).", form, f"/incidents/{incident_id}")


# -- executions --------------------------------------------------------------------------------


@router.get("/approvals")
def approvals_page(request: Request, services: ServicesDep, _user: ViewerDep) -> Response:
    with services.engine.connect() as conn:
        waiting = views.approvals(conn=conn)
    return page(request, services, ApprovalsScreen(waiting=waiting))


_DECISIONS = {"reject": executions.reject, "cancel": executions.cancel}  # approving is a flow: it wakes the workers
_DONE = {"approve": "approved", "reject": "rejected", "cancel": "cancelled"}


@router.post("/executions/{execution_id}/{decision}")
def decide(
    request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, execution_id: IdPath, decision: str
) -> Response:
    if decision not in _DONE:
        raise InvalidInput(f"unknown decision {decision!r}: approve, reject or cancel")
    reason = form.get("reason", "")[:2000]
    if decision == "approve":
        flows.approve_execution(
            engine=services.engine,
            execution_id=execution_id,
            actor=_actor(user),
            reason=reason,
            now=_now(),
            wake=services.wake_workers,
        )
    else:
        with write_tx(services.engine) as conn:
            _DECISIONS[decision](conn=conn, execution_id=execution_id, actor=_actor(user), reason=reason, now=_now())
    return done(request, f"Execution #{execution_id} {_DONE[decision]}.", form, "/approvals")


# -- rules, automation -------------------------------------------------------------------------


@router.get("/rules")
def rules_page(request: Request, services: ServicesDep, _user: ViewerDep) -> Response:
    holder = services.rules
    with services.engine.connect() as conn:
        view = views.rules_view(
            conn=conn,
            ruleset=holder.current,
            now=_now(),
            loaded_at=holder.loaded_at,
            errors=holder.last_error,
            directory=str(holder.directory),
        )
    return page(request, services, RulesScreen(view=view))


@router.post("/automation/{switch}")
def automation(request: Request, services: ServicesDep, user: AdminDep, form: FormDep, switch: str) -> Response:
    changes: dict[str, dict[str, bool]] = {
        "pause": {"paused": True},
        "resume": {"paused": False},
        "dry-run-on": {"dry_run": True},
        "dry-run-off": {"dry_run": False},
    }
    if switch not in changes:
        raise InvalidInput(f"unknown switch {switch!r}")
    with write_tx(services.engine) as conn:
        executions.set_automation(
            conn=conn, actor=_actor(user), now=_now(), reason=form.get("reason", "")[:2000], **changes[switch]
        )
    # The banner is on every page: reload rather than patch one block.
    return done(request, f"Automation: {switch.replace('-', ' ')}.", form, "/rules", reload=True)


# -- endpoints, breakers, dashboards -----------------------------------------------------------


@router.get("/endpoints")
def endpoints_page(request: Request, services: ServicesDep, _user: ViewerDep) -> Response:
    screen = EndpointsScreen(
        groups=services.failover.status(),
        events=services.failover.events(limit=20),
        breakers=services.breakers.snapshot(),
    )
    return page(request, services, screen)


@router.get("/dashboards")
def dashboards_page(request: Request, services: ServicesDep, _user: ViewerDep) -> Response:
    directory = grafana.shipped_dir(services.settings.rules_dir, "dashboards")
    found = grafana.load_dashboards(directory=directory)
    return page(request, services, DashboardsScreen(dashboards=found.dashboards, errors=found.errors))


# -- mounting ----------------------------------------------------------------------------------


class _SecuredStatic:
    """Static files with the same security headers as the pages (nosniff matters most for them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_STATIC_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """Mount the console (pages at /, assets at /static/console) on an app whose services are on app.state."""
    settings = app.state.services.settings
    app.state.console = Console(
        auth=Authenticator(settings, app.state.services.engine),
        throttle=LoginThrottle(settings.console_login_max_failures, settings.console_login_window_seconds),
        templates=Templates(),
        secure_cookies=(settings.public_url or "").lower().startswith("https://"),
        refresh_seconds=settings.console_refresh_seconds,
    )
    app.include_router(router)
    app.mount("/static/console", _SecuredStatic(StaticFiles(directory=WEB_DIR / "static")), name="console-static")
