"""Owns the rules currently in force, and reloading them without ever leaving none or half of them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import structlog

from controlplane.actions.base import ActionRegistry
from controlplane.rules.loader import RuleLoadError, RuleSet, load_rules

log = structlog.get_logger(__name__)


class RulesHolder:
    """`current` is swapped atomically; executions in flight keep the playbook snapshot they started with."""

    def __init__(self, directory: Path, registry: ActionRegistry) -> None:
        self.directory = directory
        self._registry = registry
        self._current = RuleSet.empty()
        self._lock = threading.Lock()
        self.loaded_at: datetime | None = None
        self.last_error: list[str] = []

    @property
    def current(self) -> RuleSet:
        return self._current

    def load(self) -> RuleSet:
        """Load the directory; on errors keep the rules in force, remember the errors and raise."""
        with self._lock:
            try:
                rules = load_rules(self.directory, self._registry)
            except RuleLoadError as exc:
                self.last_error = [str(e) for e in exc.errors]
                log.error("rules.load_failed", directory=str(self.directory), errors=self.last_error)
                raise
            self._current = rules
            self.loaded_at = datetime.now(UTC)
            self.last_error = []
            log.info(
                "rules.loaded", directory=str(self.directory), rules=len(rules.rules), playbooks=len(rules.playbooks)
            )
            return rules
