"""Owns the real Alertmanager the silence tests talk to: Debian's binary on loopback, unclustered, state in a temp dir.

Use it with `from tests.alertmanager_server import alertmanager  # noqa: F401` and an
`alertmanager` argument. One server per test session (it starts in about a second); tests keep
apart by the silence ids they create. Its only receiver sends nowhere: these tests are about
silences, not notifications.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_binary
from tests.prometheus_server import LOOPBACK, free_port

BINARY = "prometheus-alertmanager"  # Debian's name for the alertmanager binary
START_TIMEOUT = 30.0

CONFIG = """\
route:
  receiver: nowhere
receivers:
  - name: nowhere
"""


class AlertmanagerServer:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = workdir / "alertmanager.log"
        config = workdir / "alertmanager.yml"
        config.write_text(CONFIG)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--cluster.listen-address=",  # empty: no gossip port, no HA peers to wait for
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=self.url, timeout=5.0)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"alertmanager exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"alertmanager not ready after {timeout:g}s:\n{self.log_tail()}")

    def silence(self, silence_id: str) -> dict[str, object]:
        """GET /api/v2/silence/{id} straight over HTTP, independent of the code under test."""
        response = self.http.get(f"/api/v2/silence/{silence_id}")
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


# Shared like tests.prometheus_server's: modules that import the fixture each get a fixture of
# their own from pytest, and all of them use this one server; the last teardown stops it.
_shared: AlertmanagerServer | None = None
_users = 0


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertmanagerServer]:
    """A running Alertmanager (fails under CI=true if the binary is missing)."""
    global _shared, _users
    binary = require_binary(BINARY)
    if _shared is None:
        server = AlertmanagerServer(binary, tmp_path_factory.mktemp("alertmanager"))
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        _shared = server
    server = _shared
    _users += 1
    try:
        yield server
    finally:
        _users -= 1
        if _users == 0:
            server.stop()
            _shared = None
