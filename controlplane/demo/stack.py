"""Owns the demo's stack: the sample service, Prometheus, Alertmanager(s) and the control plane as child processes.

A `Stack` runs, each on a free 127.0.0.1 port with its files in one work directory: the sample
LangGraph service, the real `prometheus` (scraping the sample and the control plane, loading the
shipped alerting rules), one or two real `prometheus-alertmanager`s (webhook to the control plane,
bearer token from a file) and `controlplane serve` on SQLite with a copy of the shipped rules, sped
up as fast_rules.py says. The end-to-end tests drive the same stack.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from controlplane import runbooks
from controlplane.defaults import DIRECTORY as DEFAULTS_DIR
from controlplane.demo.fast_rules import fast_alert_rules, fast_remediation_rules, scale

LOOPBACK = "127.0.0.1"
BINARIES = ("prometheus", "prometheus-alertmanager")  # Debian's names
INSTALL_HINT = "sudo apt-get install prometheus prometheus-alertmanager"
NAMESPACE = "agents"  # the label the sample's series get, as a Kubernetes scrape would add
GRAPHS = ("chat", "search", "summarize")
START_TIMEOUT = 45.0  # Prometheus alone needs ~5 s before its first scrape (discovery is throttled)
WEBHOOK = "/api/v1/alerts/alertmanager"


class MissingBinaries(RuntimeError):
    """A binary the stack runs is not on PATH; the message says how to install it."""


def find_binaries() -> dict[str, str]:
    found = {name: shutil.which(name) for name in BINARIES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise MissingBinaries(
            f"not on PATH: {', '.join(missing)}. The demo runs the real Prometheus and Alertmanager; "
            f"on Debian/Ubuntu install them with `{INSTALL_HINT}` (the binaries need not run as services)."
        )
    return {name: path for name, path in found.items() if path is not None}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# -- processes -------------------------------------------------------------------------------


class Process:
    """One child process with its output in a log file; `stop()` terminates it, then kills it."""

    def __init__(self, name: str, argv: list[str], log_path: Path, **popen: Any) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **popen)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


class Stack:
    """The sample service, Prometheus, Alertmanager(s) and the control plane, started and stopped together.

    Use as a context manager; everything it started is stopped on exit, whatever ended the block.
    With two Alertmanagers they form a gossip cluster on loopback and Prometheus alerts both.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        rules_dir: Path | None = None,
        alerting_dir: Path | None = None,
        alertmanagers: int = 1,
        time_scale: float = 30.0,
        tick: float = 0.1,
        peer_timeout: str | None = None,
    ) -> None:
        self.binaries = find_binaries()
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="controlplane-demo-"))
        # The packaged defaults: their alertnames and targets are the ones the sample service speaks.
        self.rules_dir = rules_dir or DEFAULTS_DIR / "rules"
        self.alerting_dir = alerting_dir or DEFAULTS_DIR / "alerting"
        self.time_scale = time_scale
        self.tick = tick
        self.peer_timeout = peer_timeout  # Alertmanager's --cluster.peer-timeout (its default: 15s)
        self.sample_url = f"http://{LOOPBACK}:{free_port()}"
        self.controlplane_url = f"http://{LOOPBACK}:{free_port()}"
        self.prometheus_url = f"http://{LOOPBACK}:{free_port()}"
        self.alertmanager_urls = [f"http://{LOOPBACK}:{free_port()}" for _ in range(alertmanagers)]
        self._gossip_ports = [free_port() for _ in range(alertmanagers)] if alertmanagers > 1 else []
        self.console_user = "demo"
        self.console_password = secrets.token_urlsafe(9)
        self.read_token = ""  # made at start, with the webhook token
        self.processes: list[Process] = []
        self.http = httpx.Client(timeout=5.0)

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("webhook-token", "read-token"):
            (self.workdir / name).write_text(secrets.token_urlsafe(32) + "\n")
            (self.workdir / name).chmod(0o600)
        self.read_token = (self.workdir / "read-token").read_text().strip()
        fast_remediation_rules(self.rules_dir, self.workdir / "rules", admin_url=f"{self.sample_url}/admin")
        (self.workdir / "alerting").mkdir(exist_ok=True)
        rules = self.workdir / "alerting" / "demo.rules.yaml"
        fast = fast_alert_rules(self.alerting_dir, self.time_scale, public_url=self.controlplane_url)
        rules.write_text(yaml.safe_dump(fast, sort_keys=False))
        for runbook in runbooks.files(self.alerting_dir):  # served at /runbooks, where the alerts link
            shutil.copyfile(self.alerting_dir / runbook, self.workdir / "alerting" / runbook)
        # All start at once (each waits for nothing but its own config); readiness is checked after.
        self._start_sample()
        self._start_controlplane()
        for index in range(len(self.alertmanager_urls)):
            self._start_alertmanager(index)
        self._start_prometheus(rules)
        self._wait("sample service", lambda: self._ok(f"{self.sample_url}/health"))
        self._wait("control plane", lambda: self._ok(f"{self.controlplane_url}/ready"))
        for url in self.alertmanager_urls:
            self._wait(f"alertmanager {url}", functools.partial(self._cluster_ready, url))
        self._wait("prometheus", self._prometheus_ready)

    def stop(self) -> None:
        # Prometheus first, so nothing new is alerted while the rest goes down.
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        self.http.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        """The last lines of every process's log, for a failure message."""
        return "\n".join(f"--- {p.name} ({p.log_path}):\n{p.tail()}" for p in self.processes)

    # -- the processes -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], **popen: Any) -> None:
        self.processes.append(Process(name, argv, self.workdir / f"{name}.log", **popen))

    def _start_sample(self) -> None:
        port = self.sample_url.rsplit(":", 1)[1]
        argv = [sys.executable, "-m", "controlplane", "sample-app", "--port", port, "--graphs", ",".join(GRAPHS)]
        self._spawn("sample", [*argv, "--interval", str(self.tick)], env=_env_without_controlplane())

    def _start_controlplane(self) -> None:
        from controlplane.web.auth import hash_password

        user = {"name": self.console_user, "role": "operator", "password_hash": hash_password(self.console_password)}
        env = _env_without_controlplane() | {
            "CONTROLPLANE_DATABASE_URL": f"sqlite:///{self.workdir / 'controlplane.db'}",
            "CONTROLPLANE_WEBHOOK_TOKEN_FILE": str(self.workdir / "webhook-token"),
            "CONTROLPLANE_READ_TOKEN_FILE": str(self.workdir / "read-token"),
            "CONTROLPLANE_RULES_DIR": str(self.workdir / "rules"),
            "CONTROLPLANE_PROMETHEUS_URL": self.prometheus_url,
            "CONTROLPLANE_ALERTMANAGER_URL": self.alertmanager_urls[0],
            "CONTROLPLANE_LISTEN_HOST": LOOPBACK,
            "CONTROLPLANE_LISTEN_PORT": self.controlplane_url.rsplit(":", 1)[1],
            "CONTROLPLANE_PUBLIC_URL": self.controlplane_url,
            "CONTROLPLANE_WORKER_POLL_SECONDS": "0.2",
            "CONTROLPLANE_NOTIFY_ROUTES": json.dumps({"*": "log"}),  # no pager here: on-call messages go to the log
            "CONTROLPLANE_CONSOLE_USERS": json.dumps([user]),
            "CONTROLPLANE_LOG_LEVEL": "info",
        }
        self._spawn("controlplane", [sys.executable, "-m", "controlplane", "serve"], env=env, cwd=self.workdir)

    def _start_alertmanager(self, index: int) -> None:
        workdir = self.workdir / f"alertmanager-{index}"
        workdir.mkdir(exist_ok=True)
        config = {
            "global": {"resolve_timeout": "10s"},
            "route": {
                "receiver": "controlplane",
                "group_by": ["alertname", "namespace"],  # what the control plane groups incidents by
                "group_wait": "1s",
                "group_interval": "2s",
                "repeat_interval": "1m",
            },
            "receivers": [
                {
                    "name": "controlplane",
                    "webhook_configs": [
                        {
                            "url": f"{self.controlplane_url}{WEBHOOK}",
                            "send_resolved": True,
                            "http_config": {"authorization": {"credentials_file": str(self.workdir / "webhook-token")}},
                        }
                    ],
                }
            ],
        }
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        if self._gossip_ports:
            own = self._gossip_ports[index]
            cluster = [f"--cluster.listen-address={LOOPBACK}:{own}"]
            cluster += [f"--cluster.peer={LOOPBACK}:{port}" for port in self._gossip_ports if port != own]
            if self.peer_timeout is not None:
                cluster.append(f"--cluster.peer-timeout={self.peer_timeout}")
        else:
            cluster = ["--cluster.listen-address="]  # empty: no gossip port, no peers to wait for
        argv = [
            self.binaries["prometheus-alertmanager"],
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={self.alertmanager_urls[index].removeprefix('http://')}",
            *cluster,
        ]
        self._spawn(f"alertmanager-{index}", argv)

    def _start_prometheus(self, rule_file: Path) -> None:
        def job(name: str, url: str, namespace: str) -> dict[str, Any]:
            address = url.removeprefix("http://")
            return {"job_name": name, "static_configs": [{"targets": [address], "labels": {"namespace": namespace}}]}

        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rule_file)],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [u.removeprefix("http://") for u in self.alertmanager_urls]}]}
                ]
            },
            "scrape_configs": [
                job("langgraph", self.sample_url, NAMESPACE),
                job("controlplane", self.controlplane_url, "controlplane"),
            ],
        }
        workdir = self.workdir / "prometheus"
        workdir.mkdir(exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            self.binaries["prometheus"],
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={self.prometheus_url.removeprefix('http://')}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        self._spawn("prometheus", argv)

    # -- readiness ---------------------------------------------------------------------------

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for process in self.processes:
                process.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready within {timeout:g}s:\n{self.logs()}")
            time.sleep(0.1)

    def _ok(self, url: str) -> bool:
        try:
            return self.http.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def _cluster_ready(self, url: str) -> bool:
        """Ready, and (clustered) gossiping with every peer: before that each would notify on its own."""
        if not self._ok(f"{url}/-/ready"):
            return False
        if not self._gossip_ports:
            return True
        cluster = self.get(url, "/api/v2/status").get("cluster", {})
        return cluster.get("status") == "ready" and len(cluster.get("peers") or []) == len(self._gossip_ports)

    def _prometheus_ready(self) -> bool:
        """Both targets scraped and every Alertmanager discovered, so the first alert has somewhere to go."""
        if not self._ok(f"{self.prometheus_url}/-/ready"):
            return False
        up = {r["metric"]["job"] for r in self.query("up == 1")}
        managers = self.get(self.prometheus_url, "/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        return up == {"langgraph", "controlplane"} and len(managers) == len(self.alertmanager_urls)

    # -- the APIs, as the demo and the tests read them -------------------------------------------

    def get(self, base: str, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        response = self.http.get(f"{base}{path}", params=params, headers=headers)
        response.raise_for_status()
        return response.json()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query: [{"metric": labels, "value": [t, "v"]}]."""
        return list(self.get(self.prometheus_url, "/api/v1/query", query=promql)["data"]["result"])

    def prometheus_alerts(self, alertname: str) -> list[dict[str, Any]]:
        alerts = self.get(self.prometheus_url, "/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == alertname]

    def api(self, path: str, **params: Any) -> Any:
        """A control-plane JSON API call, with the read token."""
        return self.get(self.controlplane_url, path, {"Authorization": f"Bearer {self.read_token}"}, **params)

    def incident_for(self, alertname: str) -> dict[str, Any] | None:
        """The newest incident of `alertname`, or None."""
        for incident in self.api("/api/v1/incidents", limit=50)["items"]:
            if incident["group_labels"].get("alertname") == alertname:
                return dict(incident)
        return None

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """The sample service's admin API (fault injection, graphs, storage)."""
        response = self.http.request(method, f"{self.sample_url}/admin{path}", json=body)
        response.raise_for_status()
        return response.json()

    def error_rate(self, graph: str) -> float:
        """Errors per second of `graph` over the alert's (scaled) window, as Prometheus sees it."""
        window = scale("5m", self.time_scale, minimum=5)
        result = self.query(f'sum(rate(langgraph_executions_total{{graph_name="{graph}",status="error"}}[{window}]))')
        return float(result[0]["value"][1]) if result else 0.0

    def llm_error_rate(self, model: str) -> float:
        """Failed LLM requests per second to `model` (`provider/name`), over the alert's (scaled) window."""
        provider, _, name = model.partition("/")
        window = scale("5m", self.time_scale, minimum=5)
        labels = f'gen_ai_provider_name="{provider}",gen_ai_request_model="{name}",outcome!="ok"'
        result = self.query(f"sum(rate(langgraph_llm_requests_total{{{labels}}}[{window}]))")
        return float(result[0]["value"][1]) if result else 0.0


def _env_without_controlplane() -> dict[str, str]:
    # The children get their settings from the stack alone: a stray CONTROLPLANE_* would change them.
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
