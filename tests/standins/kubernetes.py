"""Owns the Kubernetes API stand-in: a small HTTP server speaking the API server's wire protocol.

Kubernetes cannot run here (no container runtime, no kind/k3s), so tests drive the official
`kubernetes` client against this server instead. It keeps what the control plane relies on:

- paths and verbs: GET/PUT/PATCH on `deployments`, `statefulsets` and their `/scale`
  subresource (apps/v1), `configmaps` and `services` (v1), `horizontalpodautoscalers`
  (autoscaling/v2 and v1);
- `metadata.resourceVersion` on every object, bumped on every write; a PUT, or a PATCH whose
  body carries `metadata.resourceVersion`, with a stale version answers 409 Conflict, as the
  API server's optimistic concurrency does;
- errors as `Status` objects (401 without the bearer token, 403 for verbs `forbid()` denies,
  404 for unknown objects, 409, 415, 5xx), so the client raises what it raises in a cluster;
- merge patch (RFC 7386) and strategic merge patch, treated alike: strategic merge differs
  only in how lists merge, and the control plane never patches a list. JSON patch and
  server-side apply answer 415.

Knobs for tests: `fail_next(n, status)`, `conflict_next_write(mutate)` (a concurrent writer
sneaks in between our read and our write), `delay(seconds)`, `forbid(verb, resource)`,
and `requests`, the log of what the client sent.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import LoopbackHTTP

Obj = dict[str, Any]

# (group/version prefix, resource) of everything the stand-in serves; scale is a subresource.
_PATH = re.compile(
    r"^/(?P<prefix>api/v1|apis/apps/v1|apis/autoscaling/v[12])/namespaces/(?P<ns>[^/]+)/"
    r"(?P<resource>deployments|statefulsets|configmaps|services|horizontalpodautoscalers)/(?P<name>[^/]+)"
    r"(?P<sub>/scale)?$"
)
_GROUP_OF = {
    "deployments": "apps",
    "statefulsets": "apps",
    "configmaps": "",
    "services": "",
    "horizontalpodautoscalers": "autoscaling",
}
_KIND_OF = {
    "deployments": ("apps/v1", "Deployment"),
    "statefulsets": ("apps/v1", "StatefulSet"),
    "configmaps": ("v1", "ConfigMap"),
    "services": ("v1", "Service"),
    "horizontalpodautoscalers": ("autoscaling/v2", "HorizontalPodAutoscaler"),
}
_MERGE_TYPES = {"application/merge-patch+json", "application/strategic-merge-patch+json"}


class _Refusal(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


@dataclass(frozen=True)
class Request:
    """One request as the stand-in saw it: what the real client sends is checked here."""

    method: str
    path: str
    content_type: str
    body: Any
    status: int


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class KubernetesStandIn:
    """The API server's state and knobs; `url` is its base URL once `start()`ed."""

    token: str = "standin-token"
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    _objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failures: list[int] = field(default_factory=list)
    _conflicts: list[Callable[[Obj], None] | None] = field(default_factory=list)
    _delay: float = 0.0
    _forbidden: set[tuple[str, str]] = field(default_factory=set)
    _http: LoopbackHTTP | None = None
    _generation: int = 0  # bumped by reset(): a request that began before it answers without touching the new state

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> KubernetesStandIn:
        standin = self

        class Handler(_Handler):
            server_state = standin

        self._http = LoopbackHTTP(Handler, "k8s-standin")
        self.url = self._http.url
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()

    def reset(self) -> None:
        """Forget objects, knobs and the request log (tests share one server)."""
        with self._lock:
            self._objects.clear()
            self.requests.clear()
            self._failures.clear()
            self._conflicts.clear()
            self._delay = 0.0
            self._forbidden.clear()
            self._generation += 1

    # -- knobs ---------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next `count` requests answer `status` (an API server restarting, etcd timing out)."""
        with self._lock:
            self._failures.extend([status] * count)

    def conflict_next_write(self, mutate: Callable[[Obj], None] | None = None, times: int = 1) -> None:
        """Before the next `times` writes, another writer changes the object (`mutate`) and bumps its version."""
        with self._lock:
            self._conflicts.extend([mutate] * times)

    def delay(self, seconds: float) -> None:
        """Answer every request `seconds` late (for client timeouts); 0 turns it off."""
        self._delay = seconds

    def forbid(self, verb: str, resource: str) -> None:
        """RBAC says no: e.g. forbid("update", "deployments/scale") answers 403 to that verb."""
        with self._lock:
            self._forbidden.add((verb, resource))

    # -- objects -------------------------------------------------------------------------

    def put(self, resource: str, namespace: str, name: str, body: Obj) -> Obj:
        """Create or overwrite an object (test setup: no checks, a fresh resourceVersion)."""
        api_version, kind = _KIND_OF[resource]
        obj = {"apiVersion": api_version, "kind": kind, **copy.deepcopy(body)}
        meta = obj.setdefault("metadata", {})
        meta.update(name=name, namespace=namespace, uid=f"uid-{resource}-{namespace}-{name}")
        with self._lock:
            meta["resourceVersion"] = str(next(self._versions))
            self._objects[(resource, namespace, name)] = obj
        return copy.deepcopy(obj)

    def add_workload(self, namespace: str, name: str, replicas: int, kind: str = "Deployment") -> Obj:
        resource = "deployments" if kind == "Deployment" else "statefulsets"
        labels = {"app": name}
        return self.put(
            resource,
            namespace,
            name,
            {
                "metadata": {"generation": 1, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app"}]}},
                },
                "status": {"replicas": replicas},
            },
        )

    def add_configmap(self, namespace: str, name: str, data: dict[str, str]) -> Obj:
        return self.put("configmaps", namespace, name, {"data": data})

    def add_hpa(self, namespace: str, name: str, *, min_replicas: int, max_replicas: int, workload: str) -> Obj:
        spec = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
        }
        return self.put("horizontalpodautoscalers", namespace, name, {"spec": spec})

    def add_service(self, namespace: str, name: str, selector: dict[str, str]) -> Obj:
        return self.put("services", namespace, name, {"spec": {"selector": selector, "ports": [{"port": 80}]}})

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        with self._lock:
            return copy.deepcopy(self._objects[(resource, namespace, name)])

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("PUT", "PATCH")]

    # -- the API -------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, Obj]:
        generation = self._generation
        if self._delay:
            time.sleep(self._delay)
        if generation != self._generation:  # a test's timed-out request, woken after the next test's reset
            return 503, _status(_Refusal(503, "ServiceUnavailable", "the stand-in was reset while this request waited"))
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        try:
            status, answer = 200, self._answer(method, path, headers, content_type, body)
        except _Refusal as refusal:
            status, answer = refusal.code, _status(refusal)
        with self._lock:
            self.requests.append(Request(method, path, content_type, body, status))
        return status, answer

    def _answer(self, method: str, path: str, headers: Any, content_type: str, body: Any) -> Obj:
        if headers.get("Authorization") != f"Bearer {self.token}":
            raise _Refusal(401, "Unauthorized", "Unauthorized")
        with self._lock:
            if self._failures:
                code = self._failures.pop(0)
                raise _Refusal(code, "InternalError" if code == 500 else "ServiceUnavailable", "injected failure")
        match = _PATH.match(path)
        if match is None:
            raise _Refusal(404, "NotFound", "the server could not find the requested resource")
        resource, namespace, name = match["resource"], match["ns"], match["name"]
        sub = "/scale" if match["sub"] else ""
        if sub and resource not in ("deployments", "statefulsets"):
            raise _Refusal(404, "NotFound", "the server could not find the requested resource")
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch"}.get(method)
        if verb is None:
            raise _Refusal(405, "MethodNotAllowed", f"{method} is not supported here")
        group = _GROUP_OF[resource]
        qualified = f"{resource}.{group}" if group else resource
        if (verb, resource + sub) in self._forbidden:
            raise _Refusal(
                403,
                "Forbidden",
                f'{qualified} "{name}" is forbidden: User "system:serviceaccount:controlplane:controlplane" '
                f'cannot {verb} resource "{resource + sub}" in API group "{group}" in the namespace "{namespace}"',
                {"name": name, "group": group, "kind": resource},
            )
        with self._lock:
            key = (resource, namespace, name)
            stored = self._objects.get(key)
            if stored is None:
                raise _Refusal(
                    404, "NotFound", f'{qualified} "{name}" not found', {"name": name, "group": group, "kind": resource}
                )
            if verb != "get" and self._conflicts:
                mutate = self._conflicts.pop(0)
                if mutate is not None:
                    mutate(stored)
                stored["metadata"]["resourceVersion"] = str(next(self._versions))
            current = _scale_of(stored) if sub else stored
            if verb == "get":
                return copy.deepcopy(current)
            if not isinstance(body, dict):
                raise _Refusal(400, "BadRequest", "the body of the request was not a JSON object")
            if verb == "patch":
                if content_type not in _MERGE_TYPES:
                    raise _Refusal(415, "UnsupportedMediaType", f"the patch type {content_type!r} is not supported")
                wanted = merge_patch(current, body)
            else:
                wanted = body
            sent_version = (body.get("metadata") or {}).get("resourceVersion")
            if sent_version and sent_version != stored["metadata"]["resourceVersion"]:
                raise _Refusal(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    {"name": name, "group": group, "kind": resource},
                )
            if sub:
                replicas = (wanted.get("spec") or {}).get("replicas", 0)
                updated = merge_patch(stored, {"spec": {"replicas": replicas}})
            else:
                # Identity and bookkeeping are the server's, whatever the body says.
                updated = {**wanted, "metadata": {**wanted.get("metadata", {}), **_identity(stored)}}
                updated["apiVersion"], updated["kind"] = stored["apiVersion"], stored["kind"]
            if updated.get("spec") != stored.get("spec") and "generation" in stored["metadata"]:
                updated["metadata"]["generation"] = stored["metadata"]["generation"] + 1
            updated["metadata"]["resourceVersion"] = str(next(self._versions))
            self._objects[key] = updated
            return copy.deepcopy(_scale_of(updated) if sub else updated)


def _identity(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {k: meta[k] for k in ("name", "namespace", "uid", "generation") if k in meta}


def _scale_of(workload: Obj) -> Obj:
    """The scale subresource: a view of the workload sharing its resourceVersion."""
    meta = workload["metadata"]
    replicas = workload.get("spec", {}).get("replicas", 1)
    selector = ",".join(f"{k}={v}" for k, v in workload["spec"]["selector"]["matchLabels"].items())
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion")},
        # ScaleSpec.replicas is `omitempty`: the real server leaves it out at 0.
        "spec": {"replicas": replicas} if replicas else {},
        "status": {"replicas": workload.get("status", {}).get("replicas", 0), "selector": selector},
    }


def _status(refusal: _Refusal) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": refusal.message,
        "reason": refusal.reason,
        "details": refusal.details,
        "code": refusal.code,
    }


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server_state: KubernetesStandIn

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, answer = self.server_state.handle(self.command, self.path.split("?")[0], self.headers, raw)
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is `requests`
