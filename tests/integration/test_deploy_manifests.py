"""The deploy/ files hold together: Kubernetes manifests, Alertmanager, Prometheus and Grafana configuration.

There is no cluster here, so each overlay is built with `kubectl kustomize` and every object is read
into the official `kubernetes` client's model of its kind and written back out: a field the model
does not know (a typo, a wrong level of nesting) is dropped on the way and shows as a difference; a
wrong type fails the model's validation. Then each property an SRE relies on is checked on the built
objects, the environment a pod would get is loaded into the production settings, and checkov scans
the built manifests.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes.client import ApiClient, V1Container, V1Deployment, V1PodSpec

from controlplane import __version__
from controlplane.cli import main
from controlplane.config import ENV_PREFIX, SettingsError, load_settings
from controlplane.prometheus_operator import prometheus_rule
from tests.conftest import require, require_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
OVERLAYS = ("single", "ha")
OPERATOR = K8S / "components" / "prometheus-operator"
SECRET_TEMPLATE = K8S / "secret.example.yaml"
NAMESPACE = "controlplane"
WEBHOOK_PATH = "/api/v1/alerts/alertmanager"


def shipped(name: str) -> Path:
    """The directory of the files the manifests ship (`rules`, `alerting`, `dashboards`): tests look only here."""
    return REPO / "controlplane" / "defaults" / name


MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
# prometheus-operator's kinds have no model in the client: test_prometheus_operator_component checks them.
OPERATOR_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

# (API group, resource, verb) the k8s.* actions call in controlplane/integrations/kubernetes.py.
# Leader election keeps its lease in the database (controlplane/leader.py), so no Lease access.
# Exactly what controlplane/integrations/kubernetes.py calls: nothing more.
ROLE_GRANTS = {
    *(("apps", r, v) for r in ("deployments/scale", "statefulsets/scale") for v in ("get", "update")),
    *(("apps", r, v) for r in ("deployments", "statefulsets") for v in ("get", "patch")),
    *(("", "configmaps", v) for v in ("get", "patch")),
    *(("autoscaling", "horizontalpodautoscalers", v) for v in ("get", "patch")),
}


def kind_of(document: dict[str, Any]) -> tuple[str, str]:
    return document.get("apiVersion", ""), document.get("kind", "")


def manifest_files() -> list[Path]:
    """Every file holding whole objects (not kustomizations, not patches)."""
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and not p.name.endswith("-patch.yaml") and p.parent != OPERATOR
    )


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
    model = MODELS.get(kind_of(document))
    assert model, f"no model for apiVersion {document.get('apiVersion')!r} kind {document.get('kind')!r}"
    client = ApiClient()
    # The private name is the one entry point older (swagger) and newer (pydantic) clients share.
    obj = client._ApiClient__deserialize(document, model)  # type: ignore[attr-defined]
    assert differences(document, client.sanitize_for_serialization(obj)) == []
    return obj


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
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


# -- the built overlays ------------------------------------------------------------------------------


def build(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of `directory`, as the deploy README tells users to run it."""
    # The shipped files live outside deploy/kubernetes; `apply -k` cannot read them, so users pipe this.
    built = subprocess.run(
        [require_binary("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    # Debian's kubectl 1.20 builds with kustomize v2, which cannot read files outside the directory.
    require("unknown flag: --load-restrictor" not in built.stderr, "kubectl is older than 1.21 (no --load-restrictor)")
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


@cache
def _rendered(overlay: str) -> list[dict[str, Any]]:
    return build(K8S / "overlays" / overlay)


def rendered(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(_rendered(overlay))  # built once per session; a test may change its copy


def rendered_with_operator(overlay: str, scratch: Path) -> list[dict[str, Any]]:
    """The overlay plus the prometheus-operator component, as a user's own overlay would combine them."""
    (scratch / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                # kustomize refuses absolute paths here.
                "resources": [os.path.relpath(K8S / "overlays" / overlay, scratch)],
                "components": [os.path.relpath(OPERATOR, scratch)],
            }
        )
    )
    return build(scratch)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def deployment_of(overlay: str) -> V1Deployment:
    obj: V1Deployment = load_model(one(rendered(overlay), "Deployment"))
    return obj


def pod_of(overlay: str) -> tuple[V1PodSpec, V1Container]:
    pod = deployment_of(overlay).spec.template.spec
    [container] = pod.containers
    return pod, container


def env_of(overlay: str) -> dict[str, Any]:
    return {e.name: e for e in pod_of(overlay)[1].env}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_builds_objects_the_models_accept(overlay: str) -> None:
    objects = rendered(overlay)
    for document in objects:
        load_model(document)
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, document["metadata"]["name"]
    kinds = sorted(o["kind"] for o in objects)
    database = {"single": ["PersistentVolumeClaim"], "ha": ["NetworkPolicy", "PodDisruptionBudget"]}[overlay]
    assert kinds == sorted(
        ["ConfigMap"] * 3
        + ["Deployment", "Namespace", "NetworkPolicy", "Role", "RoleBinding", "Service", "ServiceAccount"]
        + database
    )

    configmaps = {d["metadata"]["name"]: d for d in objects if d["kind"] == "ConfigMap"}
    for name, configmap in configmaps.items():
        # `kubectl apply` copies the object into an annotation limited to 256 KiB.
        assert sum(len(v.encode()) for v in configmap["data"].values()) < 256 * 1024, name
    [rules] = [cm for name, cm in configmaps.items() if name.startswith("controlplane-rules-")]
    assert rules["data"] == {p.name: p.read_text() for p in sorted(shipped("rules").glob("*.yaml"))}
    # The Deployment names the content-hashed ConfigMaps, so a rule change rolls the pods.
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {v["configMap"]["name"] for v in volumes if "configMap" in v} == set(configmaps)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_the_release_image_hardened_with_probes_and_resources(overlay: str) -> None:
    deployment = deployment_of(overlay)
    pod, container = pod_of(overlay)
    assert container.image == f"controlplane:{__version__}"
    assert deployment.metadata.labels["app.kubernetes.io/version"] == __version__
    assert container.command == ["controlplane", "serve"]

    for context in (pod.security_context, container.security_context):
        assert context.run_as_non_root is True and context.run_as_user == 10001  # the image's user
        assert context.seccomp_profile.type == "RuntimeDefault"
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert not container.security_context.capabilities.add
    assert not container.security_context.privileged
    # The root filesystem is read-only: the only writable paths are an emptyDir /tmp and the database volume.
    mounts = {m.mount_path: m for m in container.volume_mounts}
    volumes = {v.name: v for v in pod.volumes}
    writable = {path for path, m in mounts.items() if not m.read_only}
    assert volumes[mounts["/tmp"].name].empty_dir.size_limit
    assert writable == ({"/tmp", "/var/lib/controlplane"} if overlay == "single" else {"/tmp"})

    ports = {p.name: p.container_port for p in container.ports}
    assert ports == {"http": 8080}
    for probe, path in (
        (container.startup_probe, "/health"),
        (container.liveness_probe, "/health"),
        (container.readiness_probe, "/ready"),
    ):
        assert (probe.http_get.path, probe.http_get.port) == (path, "http")
    # A slow first migration gets two minutes before liveness may restart the pod.
    assert container.startup_probe.period_seconds * container.startup_probe.failure_threshold >= 120
    requests, limits = container.resources.requests, container.resources.limits
    assert set(requests) == set(limits) == {"cpu", "memory"}
    assert limits["memory"] == "512Mi"  # a 10,000-alert storm peaks under 250 MB RSS
    # Longer than uvicorn's 10 s graceful shutdown in `controlplane serve`, or requests get cut.
    assert pod.termination_grace_period_seconds > 10
    assert pod.service_account_name == by_kind("ServiceAccount")["metadata"]["name"]


def test_single_runs_one_replica_on_sqlite_on_a_persistent_volume() -> None:
    objects = rendered("single")
    spec = deployment_of("single").spec
    pod, container = pod_of("single")
    # Two pods on one SQLite file on a ReadWriteOnce volume cannot both run: one, stopped before the next.
    assert spec.replicas == 1
    assert spec.strategy.type == "Recreate" and spec.strategy.rolling_update is None
    assert not of_kind(objects, "PodDisruptionBudget")  # it would block every node drain

    url = env_of("single")["CONTROLPLANE_DATABASE_URL"].value
    assert url.startswith("sqlite:////")
    database = Path(url.removeprefix("sqlite:///"))
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    claim = {v.name: v for v in pod.volumes}[mounts[str(database.parent)]].persistent_volume_claim
    pvc = one(objects, "PersistentVolumeClaim")
    assert claim.claim_name == pvc["metadata"]["name"] and not claim.read_only
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_ha_runs_replicas_on_postgresql_with_a_budget_and_anti_affinity() -> None:
    objects = rendered("ha")
    deployment = deployment_of("ha")
    spec = deployment.spec
    pod_labels = spec.template.metadata.labels
    assert spec.replicas >= 2
    assert spec.strategy.type == "RollingUpdate"
    assert spec.strategy.rolling_update.max_unavailable == 0  # never fewer replicas than asked for
    assert not of_kind(objects, "PersistentVolumeClaim")

    database = env_of("ha")["CONTROLPLANE_DATABASE_URL"].value_from.secret_key_ref
    assert (database.name, database.key, database.optional) == ("controlplane", "database-url", None)
    template = yaml.safe_load(SECRET_TEMPLATE.read_text())["stringData"]
    assert template[database.key].startswith("postgresql://")

    budget = one(objects, "PodDisruptionBudget")
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    assert budget["spec"]["minAvailable"] == 1 < spec.replicas

    # Preferred, so a cluster with fewer nodes than replicas still runs them all.
    anti = spec.template.spec.affinity.pod_anti_affinity
    assert anti.required_during_scheduling_ignored_during_execution is None
    [term] = anti.preferred_during_scheduling_ignored_during_execution
    assert term.pod_affinity_term.topology_key == "kubernetes.io/hostname"
    assert selects(term.pod_affinity_term.label_selector.match_labels, pod_labels)


def allows(policies: list[dict[str, Any]], port: int, protocol: str = "TCP", namespace: str | None = None) -> bool:
    """Whether some egress rule lets the pods reach `port` in `namespace` (None: in any namespace a rule allows)."""
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            if not any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule.get("ports", [])):
                continue
            peers = rule.get("to")
            if not peers:  # no `to`: anywhere
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    continue
                if "namespaceSelector" not in peer:  # pods of the policy's own namespace
                    if namespace == NAMESPACE:
                        return True
                    continue
                chosen = peer["namespaceSelector"].get("matchLabels", {})
                if not chosen or chosen == {"kubernetes.io/metadata.name": namespace}:
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_only_the_http_port_and_lets_the_pods_reach_what_they_call(overlay: str) -> None:
    objects = rendered(overlay)
    pod_labels = deployment_of(overlay).spec.template.metadata.labels
    policies = of_kind(objects, "NetworkPolicy")
    assert policies and all(selects(p["spec"]["podSelector"]["matchLabels"], pod_labels) for p in policies)
    [ingress] = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]]
    assert all("Egress" in p["spec"]["policyTypes"] for p in policies)
    [rule] = ingress["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]  # a rule without ports would admit every port
    assert rule["ports"][0]["port"] == pod_of(overlay)[1].ports[0].container_port

    env = env_of(overlay)
    assert allows(policies, 53, "UDP", "kube-system") and allows(policies, 53, "TCP", "kube-system")
    for setting in ("CONTROLPLANE_PROMETHEUS_URL", "CONTROLPLANE_ALERTMANAGER_URL"):
        url = urlsplit(env[setting].value)  # http://<service>.<namespace>.svc:<port>
        assert allows(policies, url.port or 80, namespace=url.hostname.split(".")[1]), setting
    assert allows(policies, 443) and allows(policies, 6443)  # the Kubernetes API, Slack, PagerDuty
    for path in shipped("rules").glob("*.yaml"):
        for target in yaml.safe_load(path.read_text()).get("targets", []):
            if target["kind"] == "http":
                assert allows(policies, urlsplit(target["url"]).port or 80), target["name"]
    template = yaml.safe_load(SECRET_TEMPLATE.read_text())["stringData"]
    assert allows(policies, urlsplit(template["database-url"]).port) is (overlay == "ha")


# -- the Secret, as the kubelet hands it to a pod -----------------------------------------------------------


@cache
def console_users_file() -> str:
    from controlplane.web.auth import hash_password

    return yaml.safe_dump({"users": [{"name": "alice", "role": "admin", "password_hash": hash_password("h0rse!")}]})


def cluster_secret() -> dict[str, str]:
    """What an SRE puts in the Secret, following secret.example.yaml's commands."""
    return {
        "database-url": "postgresql://controlplane:4f1d9c2e7b@postgresql.databases.svc:5432/controlplane",
        "webhook-token": "9f2c4e1ab7d3085c6e2f9a41d7b3c05e",
        "session-secret": "c3b7e91f04d2a86e5f1c0b9d7a3e2f48",
        "console-users": console_users_file(),
        "admin-token": "0d7e3a9c51f2b846e0c3d7a19f5b2e64",
        "read-token": "5b1e8c3f07a2d94e6c1b0f8a3d5e7c29",
        "heartbeat-token": "9d2f4a6c8e0b1d3f5a7c9e1b3d5f7a90",
    }


def secret_keys(overlay: str) -> tuple[set[str], set[str]]:
    """The Secret keys a pod of `overlay` needs, and those it takes when present."""
    pod, container = pod_of(overlay)
    required = {i.key for v in pod.volumes if v.secret and not v.secret.optional for i in v.secret.items}
    optional = set()
    for var in container.env:
        ref = var.value_from.secret_key_ref if var.value_from else None
        if ref is not None:
            assert ref.name == "controlplane"
            (optional if ref.optional else required).add(ref.key)
    return required, optional


def kubelet_env(overlay: str, secret: dict[str, str], root: Path) -> dict[str, str]:
    """The environment a pod of `overlay` gets from `secret`: its secret volumes written under `root`
    (and the variables naming files there pointed at them), secretKeyRefs resolved, the pod name filled in."""
    pod, container = pod_of(overlay)
    moved: dict[str, Path] = {}
    for mount in container.volume_mounts:
        volume = next(v for v in pod.volumes if v.name == mount.name)
        if volume.secret is None:
            continue
        moved[mount.mount_path] = root / mount.name
        for item in volume.secret.items:
            if item.key not in secret:
                raise LookupError(f"the pod does not start: the Secret has no key {item.key!r}")
            (root / mount.name).mkdir(parents=True, exist_ok=True)
            (root / mount.name / item.path).write_text(secret[item.key])
    env: dict[str, str] = {}
    for var in container.env:
        ref = var.value_from.secret_key_ref if var.value_from else None
        if ref is not None:
            if ref.key in secret:
                env[var.name] = secret[ref.key]
            elif not ref.optional:
                raise LookupError(f"the pod does not start: the Secret has no key {ref.key!r}")
        elif var.value_from is not None:
            env[var.name] = "controlplane-7d9f8c6b5-x2k4q"  # metadata.name
        else:
            value = var.value or ""
            for mount_path, local in moved.items():
                if value.startswith(mount_path + "/"):
                    value = str(local / value.removeprefix(mount_path + "/"))
            env[var.name] = value
    return env


def production_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_environment_is_accepted_by_the_production_settings(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CONTROLPLANE_ variable a pod gets is a real setting with a valid value, with console logins on."""
    env = kubelet_env(overlay, cluster_secret(), tmp_path)
    settings = production_settings(env, monkeypatch)
    assert (settings.environment, settings.listen_host, settings.listen_port) == ("production", "0.0.0.0", 8080)
    assert settings.is_sqlite is (overlay == "single")
    assert settings.webhook_token.get_secret_value() == cluster_secret()["webhook-token"]
    assert settings.session_secret.get_secret_value() == cluster_secret()["session-secret"]
    assert [(u.name, u.role) for u in settings.console_users] == [("alice", "admin")]
    assert settings.admin_token is not None and settings.read_token is not None
    assert settings.heartbeat_token is not None
    assert settings.kube_config == "in-cluster" and settings.instance_id.startswith("controlplane-")

    # The optional tokens may be left out of the Secret; the rest may not.
    required, optional = secret_keys(overlay)
    assert optional == {"admin-token", "read-token", "heartbeat-token"}
    assert required == {"webhook-token", "session-secret", "console-users"} | (
        {"database-url"} if overlay == "ha" else set()
    )
    lean = {k: v for k, v in cluster_secret().items() if k not in optional}
    settings = production_settings(kubelet_env(overlay, lean, tmp_path / "lean"), monkeypatch)
    assert settings.admin_token is None and settings.read_token is None and settings.heartbeat_token is None
    for key in required:
        with pytest.raises(LookupError, match=key):
            kubelet_env(overlay, {k: v for k, v in cluster_secret().items() if k != key}, tmp_path / key)


def test_ha_without_a_shared_session_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas on PostgreSQL each with a random session secret would log users out: the service refuses."""
    env = kubelet_env("ha", cluster_secret(), tmp_path)
    for name in ("CONTROLPLANE_SESSION_SECRET_FILE", "CONTROLPLANE_CONSOLE_USERS_FILE"):
        env.pop(name)
    with pytest.raises(SettingsError, match=r"session_secret .*required in production on PostgreSQL"):
        production_settings(env, monkeypatch)


def test_secret_template_holds_every_key_with_placeholders_the_service_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = documents(SECRET_TEMPLATE)[0]
    assert "data" not in secret  # base64 would hide what is in it
    template = secret["stringData"]
    assert set(template) == set().union(*(set().union(*secret_keys(o)) for o in OVERLAYS))
    assert all("changeme" in value for value in template.values())
    for key, placeholder in template.items():
        env = kubelet_env("ha", {**cluster_secret(), key: placeholder}, tmp_path / key)
        with pytest.raises(SettingsError):
            production_settings(env, monkeypatch)
    # Kept out of every kustomization, so applying one never overwrites the real Secret.
    for overlay in OVERLAYS:
        assert not of_kind(rendered(overlay), "Secret")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_selects_the_pods(overlay: str) -> None:
    service = one(rendered(overlay), "Service")
    deployment = deployment_of(overlay)
    assert selects(service["spec"]["selector"], deployment.spec.template.metadata.labels)
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in {p.name for p in deployment.spec.template.spec.containers[0].ports}


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


# -- kustomizations ---------------------------------------------------------------------------------


def kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


def test_base_generates_every_shipped_file_and_overlays_use_every_file() -> None:
    base = kustomization(BASE)
    assert base["namespace"] == NAMESPACE
    assert sorted(base["resources"]) == sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert base["images"] == [{"name": "controlplane", "newName": "controlplane", "newTag": __version__}]
    shipped_files = {
        "controlplane-rules": sorted(shipped("rules").glob("*.yaml")),
        "controlplane-dashboards": sorted(shipped("dashboards").glob("*.json")),
        "controlplane-alerting": sorted(shipped("alerting").glob("*.y*ml")),
    }
    for generator in base["configMapGenerator"]:
        # A file missing here would be in the repository but never deployed.
        assert sorted((BASE / f).resolve() for f in generator["files"]) == shipped_files[generator["name"]]
    assert {g["name"] for g in base["configMapGenerator"]} == set(shipped_files)
    for overlay in OVERLAYS:
        directory = K8S / "overlays" / overlay
        used = kustomization(directory)["resources"] + [p["path"] for p in kustomization(directory)["patches"]]
        assert used[0] == "../../base"
        assert sorted(used[1:]) == sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")


# -- prometheus-operator --------------------------------------------------------------------------------


def test_prometheus_rule_is_generated_from_the_alerting_rules() -> None:
    committed = OPERATOR / "prometheusrule.yaml"
    regenerate = f"controlplane render prometheusrule > {committed.relative_to(REPO)}"
    assert committed.read_text() == prometheus_rule(directory=shipped("alerting")), f"stale: run `{regenerate}`"


def test_render_prometheusrule_prints_it_and_refuses_a_directory_without_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "prometheusrule", "--dir", str(shipped("alerting"))]) == 0
    assert capsys.readouterr().out == (OPERATOR / "prometheusrule.yaml").read_text()
    # An empty PrometheusRule is almost always a wrong directory: exit 1, nothing on stdout.
    assert main(["render", "prometheusrule", "--dir", str(tmp_path)]) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and f"no alerting rule groups in {tmp_path}" in printed.err
    (tmp_path / "broken.yaml").write_text("groups: {")
    assert main(["render", "prometheusrule", "--dir", str(tmp_path)]) == 1
    assert "alerting/broken.yaml" in capsys.readouterr().err


def test_render_prometheusrule_puts_the_public_url_in_the_runbook_links(capsys: pytest.CaptureFixture[str]) -> None:
    # The committed file keeps the placeholder (any cluster's URL); a user's render opens from Alertmanager.
    assert main(["render", "prometheusrule", "--dir", str(shipped("alerting"))]) == 0
    kept = capsys.readouterr()
    assert "no --public-url, no CONTROLPLANE_PUBLIC_URL" in kept.err
    assert (
        main(["render", "prometheusrule", "--dir", str(shipped("alerting")), "--public-url", "https://cp.example/"])
        == 0
    )
    printed = capsys.readouterr()
    assert printed.err == ""
    rules = [r for g in yaml.safe_load(printed.out)["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert rules and all(
        r["annotations"]["runbook_url"] == f"https://cp.example/runbooks/RUNBOOKS.md#{r['alert'].lower()}"
        for r in rules
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_operator_component_scrapes_the_service_and_loads_the_rules(overlay: str, tmp_path: Path) -> None:
    objects = rendered_with_operator(overlay, tmp_path)
    assert {kind_of(o) for o in objects} - {kind_of(o) for o in rendered(overlay)} == OPERATOR_KINDS
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]  # no namespaceSelector: its own
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    [endpoint] = monitor["spec"]["endpoints"]
    assert set(endpoint) == {"port", "path", "interval"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert yaml.safe_load(prometheus_rule(directory=shipped("alerting"))) == one(objects, "PrometheusRule")

    # Prometheus itself accepts the rule groups the operator will hand it.
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": one(objects, "PrometheusRule")["spec"]["groups"]}))
    checked = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- checkov -------------------------------------------------------------------------------------------


def checkov_binary() -> str:
    """checkov from its own venv (`make test` makes .venv/checkov: its pins clash with the project's), else PATH."""
    own = Path(sys.prefix) / "checkov" / "bin" / "checkov"
    found = str(own) if own.exists() else shutil.which("checkov")
    require(found is not None, "checkov not found (`make test` installs it into .venv/checkov)")
    assert found is not None
    return found


def checkov(target: list[str], framework: str) -> dict[str, Any]:
    """checkov's JSON report; offline (--skip-download), so there are no severities: every failure counts."""
    scanned = subprocess.run(
        [checkov_binary(), *target, "--framework", framework, "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=tempfile.gettempdir(),
    )
    assert scanned.returncode in (0, 1), scanned.stderr[-2000:]
    report: dict[str, Any] = json.loads(scanned.stdout)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0  # it did scan something
    return report


def failures_and_skips(report: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    results = report["results"]
    failed = [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in results["failed_checks"]]
    skipped = {c["check_id"]: c["check_result"].get("suppress_comment", "") for c in results["skipped_checks"]}
    return failed, skipped


def test_checkov_fails_no_check_on_the_built_manifests(tmp_path: Path) -> None:
    """Every finding is fixed or skipped in the manifest with its reason (checkov.io/skipN: ID=reason)."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for overlay in OVERLAYS:
        scratch = tmp_path / overlay
        scratch.mkdir()
        objects = rendered_with_operator(overlay, scratch)
        (manifests / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    failed, skipped = failures_and_skips(checkov(["--directory", str(manifests)], "kubernetes"))
    assert failed == []
    for check, reason in skipped.items():
        assert len(reason) > 40 and reason != "No comment provided", f"{check}: {reason!r}"
    assert set(skipped) == {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_38", "CKV_K8S_43"}


def test_checkov_fails_no_check_on_the_containerfile(tmp_path: Path) -> None:
    """The image recipe too; each skip as `# checkov:skip=CKV_DOCKER_N: reason` in the Containerfile."""
    containerfile = REPO / "Containerfile"
    require(containerfile.exists(), "no Containerfile in the tree")
    # checkov recognises Dockerfiles by name only and passes over a file called Containerfile.
    shutil.copy(containerfile, tmp_path / "Dockerfile")
    failed, skipped = failures_and_skips(checkov(["--file", str(tmp_path / "Dockerfile")], "dockerfile"))
    assert failed == []
    for check, reason in skipped.items():
        assert len(reason) > 20, f"{check}: {reason!r}"


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
    for path in sorted(shipped("dashboards").glob("*.json")):
        text = path.read_text()
        assert "${DS_" not in text, path.name
        variables = json.loads(text).get("templating", {}).get("list", [])
        assert any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables), path.name
