"""Owns what `controlplane demo` does and prints: inject a fault, narrate the loop as it happens, print the timeline.

Two acts, each a whole loop on its own incident: a graph starts failing and is disabled (act 1);
the primary LLM provider starts answering 529 (overloaded), the graphs still on it fail over to
the next healthy model and a canary proves it (act 2).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any, TextIO

from controlplane.demo.stack import MissingBinaries, Stack

ALERT = "LangGraphHighErrorRate"
PROVIDER_ALERT = "LLMProviderErrors"
TERMINAL = frozenset({"suppressed", "succeeded", "failed", "rolled_back", "cancelled", "dry_run"})


class Narrator:
    """Polls every API of the stack and prints each change of one act's loop once, as it happens.

    Act 1 (`graph` given) watches a failing graph; act 2 (`model` given) a failing LLM model.
    """

    def __init__(
        self, stack: Stack, out: TextIO, *, alert: str = ALERT, graph: str | None = None, model: str | None = None
    ) -> None:
        self.stack = stack
        self.alert = alert
        self.graph = graph
        self.model = model
        self.out = out
        self.started = time.monotonic()
        self.seen: set[str] = set()
        self.last_rate: float | None = None
        self.last_rate_at = 0.0
        self.incident: dict[str, Any] | None = None
        self.executions: list[dict[str, Any]] = []

    def say(self, key: str, text: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True)

    def poll(self) -> bool:
        """Print what changed since the last poll, in the loop's order; True once incident and executions ended."""
        s, name = self.stack, self.alert
        firing = s.prometheus_alerts(name)
        for alert in firing:
            labels, value = alert["labels"], float(alert["value"])
            if self.model is None:
                where = f"graph {labels.get('graph_name')} failing {value:.0%} of executions"
            else:
                model = f"{labels.get('gen_ai_provider_name')}/{labels.get('gen_ai_request_model')}"
                where = f"{model} answers {labels.get('outcome')} to {value:.0%} of graph {labels.get('graph_name')}"
            key = f"prom-{alert['state']}-{labels.get('graph_name')}"
            self.say(key, f"Prometheus: {name} {alert['state']} ({where})")
        if any(key.startswith("prom-firing") for key in self.seen) and not firing:
            self.say("prom-resolved", f"Prometheus: {name} no longer firing")
        for alert in s.api("/api/v1/alerts", alertname=name)["items"]:
            received = f"received {alert['receive_count']}x from Alertmanager"
            self.say(f"alert-{alert['id']}", f"control plane: webhook stored alert #{alert['id']} ({received})")
            if alert["status"] == "resolved":
                self.say(f"alert-{alert['id']}-resolved", f"control plane: alert #{alert['id']} resolved (notified)")
        incident = s.incident_for(name)
        executions: list[dict[str, Any]] = []
        if incident is not None:
            url = f"{s.controlplane_url}/incidents/{incident['id']}"
            self.say(f"incident-{incident['id']}", f"control plane: incident #{incident['id']} opened: {url}")
            if incident["status"] == "resolved":  # before the execution's end: verify.resolved waits for this
                self.say(f"incident-{incident['id']}-resolved", f"control plane: incident #{incident['id']} resolved")
            executions = s.api("/api/v1/executions", incident_id=incident["id"])["items"]
            for execution in reversed(executions):
                self._execution(execution["id"])
        self._sample_side()
        self.incident, self.executions = incident, executions
        ended = all(e["status"] in TERMINAL for e in executions)
        return incident is not None and incident["status"] == "resolved" and bool(executions) and ended

    def _execution(self, execution_id: int) -> None:
        detail = self.stack.api(f"/api/v1/executions/{execution_id}")
        name = f"execution #{execution_id}"
        what = f"rule {detail['rule_name']} -> playbook {detail['playbook_name']}"
        self.say(f"exec-{execution_id}", f"control plane: {name} created ({what}, {detail['status']})")
        for step in detail["steps"]:
            key = f"exec-{execution_id}-{step['phase']}-{step['index']}-{step['status']}"
            if step["status"] in ("running", "waiting") and step["action"] != "verify.resolved":
                continue  # most steps take milliseconds: their result is the news
            value = step["output"].get("value", step["output"].get("status", ""))
            shown = f" -> {json.dumps(value)[:80]}" if value not in ("", None) else ""
            error = f": {step['error']}" if step["error"] else ""
            self.say(key, f"  step {step['index'] + 1} {step['action']} {step['status']}{shown}{error}")
        if detail["status"] not in ("pending", "running", "waiting"):
            self.say(f"exec-{execution_id}-end", f"control plane: {name} {detail['status']}: {detail['summary']}")

    def _sample_side(self) -> None:
        """What the sample service shows: the graph disabled (act 1), graphs moved off the model (act 2)."""
        s = self.stack
        if self.graph is not None:
            graphs = {g["name"]: g["enabled"] for g in s.admin("GET", "/graphs")["graphs"]}
            if not graphs.get(self.graph, True):
                self.say("disabled", f"sample service: graph {self.graph} is disabled, no longer executed")
            self._rate(f"errors/s of graph {self.graph}", s.error_rate(self.graph))
            return
        assert self.model is not None
        for graph, state in s.admin("GET", "/llm")["graphs"].items():
            if state["model"] != self.model:
                self.say(f"moved-{graph}", f"sample service: graph {graph} now runs on {state['model']}")
        self._rate(f"failed requests/s to {self.model}", s.llm_error_rate(self.model))

    def _rate(self, what: str, value: float) -> None:
        """A rate, printed every 2 s while it changes: rising, then falling to 0."""
        now = time.monotonic()
        if now - self.last_rate_at < 2:
            return
        rate = round(value, 1)
        if rate != self.last_rate and (rate or self.last_rate):
            print(f"[{now - self.started:6.1f}s]   {what}: {rate:g}", file=self.out, flush=True)
            self.last_rate, self.last_rate_at = rate, now


def run_demo(*, graph: str = "chat", timeout: float = 150.0, keep: bool = False, out: TextIO = sys.stdout) -> int:
    """`controlplane demo`: start the stack, make one graph fail, print the loop; 0 if it completed in time."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack = Stack()
    except MissingBinaries as exc:
        print(f"controlplane demo: {exc}", file=sys.stderr)
        return 2
    print(f"starting the stack in {stack.workdir} (logs there) ...", file=out, flush=True)
    try:
        with stack:
            _print_urls(stack, out)
            return _drive(stack, graph=graph, timeout=timeout, keep=keep, out=out)
    except KeyboardInterrupt:
        print("\nstopped.", file=out)
        return 130
    except RuntimeError as exc:  # a process died or did not become ready; the message has its log
        print(f"controlplane demo: {exc}", file=sys.stderr)
        return 1


def _print_urls(stack: Stack, out: TextIO) -> None:
    cp = stack.controlplane_url
    lines = [
        f"console         {cp}/  (user {stack.console_user}, password {stack.console_password})",
        f"incidents API   {cp}/api/v1/incidents  (Bearer token in {stack.workdir / 'read-token'}, or log in first)",
        f"executions API  {cp}/api/v1/executions",
        f"API docs        {cp}/docs",
        f"Prometheus      {stack.prometheus_url}/alerts",
        *(f"Alertmanager    {url}" for url in stack.alertmanager_urls),
        f"sample service  {stack.sample_url}/admin/graphs",
    ]
    print("\n".join(lines), file=out, flush=True)


def _drive(stack: Stack, *, graph: str, timeout: float, keep: bool, out: TextIO) -> int:
    print(f"\nact 1: graph {graph} now fails every execution (fault error_rate 1.0)", file=out, flush=True)
    stack.admin("POST", "/faults", {"graph": graph, "error_rate": 1.0})
    first = _act(stack, Narrator(stack, out, graph=graph), timeout, out)
    if first is None:
        return 1
    print(f"\nact 1 complete in {first:.0f}s: alert -> incident -> playbook -> graph disabled -> resolved", file=out)

    model = stack.admin("GET", "/llm")["models"][0]["model"]
    print(f"\nact 2: {model}, the primary model, now answers 529 overloaded to every request", file=out, flush=True)
    stack.admin("POST", "/faults", {"model": model, "llm_error": "overloaded", "error_rate": 1.0})
    narrator = Narrator(stack, out, alert=PROVIDER_ALERT, model=model)
    second = _act(stack, narrator, timeout, out)
    if second is None:
        return 1
    moved = sorted({state["model"] for state in stack.admin("GET", "/llm")["graphs"].values()} - {model})
    print(
        f"\nact 2 complete in {second:.0f}s: provider 529 -> alert -> failover to {', '.join(moved)} "
        "-> canary passed -> resolved",
        file=out,
    )
    if keep:
        print("the stack keeps running; Ctrl-C stops it.", file=out, flush=True)
        while True:  # until Ctrl-C, or until one of the processes dies (then say which, and why)
            time.sleep(1)
            for process in stack.processes:
                process.check_alive()
    return 0


def _act(stack: Stack, narrator: Narrator, timeout: float, out: TextIO) -> float | None:
    """Narrate one act until its incident resolved and its executions ended; its duration, None if it failed."""
    deadline = time.monotonic() + timeout
    while not narrator.poll():
        if time.monotonic() > deadline:
            print(f"\nthe loop did not complete within {timeout:g}s.\n{stack.logs()}", file=out, flush=True)
            return None
        time.sleep(0.5)
    took = time.monotonic() - narrator.started
    assert narrator.incident is not None
    _print_timeline(stack, narrator.incident["id"], out)
    if any(e["status"] != "succeeded" for e in narrator.executions):
        print(f"\nthe playbook did not succeed.\n{stack.logs()}", file=out, flush=True)
        return None
    return took


def _print_timeline(stack: Stack, incident_id: int, out: TextIO) -> None:
    """The incident's audit timeline as the console shows it, repeats (verify's polls) folded into one line."""
    print(f"\ntimeline of incident #{incident_id}:", file=out)
    lines: list[tuple[str, int]] = []
    for event in stack.api(f"/api/v1/incidents/{incident_id}")["timeline"]:
        detail = event["detail"]
        what = detail.get("action") or detail.get("playbook") or detail.get("reason") or ""
        if event["action"] == "execution.waiting":
            what = "verify.resolved polls"  # each poll is audited; the deadline in it changes every time
        line = f"  {event['at'][11:23]}  {event['actor']:<26} {event['action']:<18} {what}"
        if lines and lines[-1][0][16:] == line[16:]:
            lines[-1] = (lines[-1][0], lines[-1][1] + 1)
        else:
            lines.append((line, 1))
    for line, count in lines:
        print(line + (f" (x{count})" if count > 1 else ""), file=out)


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM ends the demo like Ctrl-C: through the stack's teardown, not around it."""
    raise KeyboardInterrupt
