"""Monitoring files for the tools around the control plane: Grafana dashboards and Prometheus alerting rules.

Both are read from disk on each request (a few small files), so a ConfigMap update shows
without a restart. Directories: `dashboards/` and `alerting/` beside CONTROLPLANE_RULES_DIR
(in Kubernetes /etc/controlplane/dashboards and /etc/controlplane/alerting), else the
package's defaults (controlplane/defaults); missing directories serve nothing rather than fail.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import APIRouter, Response
from pydantic import BaseModel

from controlplane import grafana
from controlplane.api.deps import ReaderDep, ServicesDep
from controlplane.api.errors import error_responses
from controlplane.errors import NotFound

ALERTING_RULES_FILE = "controlplane.rules.yaml"


def attachment(filename: str) -> dict[str, str]:
    """Content-Disposition saving the body under `filename` (a browser's download, `curl -OJ`).

    File names come from a directory listing and may hold anything but `/`: the quoted name keeps only
    characters safe in a header, and RFC 6266's `filename*` carries the real one when they differ.
    """
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    value = f'attachment; filename="{plain}"'
    if plain != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return {"Content-Disposition": value}


_SAVE_AS = {"description": "`attachment` with the file name to save it under", "schema": {"type": "string"}}

router = APIRouter(prefix="/api/v1", tags=["monitoring"], responses=error_responses(401), dependencies=[ReaderDep])


class DashboardSummary(BaseModel):
    uid: str
    title: str
    file: str
    tags: list[str]


@router.get("/dashboards", summary="Grafana dashboards shipped with the control plane")
def list_dashboards(services: ServicesDep) -> list[DashboardSummary]:
    """Dashboards from `dashboards/*.json` beside the rules directory (else the package's default `dashboards/`).

    A file that is not a dashboard (bad JSON, no uid or title, a uid used twice) is left out
    and logged; `controlplane check` names it.
    """
    directory = grafana.shipped_dir(services.settings.rules_dir, "dashboards")
    found = grafana.load_dashboards(directory=directory)
    return [DashboardSummary(uid=d.uid, title=d.title, file=d.file, tags=list(d.tags)) for d in found.dashboards]


@router.get(
    "/dashboards/{uid}",
    summary="One dashboard's JSON, as stored: import it in Grafana, or let `controlplane provision grafana` push it",
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "headers": {"Content-Disposition": _SAVE_AS}},
        404: {"description": "no dashboard with this uid"},
    },
)
def get_dashboard(services: ServicesDep, uid: str) -> Response:
    """The file's bytes unchanged (same directory as the list). It picks its datasource through the
    `${datasource}` variable, which Grafana resolves on import and under file provisioning alike."""
    directory = grafana.shipped_dir(services.settings.rules_dir, "dashboards")
    dashboard = grafana.load_dashboards(directory=directory).by_uid(uid)
    if dashboard is None:
        raise NotFound(f"no dashboard with uid {uid!r}")
    return Response(dashboard.source, media_type="application/json", headers=attachment(dashboard.file))


@router.get(
    "/alerting/rules",
    summary="The Prometheus alerting rules, all groups in one rule file",
    response_class=Response,
    responses={200: {"content": {"application/yaml": {}}, "headers": {"Content-Disposition": _SAVE_AS}}},
)
def alerting_rules(services: ServicesDep) -> Response:
    """`alerting/*.yaml` beside the rules directory (else the package's default `alerting/`) merged into one
    document for Prometheus' `rule_files` (promtool test files skipped), with CONTROLPLANE_PUBLIC_URL in
    place of `${CONTROLPLANE_PUBLIC_URL}` in the runbook links (kept, and said so in a comment, without one).
    A file that cannot be merged answers 500 naming it: serving a partial rule set would silently drop alerts."""
    directory = grafana.shipped_dir(services.settings.rules_dir, "alerting")
    return Response(
        grafana.merged_alerting_rules(directory=directory, public_url=services.settings.public_url),
        media_type="application/yaml",
        headers=attachment(ALERTING_RULES_FILE),
    )
