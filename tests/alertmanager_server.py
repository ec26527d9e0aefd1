"""Owns the real Alertmanager the silence tests talk to: Debian's binary on loopback, unclustered, state in a temp dir.

tests/conftest.py registers it (pytest_plugins): take a
`alertmanager` argument. One server per test session (it starts in about a second); tests keep
apart by the silence ids they create. Its only receiver sends nowhere: these tests are about
silences, not notifications.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_binary
from tests.helpers import wait_until_serving
from tests.logged_process import LoggedProcess
from tests.prometheus_server import LOOPBACK, free_port

BINARY = "prometheus-alertmanager"  # Debian's name for the alertmanager binary
START_TIMEOUT = 30.0

CONFIG = """\
route:
  receiver: nowhere
receivers:
  - name: nowhere
"""


class AlertmanagerServer(LoggedProcess):
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
        wait_until_serving(f"{self.url}/-/ready", self.process, self.log_tail, timeout, name="alertmanager")

    def silence(self, silence_id: str) -> dict[str, object]:
        """GET /api/v2/silence/{id} straight over HTTP, independent of the code under test."""
        response = self.http.get(f"/api/v2/silence/{silence_id}")
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data

    def stop(self) -> None:
        self.http.close()
        self.stop_process()


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertmanagerServer]:
    """A running Alertmanager (fails under CI=true if the binary is missing)."""
    server = AlertmanagerServer(require_binary(BINARY), tmp_path_factory.mktemp("alertmanager"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
