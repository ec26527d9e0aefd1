"""Owns how the console answers over HTTP: who is visiting, the HTML frame of every answer, errors, cookies, headers.

Every route is a ConsoleRoute, which answers in HTML whatever happens (an error page, or a
flash message for htmx), adds the security headers and writes the session cookie. Pages
answer an htmx request with a named block of their own template. Actions answer htmx with a
flash message and an `cp-changed` event (the page's live blocks then fetch themselves), and a
plain form POST with a redirect, so everything works without JavaScript too. The routes
themselves are in routes.py.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.api.errors import status_for
from controlplane.config import ConsoleRole
from controlplane.db.engine import write_transaction
from controlplane.errors import DomainError, Forbidden
from controlplane.playbooks import guards
from controlplane.playbooks.guards import Automation
from controlplane.services import Services
from controlplane.web import csrf
from controlplane.web.auth import COOKIE, Authenticator, LoginThrottle, Session, User
from controlplane.web.rendering import WEB_DIR, Templates
from controlplane.web.screens import ErrorScreen, Flash, PageContext, Screen

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
    user = auth.proxy_user(request.headers) or auth.session_user(session, now=now_utc())
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


def now_utc() -> datetime:
    return datetime.now(UTC)


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


def mount(app: FastAPI, router: APIRouter) -> None:
    """Mount the console's `router` (pages at /) and its assets (at /static/console) on an app whose services
    are on app.state."""
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
