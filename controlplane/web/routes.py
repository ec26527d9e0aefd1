"""Owns the console's pages and actions: each route parses the request, calls one domain function or flow, renders.

How a route answers (its screen, a flash or a redirect, errors, the cookie) is web/console.py's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response

from controlplane import flows, grafana, runbooks
from controlplane.api.deps import MAX_ID, IdPath, ServicesDep
from controlplane.errors import InvalidInput, Unavailable
from controlplane.incidents import service as incident_service
from controlplane.incidents.schemas import IncidentStatus
from controlplane.playbooks import approval_plans, quarantine
from controlplane.playbooks import service as executions
from controlplane.silences import service as silences
from controlplane.text import printable
from controlplane.web import approvals_view, csrf, rules_view, views
from controlplane.web.auth import BUSY_RETRY_AFTER_SECONDS, Session
from controlplane.web.console import (
    AdminDep,
    ConsoleRoute,
    FormDep,
    LoginFormDep,
    OperatorDep,
    ViewerDep,
    VisitDep,
    done,
    get_console,
    is_htmx,
    mount,
    now_utc,
    page,
    safe_next,
    write_tx,
)
from controlplane.web.login import log_in, log_out
from controlplane.web.screens import (
    ApprovalsScreen,
    DashboardsScreen,
    EndpointsScreen,
    IncidentScreen,
    IncidentsScreen,
    LoginScreen,
    RulesScreen,
    RunbookScreen,
    RunbooksScreen,
)

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
    next_url = safe_next(form.get("next"))

    def refuse(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
        screen = LoginScreen(next=next_url, error=message, configured=console.auth.enabled)
        response = page(request, services, screen, status=status)
        response.headers.update(headers or {})
        return response

    try:
        outcome = log_in(
            engine=services.engine,
            auth=console.auth,
            throttle=console.throttle,
            name=printable(form.get("username", "")).strip()[:128],
            password=form.get("password", "")[:1024],
            address=request.client.host if request.client else "unknown",  # from X-Forwarded-For of a trusted proxy
            clock=now_utc,
        )
    except Unavailable as exc:
        return refuse(exc.message, 503, {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})
    if (wait := outcome.retry_after) is not None:
        return refuse(f"Too many failed attempts: try again in {wait} s.", 429, {"Retry-After": str(wait)})
    if outcome.user is None or outcome.session is None:
        return refuse("Wrong user name or password.", 401)
    visit.session, visit.user, visit.save = outcome.session, outcome.user, True
    return RedirectResponse(next_url, status_code=303)


@router.post("/logout")
def logout(request: Request, services: ServicesDep, visit: VisitDep, form: FormDep) -> Response:
    csrf.check(visit.session, request, form)
    if visit.user is not None:
        log_out(
            engine=services.engine,
            auth=get_console(request).auth,
            user=visit.user,
            session=visit.session,
            now=now_utc(),
        )
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
    automation: Annotated[Literal["failed"] | None, Query()] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    filters = views.IncidentFilters(
        tuple(status or ()), severity.strip(), q.strip(), automation_failed=automation == "failed", before=before
    )
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
        view = views.incident_view(conn=conn, incident_id=incident_id, registry=services.registry)
    return page(request, services, IncidentScreen(view=view, version=version, durations=tuple(silences.DURATIONS)))


@router.post("/incidents/{incident_id}/acknowledge")
def acknowledge(
    request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, incident_id: IdPath
) -> Response:
    with write_tx(services.engine) as conn:
        incident_service.acknowledge(conn=conn, incident_id=incident_id, actor=user.actor, now=now_utc())
    return done(request, f"Incident #{incident_id} acknowledged.", form, f"/incidents/{incident_id}")


@router.post("/incidents/{incident_id}/resolve")
def resolve(request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, incident_id: IdPath) -> Response:
    flows.resolve_incident(
        engine=services.engine,
        incident_id=incident_id,
        actor=user.actor,
        reason=form.get("reason", "")[:2000],
        now=now_utc(),
        expire_silences=services.silence_expiry.submit,
    )
    return done(request, f"Incident #{incident_id} resolved.", form, f"/incidents/{incident_id}")


@router.post("/incidents/{incident_id}/notes")
def add_note(
    request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, incident_id: IdPath
) -> Response:
    with write_tx(services.engine) as conn:
        incident_service.add_note(
            conn=conn, incident_id=incident_id, actor=user.actor, text=form.get("text", ""), now=now_utc()
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
        actor=user.actor,
        now=now_utc(),
    )
    return done(request, f"Silenced in Alertmanager ({silence_id}).", form, f"/incidents/{incident_id}")


# -- executions --------------------------------------------------------------------------------


@router.get("/approvals")
def approvals_page(request: Request, services: ServicesDep, _user: ViewerDep) -> Response:
    with services.engine.connect() as conn:
        waiting = approvals_view.approvals(conn=conn, ruleset=services.rules.current)
    waiting = approvals_view.with_plans(
        waiting,
        engine=services.engine,
        registry=services.registry,
        contexts=services.contexts,
        recent=services.recent_plans,
    )
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
        if form.get("plan_digest"):  # approve the change the card showed, not whatever it has become
            approval_plans.check_unchanged(
                services.engine,
                execution_id=execution_id,
                seen=form["plan_digest"][:64],
                registry=services.registry,
                contexts=services.contexts,
                recent=services.recent_plans,
            )
        run = flows.approve_execution(
            engine=services.engine,
            execution_id=execution_id,
            actor=user.actor,
            reason=reason,
            now=now_utc(),
            wake=services.wake_workers,
        )
        if run.status == "awaiting_approval":  # counted, but it needs another person: do not say "approved"
            counted = f"Your approval of execution #{execution_id} is counted: {run.approval_progress}."
            return done(request, counted, form, "/approvals")
    else:
        with write_tx(services.engine) as conn:
            _DECISIONS[decision](conn=conn, execution_id=execution_id, actor=user.actor, reason=reason, now=now_utc())
    return done(request, f"Execution #{execution_id} {_DONE[decision]}.", form, "/approvals")


@router.post("/quarantines/{quarantine_id}/lift")
def lift_quarantine(
    request: Request, services: ServicesDep, user: OperatorDep, form: FormDep, quarantine_id: IdPath
) -> Response:
    with write_tx(services.engine) as conn:
        held = quarantine.lift(
            conn, quarantine_id, actor=user.actor, reason=form.get("reason", "")[:2000], now=now_utc()
        )
    return done(request, f"Quarantine of rule {held['rule_name']} lifted: it may run again.", form, "/rules")


# -- rules, automation -------------------------------------------------------------------------


@router.get("/rules")
def rules_page(request: Request, services: ServicesDep, _user: ViewerDep) -> Response:
    holder = services.rules
    with services.engine.connect() as conn:
        view = rules_view.rules_view(
            conn=conn,
            ruleset=holder.current,
            now=now_utc(),
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
            conn=conn, actor=user.actor, now=now_utc(), reason=form.get("reason", "")[:2000], **changes[switch]
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
        heartbeats=services.heartbeats.registrations(),
    )
    return page(request, services, screen)


@router.get("/dashboards")
def dashboards_page(request: Request, services: ServicesDep, _user: ViewerDep) -> Response:
    directory = grafana.shipped_dir(services.settings.rules_dir, "dashboards")
    found = grafana.load_dashboards(directory=directory)
    return page(request, services, DashboardsScreen(dashboards=found.dashboards, errors=found.errors))


# -- runbooks ----------------------------------------------------------------------------------
# Open without login, like /docs: an on-call engineer follows them from Slack or PagerDuty, maybe on a
# phone without a console session, and they hold procedures, not incident data or secrets.


@router.get("/runbooks")
def runbooks_page(request: Request, services: ServicesDep, _visit: VisitDep) -> Response:
    found, errors = runbooks.load_all(grafana.shipped_dir(services.settings.rules_dir, "alerting"))
    return page(request, services, RunbooksScreen(runbooks=found, errors=errors))


@router.get("/runbooks/{name}")
def runbook_page(request: Request, services: ServicesDep, _visit: VisitDep, name: str) -> Response:
    directory = grafana.shipped_dir(services.settings.rules_dir, "alerting")
    return page(request, services, RunbookScreen(runbook=runbooks.load(directory, name)))


def install(app: FastAPI) -> None:
    """Mount the console (pages at /, assets at /static/console) on an app whose services are on app.state."""
    mount(app, router)
