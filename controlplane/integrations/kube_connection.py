"""Owns how controlplane connects to a Kubernetes API server: one API client per connection settings.

CONTROLPLANE_KUBE_API_URL (with CONTROLPLANE_KUBE_TOKEN_FILE) names a server outright; otherwise
CONTROLPLANE_KUBE_CONFIG chooses the in-cluster ServiceAccount, a kubeconfig, or the first that
works ("auto"). A configuration that cannot be loaded is an ActionError: the step that needed the
cluster fails saying why.
"""

from __future__ import annotations

import threading
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException
from urllib3.util.retry import Retry

from controlplane.config import Settings
from controlplane.errors import ActionError

_clients: dict[tuple[str, str | None, str | None], k8s.ApiClient] = {}
_clients_lock = threading.Lock()


def api_client(settings: Settings) -> k8s.ApiClient:
    """The API client for these settings, built once: it pools connections across steps."""
    token_file = str(settings.kube_token_file) if settings.kube_token_file else None
    key = (settings.kube_config, settings.kube_api_url, token_file)
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = k8s.ApiClient(_configuration(settings))
        return found


def _configuration(settings: Settings) -> k8s.Configuration:
    if settings.kube_api_url:
        configuration = _explicit(settings.kube_api_url, settings.kube_token_file)
    else:
        configuration = k8s.Configuration()
        try:
            if settings.kube_config == "kubeconfig":
                k8s_config.load_kube_config(client_configuration=configuration)
            else:
                try:
                    k8s_config.load_incluster_config(client_configuration=configuration)
                except ConfigException:
                    if settings.kube_config == "in-cluster":
                        raise
                    k8s_config.load_kube_config(client_configuration=configuration)
        except (ConfigException, OSError) as exc:
            raise ActionError(
                f"no Kubernetes configuration (CONTROLPLANE_KUBE_CONFIG={settings.kube_config}): {exc}"
            ) from None
    # One retry of a connection that could not be made, never of a request that was sent:
    # the step's retry policy owns backoff, and urllib3's default (3 retries) would repeat a
    # timed-out read three times inside one attempt.
    configuration.retries = Retry(total=1, connect=1, read=0, status=0, redirect=0)
    return configuration


def _explicit(url: str, token_file: Path | None) -> k8s.Configuration:
    configuration = k8s.Configuration(host=url.rstrip("/"))
    # Only a plain-http URL (a local proxy, a test stand-in) goes unverified; https keeps verification.
    configuration.verify_ssl = not url.startswith("http://")
    if token_file is not None:
        # `authorization` is the key both old and new client releases read the bearer token from.
        configuration.api_key_prefix = {"authorization": "Bearer"}
        configuration.api_key = {"authorization": _read_token(token_file)}

        def refresh(c: k8s.Configuration) -> None:
            # Projected ServiceAccount tokens rotate; a small file read is cheaper than a 401.
            c.api_key["authorization"] = _read_token(token_file)

        # The client's __init__ sets the hook to None, which its py.typed package leaves as the attribute's type.
        configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]
    return configuration


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ActionError(f"kube_token_file {path}: {exc.strerror}") from None
    if not token:
        raise ActionError(f"kube_token_file {path} is empty")
    return token
