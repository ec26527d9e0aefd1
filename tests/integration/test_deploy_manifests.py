"""The deploy/ files hold together: Kubernetes manifests, Alertmanager, Prometheus and Grafana configuration.

There is no cluster here, so each manifest is read into the official `kubernetes` client's model of
its kind and written back out: a field the model does not know (a typo, a wrong level of nesting)
is dropped on the way and shows as a difference; a wrong type fails the model's validation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, V1Deployment

from controlplane.config import ENV_PREFIX, Settings, load_settings
from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
NAMESPACE = "controlplane"
WEBHOOK_PATH = "/api/v1/alerts/alertmanager"

MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}

# (API group, resource, verb) the k8s.* actions call in controlplane/integrations/kubernetes.py.
# Leader election keeps its lease in the database (controlplane/leader.py), so no Lease access.
# Exactly what controlplane/integrations/kubernetes.py calls: nothing more.
ROLE_GRANTS = {
    *(("apps", r, v) for r in ("deployments/scale", "statefulsets/scale") for v in ("get", "update")),
    *(("apps", r, v) for r in ("deployments", "statefulsets") for v in ("get", "patch")),
    *(("", "configmaps", v) for v in ("get", "patch")),
    *(("autoscaling", "horizontalpodautoscalers", v) for v in ("get", "patch")),
}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(kind: str) -> dict[str, Any]:
    [found] = [d for p in manifest_files() for d in documents(p) if d["kind"] == kind]
    return found


def differences(given: Any, back: Any, path: str = "") -> list[str]:
    """Where `back` (the model's re-serialization) differs from `given`: dropped keys are unknown fields."""
    if isinstance(given, dict) and isinstance(back, dict):
        found = [f"{path}.{k}: unknown field (dropped by the model)" for k in given.keys() - back.keys()]
        found += [f"{path}.{k}: not in the manifest" for k in back.keys() - given.keys()]
        for key in given.keys() & back.keys():
            found += differences(given[key], back[key], f"{path}.{key}")
        return found
    if isinstance(given, list) and isinstance(back, list) and len(given) == len(back):
        return [d for i, (g, b) in enumerate(zip(given, back, strict=True)) for d in differences(g, b, f"{path}[{i}]")]
    return [] if given == back and type(given) is type(back) else [f"{path}: {given!r} became {back!r}"]


def load_model(document: dict[str, Any]) -> Any:
    """The document as its kind's model; fails on an unknown kind, a wrong type or an unknown field."""
    model = MODELS.get((document.get("apiVersion"), document.get("kind")))
    assert model, f"no model for apiVersion {document.get('apiVersion')!r} kind {document.get('kind')!r}"
    client = ApiClient()
    # The private name is the one entry point older (swagger) and newer (pydantic) clients share.
    obj = client._ApiClient__deserialize(document, model)  # type: ignore[attr-defined]
    assert differences(document, client.sanitize_for_serialization(obj)) == []
    return obj


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_each_file_is_one_known_resource_with_no_unknown_fields(path: Path) -> None:
    [document] = documents(path)  # one resource per file, so a diff or a revert touches one object
    load_model(document)
    if document["kind"] == "Namespace":
        assert document["metadata"]["name"] == NAMESPACE
    else:
        assert document["metadata"]["namespace"] == NAMESPACE


def test_the_model_check_catches_a_misspelt_field() -> None:
    deployment = by_kind("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(AssertionError, match="readinesProbe: unknown field"):
        load_model(deployment)


def deployment() -> V1Deployment:
    obj: V1Deployment = load_model(by_kind("Deployment"))
    return obj


def test_deployment_runs_two_hardened_replicas_with_probes() -> None:
    spec = deployment().spec
    pod = spec.template.spec
    [container] = pod.containers
    assert spec.replicas == 2
    assert (container.image, container.command) == ("controlplane:0.1.0", ["controlplane", "serve"])
    port_names = {p.name for p in container.ports}
    for probe, path in ((container.liveness_probe, "/health"), (container.readiness_probe, "/ready")):
        assert probe.http_get.path == path
        assert probe.http_get.port in port_names
    assert container.startup_probe.http_get.path == "/health"
    for kind in ("requests", "limits"):
        assert set(getattr(container.resources, kind)) == {"cpu", "memory"}
    assert pod.security_context.run_as_non_root and container.security_context.run_as_non_root
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    # Longer than uvicorn's 10 s graceful shutdown in `controlplane serve`, or requests get cut.
    assert pod.termination_grace_period_seconds > 10
    assert pod.service_account_name == by_kind("ServiceAccount")["metadata"]["name"]


def test_deployment_settings_come_from_the_secret_and_mounts() -> None:
    pod = deployment().spec.template.spec
    [container] = pod.containers
    env = {e.name: e for e in container.env}
    assert env["CONTROLPLANE_LISTEN_HOST"].value == "0.0.0.0"
    assert env["CONTROLPLANE_ENVIRONMENT"].value == "production"
    database = env["CONTROLPLANE_DATABASE_URL"].value_from.secret_key_ref
    secret = by_kind("Secret")
    assert database.name == secret["metadata"]["name"] and database.key in secret["stringData"]

    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    volumes = {v.name: v for v in pod.volumes}
    token_file = Path(env["CONTROLPLANE_WEBHOOK_TOKEN_FILE"].value)
    token_volume = volumes[mounts[str(token_file.parent)]].secret
    assert token_volume.secret_name == secret["metadata"]["name"]
    assert [(i.key, i.path) for i in token_volume.items] == [("webhook-token", token_file.name)]
    assert "webhook-token" in secret["stringData"]

    rules_dir = Path(env["CONTROLPLANE_RULES_DIR"].value)
    assert rules_dir == Path("/etc/controlplane/rules")
    assert volumes[mounts[str(rules_dir)]].config_map.name == "controlplane-rules"
    # The monitoring API reads dashboards/ and alerting/ beside the rules directory.
    for sibling, configmap in (("dashboards", "controlplane-dashboards"), ("alerting", "controlplane-alerting")):
        assert volumes[mounts[str(rules_dir.parent / sibling)]].config_map.name == configmap
    # The root filesystem is read-only: anything that writes gets an emptyDir.
    assert volumes[mounts["/tmp"]].empty_dir is not None


def test_deployment_env_is_accepted_by_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CONTROLPLANE_ variable the Deployment sets is a real setting with a valid value."""
    [container] = deployment().spec.template.spec.containers
    token = tmp_path / "webhook-token"
    token.write_text("9f2c4e1ab7d3085c6e2f9a41d7b3c05e")
    from_cluster = {  # what the kubelet fills in from the Secret, the mounts and the pod
        "CONTROLPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/cp.db",
        "CONTROLPLANE_WEBHOOK_TOKEN_FILE": str(token),
        "CONTROLPLANE_ADMIN_TOKEN": "0d7e3a9c51f2b846e0c3d7a19f5b2e64",
        "CONTROLPLANE_READ_TOKEN": "5b1e8c3f07a2d94e6c1b0f8a3d5e7c29",
        "CONTROLPLANE_INSTANCE_ID": "controlplane-7d9f-abcde",
    }
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for var in container.env:
        if var.name.startswith(ENV_PREFIX):
            monkeypatch.setenv(var.name, from_cluster.get(var.name, var.value or ""))
    assert set(from_cluster) <= {v.name for v in container.env}
    settings = load_settings()
    assert (settings.environment, settings.listen_host, settings.listen_port) == ("production", "0.0.0.0", 8080)
    assert settings.webhook_token is not None and settings.kube_config == "in-cluster"


def test_secret_template_holds_only_placeholders_the_service_refuses(tmp_path: Path) -> None:
    secret = by_kind("Secret")
    assert "data" not in secret  # base64 would hide what is in it
    assert secret["stringData"] and all("changeme" in value for value in secret["stringData"].values())
    token = tmp_path / "webhook-token"
    token.write_text(secret["stringData"]["webhook-token"])
    with pytest.raises(ValueError, match="placeholder"):
        Settings(environment="production", database_url="sqlite://", webhook_token_file=token)
    # Kept out of the kustomization, so applying it never overwrites the real Secret.
    assert "secret.example.yaml" not in kustomization()["resources"]


def test_service_and_disruption_budget_select_the_pods() -> None:
    pod_labels = deployment().spec.template.metadata.labels
    service, budget = by_kind("Service"), by_kind("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [container] = deployment().spec.template.spec.containers
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in {p.name for p in container.ports}
    assert budget["spec"]["minAvailable"] == 1 < deployment().spec.replicas


def test_role_allows_exactly_what_the_actions_call() -> None:
    role = by_kind("Role")
    granted = [
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]
    assert len(granted) == len(set(granted))
    assert set(granted) == ROLE_GRANTS
    assert all(set(rule) == {"apiGroups", "resources", "verbs"} for rule in role["rules"])  # no resourceNames etc.
    binding = by_kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = by_kind("ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}]


# -- kustomization ---------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def generated(name: str) -> list[str]:
    [generator] = [g for g in kustomization()["configMapGenerator"] if g["name"] == name]
    return list(generator.get("files") or [])


def test_kustomization_lists_every_manifest_and_every_shipped_file() -> None:
    assert kustomization()["namespace"] == NAMESPACE
    assert sorted(kustomization()["resources"]) == sorted(
        p.name for p in manifest_files() if p.name != "secret.example.yaml"
    )
    shipped = {
        "controlplane-rules": sorted((REPO / "rules").glob("*.yaml")),
        "controlplane-dashboards": sorted((REPO / "dashboards").glob("*.json")),
        "controlplane-alerting": sorted((REPO / "alerting").glob("*.y*ml")),
    }
    for name, files in shipped.items():
        # A file missing here would be in the repository but never deployed.
        assert sorted((K8S / f).resolve() for f in generated(name)) == files, name
    mounted = {v.config_map.name for v in deployment().spec.template.spec.volumes if v.config_map}
    assert mounted == set(shipped)


def test_kustomize_builds_objects_the_models_accept() -> None:
    kubectl = require_binary("kubectl")
    built = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    for document in objects:
        load_model(document)
    configmaps = {d["metadata"]["name"]: d for d in objects if d["kind"] == "ConfigMap"}
    [rules] = [cm for name, cm in configmaps.items() if name.startswith("controlplane-rules-")]
    assert rules["data"] == {p.name: p.read_text() for p in sorted((REPO / "rules").glob("*.yaml"))}
    for name, configmap in configmaps.items():
        # `kubectl apply` copies the object into an annotation limited to 256 KiB.
        assert sum(len(v.encode()) for v in configmap["data"].values()) < 256 * 1024, name
    [built_deployment] = [d for d in objects if d["kind"] == "Deployment"]
    volumes = built_deployment["spec"]["template"]["spec"]["volumes"]
    # The Deployment names the content-hashed ConfigMaps, so a rule change rolls the pods.
    assert {v["configMap"]["name"] for v in volumes if "configMap" in v} == set(configmaps)


# -- Alertmanager, Prometheus, Grafana -----------------------------------------------------------------


def service_url() -> str:
    service = by_kind("Service")
    [port] = service["spec"]["ports"]
    return f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port['port']}"


def test_alertmanager_sends_to_the_webhook_with_its_token() -> None:
    path = DEPLOY / "alertmanager" / "alertmanager.yml"
    config = yaml.safe_load(path.read_text())
    assert config["route"]["receiver"] == "controlplane"
    assert config["route"]["group_by"] == ["alertname", "namespace"]
    # Where each alert goes, the people and the heartbeat included: tests/integration/test_watcher.py.
    [receiver] = [r for r in config["receivers"] if r["name"] == "controlplane"]
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"] == service_url() + WEBHOOK_PATH
    assert webhook["send_resolved"] is True
    assert webhook["http_config"]["authorization"]["credentials_file"].startswith("/")
    checked = subprocess.run(
        [require_binary("amtool"), "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_scrapes_the_control_plane_and_langgraph_pods(tmp_path: Path) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"controlplane", "langgraph", "alertmanager"}
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    service = by_kind("Service")
    keep = jobs["controlplane"]["relabel_configs"][0]
    [port] = service["spec"]["ports"]
    assert keep["action"] == "keep"
    assert re.fullmatch(keep["regex"], f"{service['metadata']['name']};{port['name']}")
    assert jobs["controlplane"]["kubernetes_sd_configs"] == [
        {"role": "endpoints", "namespaces": {"names": [NAMESPACE]}}
    ]
    assert jobs["langgraph"]["kubernetes_sd_configs"] == [{"role": "pod"}]
    # The pod's prometheus.io/port annotation replaces the discovered port (Prometheus anchors regexes).
    address = next(r for r in jobs["langgraph"]["relabel_configs"] if r.get("target_label") == "__address__")
    assert re.sub(address["regex"], address["replacement"].replace("$", "\\"), "10.0.0.5:8000;8001") == "10.0.0.5:8001"

    # Debian's Prometheus is built without Kubernetes service discovery, so its promtool rejects
    # kubernetes_sd_configs; check everything else with static targets in their place.
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None):
            job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    checkable = tmp_path / "prometheus.yml"
    checkable.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [require_binary("promtool"), "check", "config", str(checkable)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisions_the_datasource_the_dashboards_pick() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert (datasource["type"], datasource["isDefault"]) == ("prometheus", True)
    assert datasource["url"] == "http://prometheus.monitoring.svc:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "controlplane.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    # File provisioning does not resolve ${DS_...} inputs: the shipped dashboards must pick their
    # datasource through a `datasource` variable over Prometheus datasources instead.
    for path in sorted((REPO / "dashboards").glob("*.json")):
        text = path.read_text()
        assert "${DS_" not in text, path.name
        variables = json.loads(text).get("templating", {}).get("list", [])
        assert any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables), path.name
