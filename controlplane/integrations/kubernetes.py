"""Owns talking to the Kubernetes API: workload scale, rollout restarts, HPA bounds and ConfigMap keys.

Uses the official `kubernetes` client (its connection: kube_connection.py); `KubernetesClient`
binds the calls to one cluster's settings for the actions. Every call goes through `_call`, which sorts the API's
answers into ActionErrors an on-call person can act on:

- 409 Conflict is `Conflict`: someone wrote between our read and our write. The read-modify-write
  helpers here re-read and re-apply (at most MAX_CONFLICT_TRIES times) before giving up;
- 5xx, 429, connection errors and timeouts are retriable (the step's retry policy decides);
- 401/403 are not, and say which verb on which resource the ServiceAccount's Role must grant;
- 404 is not, and names the missing object.

Answers are read as the API's own JSON (`_preload_content=False`), not as the client's generated
models, and objects are changed with patches of just the fields we own: newer clients validate
PUT bodies against models that refuse unknown fields, so a read-modify-PUT of a whole object
could fail on a field the API server has and the client does not.

Writes that must not lose a concurrent change carry `metadata.resourceVersion` (in a patch the
API server treats it as a precondition): a stale version answers 409 instead of overwriting.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from controlplane.config import Settings
from controlplane.errors import ActionError
from controlplane.integrations.kube_connection import api_client

WorkloadKind = Literal["Deployment", "StatefulSet"]
T = TypeVar("T")

DEFAULT_TIMEOUT = 15.0  # seconds per API request; the step's own timeout bounds the whole action
MAX_CONFLICT_TRIES = 5
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets
RESTART_KEY = "controlplane/restart-key"  # which step restarted it: a retried step does not restart twice

_WORKLOADS: dict[str, tuple[str, str]] = {  # kind -> (resource, the client's method suffix)
    "Deployment": ("deployments", "deployment"),
    "StatefulSet": ("statefulsets", "stateful_set"),
}


class Conflict(ActionError):
    """409: the object changed since we read it. Retriable: a fresh read and a new write may succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


@dataclass(frozen=True)
class _Object:
    """What a call acts on, for error messages and the permission hint (RBAC resource names)."""

    resource: str  # as RBAC names it: "deployments/scale", "configmaps"
    group: str  # API group: "apps", "" for the core group
    namespace: str
    name: str

    def __str__(self) -> str:
        qualified = f"{self.resource}.{self.group}" if self.group else self.resource
        return f'{qualified} "{self.name}" in namespace "{self.namespace}"'


# -- calls and their errors -------------------------------------------------------------------


def _call(verb: str, obj: _Object, method: Callable[..., Any], timeout: float, **kwargs: Any) -> dict[str, Any]:
    """One API request; the answer's JSON, or an ActionError saying what went wrong and what to do."""
    try:
        # (connect, read): client releases before 30 ignore a float timeout, and would wait forever.
        response = method(
            name=obj.name,
            namespace=obj.namespace,
            _preload_content=False,
            _request_timeout=(timeout, timeout),
            **kwargs,
        )
    except ApiException as exc:
        raise _api_error(verb, obj, exc) from None
    except urllib3.exceptions.HTTPError as exc:
        # Connection refused, reset, timed out: the API server (or the way to it) may come back.
        raise ActionError(
            f"Kubernetes API unreachable ({verb} {obj}): {type(exc).__name__}: {exc}", retriable=True
        ) from None
    answer: dict[str, Any] = json.loads(response.data)
    return answer


def _api_error(verb: str, obj: _Object, exc: ApiException) -> ActionError:
    status = int(exc.status or 0)
    message = _status_message(exc.body) or str(exc.reason or "")
    where = f"{verb} {obj}"
    if status == 409:
        return Conflict(f"{where}: conflict (409): {message}")
    if status in (401, 403):
        group = f' in API group "{obj.group}"' if obj.group else " in the core API group"
        hint = (
            f"check the ServiceAccount's Role: it must allow {verb!r} on {obj.resource!r}{group}"
            f' in namespace "{obj.namespace}"'
        )
        if status == 401:
            hint = "check the ServiceAccount token (CONTROLPLANE_KUBE_TOKEN_FILE or the in-cluster token); " + hint
        return ActionError(f"{where}: Kubernetes API refused ({status}): {message}; {hint}")
    if status == 404:
        return ActionError(f"{obj} not found (404): {message}")
    # 0: the client failed before an answer (TLS); 5xx: the server or etcd; 429: priority and fairness.
    retriable = status == 0 or status >= 500 or status == 429
    return ActionError(f"{where}: Kubernetes API answered {status}: {message}", retriable=retriable)


def _status_message(body: Any) -> str:
    """The `message` of the Status object the API server answers errors with."""
    try:
        status = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return str(body)[:500]
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def _retry_conflicts(attempt: Callable[[], T]) -> T:
    """Run a read-modify-write until no one else wrote in between, at most MAX_CONFLICT_TRIES times."""
    for _ in range(MAX_CONFLICT_TRIES - 1):
        try:
            return attempt()
        except Conflict:
            continue  # someone else wrote: read again, decide again
    try:
        return attempt()
    except Conflict as exc:
        raise Conflict(f"{exc} (still conflicting after {MAX_CONFLICT_TRIES} tries)") from None


def _workload(kind: str) -> tuple[str, str]:
    try:
        return _WORKLOADS[kind]
    except KeyError:
        raise ActionError(f"unsupported workload kind {kind!r} (Deployment or StatefulSet)") from None


# -- scale ------------------------------------------------------------------------------------


def read_scale(
    settings: Settings, *, namespace: str, name: str, kind: str = "Deployment", timeout: float = DEFAULT_TIMEOUT
) -> tuple[int, str]:
    """(replicas, resourceVersion) of the workload's scale subresource."""
    resource, suffix = _workload(kind)
    apps = k8s.AppsV1Api(api_client(settings))
    obj = _Object(f"{resource}/scale", "apps", namespace, name)
    scale = _call("get", obj, getattr(apps, f"read_namespaced_{suffix}_scale"), timeout)
    # ScaleSpec.replicas is omitted when 0.
    return int(scale.get("spec", {}).get("replicas", 0)), str(scale["metadata"]["resourceVersion"])


def write_scale(
    settings: Settings,
    *,
    namespace: str,
    name: str,
    kind: str,
    replicas: int,
    resource_version: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Set replicas if the workload is still at `resource_version` (else Conflict); returns the new version."""
    resource, suffix = _workload(kind)
    apps = k8s.AppsV1Api(api_client(settings))
    obj = _Object(f"{resource}/scale", "apps", namespace, name)
    body = {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
        "spec": {"replicas": replicas},
    }
    scale = _call("update", obj, getattr(apps, f"replace_namespaced_{suffix}_scale"), timeout, body=body)
    return str(scale["metadata"]["resourceVersion"])


def update_scale(
    settings: Settings,
    *,
    namespace: str,
    name: str,
    kind: str = "Deployment",
    compute: Callable[[int], int],
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[int, int]:
    """Set replicas to `compute(current)`, re-reading on conflicts; (previous, new). No write if unchanged."""

    def attempt() -> tuple[int, int]:
        current, version = read_scale(settings, namespace=namespace, name=name, kind=kind, timeout=timeout)
        wanted = compute(current)
        if wanted != current:
            write_scale(
                settings,
                namespace=namespace,
                name=name,
                kind=kind,
                replicas=wanted,
                resource_version=version,
                timeout=timeout,
            )
        return current, wanted

    return _retry_conflicts(attempt)


# -- rollout restart --------------------------------------------------------------------------


def rollout_restart(
    settings: Settings,
    *,
    namespace: str,
    name: str,
    kind: str = "Deployment",
    key: str | None = None,
    now: datetime | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[str, bool]:
    """Restart the workload's pods as `kubectl rollout restart` does; (restartedAt, whether restarted now).

    With `key` (a step's idempotency key) a repeat of the same step finds its own restart
    recorded on the pod template and does not roll the pods a second time.
    """
    resource, suffix = _workload(kind)
    apps = k8s.AppsV1Api(api_client(settings))
    obj = _Object(resource, "apps", namespace, name)
    if key is not None:
        workload = _call("get", obj, getattr(apps, f"read_namespaced_{suffix}"), timeout)
        annotations = workload.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
        if annotations.get(RESTART_KEY) == key:
            return str(annotations.get(RESTARTED_AT, "")), False
    restarted_at = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    annotations = {RESTARTED_AT: restarted_at, **({RESTART_KEY: key} if key is not None else {})}
    # A pod-template change is what makes the controller roll the pods; a patch of the one
    # annotation needs no resourceVersion: it cannot undo anyone else's change.
    body = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
    _call("patch", obj, getattr(apps, f"patch_namespaced_{suffix}"), timeout, body=body)
    return restarted_at, True


# -- HorizontalPodAutoscaler ------------------------------------------------------------------


def _autoscaling(settings: Settings) -> Any:
    # autoscaling/v2 where the client has it (client >= 26); v1 carries the same min/max fields.
    api = getattr(k8s, "AutoscalingV2Api", None) or k8s.AutoscalingV1Api
    return api(api_client(settings))


def patch_hpa(
    settings: Settings,
    *,
    namespace: str,
    name: str,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[int, int]:
    """Set the HPA's minReplicas and/or maxReplicas; returns the (min, max) it had before."""
    api = _autoscaling(settings)
    obj = _Object("horizontalpodautoscalers", "autoscaling", namespace, name)

    def attempt() -> tuple[int, int]:
        hpa = _call("get", obj, api.read_namespaced_horizontal_pod_autoscaler, timeout)
        spec = hpa.get("spec", {})
        old_min, old_max = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
        new_min = old_min if min_replicas is None else min_replicas
        new_max = old_max if max_replicas is None else max_replicas
        if new_min > new_max:
            raise ActionError(f"{obj}: minReplicas {new_min} would be above maxReplicas {new_max}")
        if (new_min, new_max) != (old_min, old_max):
            # The resourceVersion makes the patch conditional: the old values we return are the
            # ones we replaced, not ones a concurrent writer had already changed.
            body = {
                "metadata": {"resourceVersion": hpa["metadata"]["resourceVersion"]},
                "spec": {"minReplicas": new_min, "maxReplicas": new_max},
            }
            _call("patch", obj, api.patch_namespaced_horizontal_pod_autoscaler, timeout, body=body)
        return old_min, old_max

    return _retry_conflicts(attempt)


# -- ConfigMap keys ---------------------------------------------------------------------------


def read_configmap_key(
    settings: Settings, *, namespace: str, name: str, key: str, timeout: float = DEFAULT_TIMEOUT
) -> str | None:
    """The value of `key` in the ConfigMap, None if the key is absent (a missing ConfigMap is an error)."""
    core = k8s.CoreV1Api(api_client(settings))
    configmap = _call("get", _Object("configmaps", "", namespace, name), core.read_namespaced_config_map, timeout)
    value = (configmap.get("data") or {}).get(key)
    return None if value is None else str(value)


def read_hpa(settings: Settings, *, namespace: str, name: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int]:
    """The HPA's (minReplicas, maxReplicas), read only (a plan's read)."""
    obj = _Object("horizontalpodautoscalers", "autoscaling", namespace, name)
    spec = _call("get", obj, _autoscaling(settings).read_namespaced_horizontal_pod_autoscaler, timeout).get("spec", {})
    return int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])


def update_configmap_key(
    settings: Settings,
    *,
    namespace: str,
    name: str,
    key: str,
    update: Callable[[str | None], str],
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[str | None, str]:
    """Set `key` to `update(current value)`; (old, new). Re-reads and re-applies on a concurrent write.

    `update` may run several times (once per conflict), so it must be a pure function of the
    value it is given. The patch carries the resourceVersion the ConfigMap was read at, so a
    write in between is never overwritten. No write when the value does not change.
    """
    core = k8s.CoreV1Api(api_client(settings))
    obj = _Object("configmaps", "", namespace, name)

    def attempt() -> tuple[str | None, str]:
        configmap = _call("get", obj, core.read_namespaced_config_map, timeout)
        old = (configmap.get("data") or {}).get(key)
        new = update(old)
        if new != old:
            body = {"metadata": {"resourceVersion": configmap["metadata"]["resourceVersion"]}, "data": {key: new}}
            _call("patch", obj, core.patch_namespaced_config_map, timeout, body=body)
        return old, new

    return _retry_conflicts(attempt)


class KubernetesClient:
    """The calls above bound to the cluster the settings name: what an action gets, instead of the settings."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings  # read on each call: a missing configuration fails the step, not the service

    def read_scale(self, *, namespace: str, name: str, kind: str) -> int:
        """The workload's replicas, read only (a plan's read)."""
        return read_scale(self._settings, namespace=namespace, name=name, kind=kind)[0]

    def read_hpa(self, *, namespace: str, name: str) -> tuple[int, int]:
        return read_hpa(self._settings, namespace=namespace, name=name)

    def update_scale(self, *, namespace: str, name: str, kind: str, compute: Callable[[int], int]) -> tuple[int, int]:
        return update_scale(self._settings, namespace=namespace, name=name, kind=kind, compute=compute)

    def rollout_restart(self, *, namespace: str, name: str, kind: str, key: str, now: datetime) -> tuple[str, bool]:
        return rollout_restart(self._settings, namespace=namespace, name=name, kind=kind, key=key, now=now)

    def patch_hpa(
        self, *, namespace: str, name: str, min_replicas: int | None, max_replicas: int | None
    ) -> tuple[int, int]:
        return patch_hpa(
            self._settings, namespace=namespace, name=name, min_replicas=min_replicas, max_replicas=max_replicas
        )

    def read_configmap_key(self, *, namespace: str, name: str, key: str) -> str | None:
        return read_configmap_key(self._settings, namespace=namespace, name=name, key=key)

    def update_configmap_key(
        self, *, namespace: str, name: str, key: str, update: Callable[[str | None], str]
    ) -> tuple[str | None, str]:
        return update_configmap_key(self._settings, namespace=namespace, name=name, key=key, update=update)
