"""Owns which actions ship with controlplane: `build_registry()`, a new registry holding them all."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from controlplane.actions.base import ActionRegistry, declared_in

# The modules of controlplane.actions declaring built-in actions: a new one is named here or its actions are missing.
NAMES = (
    "canary",
    "degradation",
    "failover",
    "flow",
    "graph",
    "http",
    "incident",
    "k8s",
    "llm",
    "notify",
    "paging",
    "prometheus",
    "silence",
    "storage",
    "tools",
)
MODULES: tuple[ModuleType, ...] = tuple(import_module(f"controlplane.actions.{name}") for name in NAMES)


def build_registry() -> ActionRegistry:
    """A registry of its own with every built-in action: the service, `controlplane check` and tests each build one."""
    registry = ActionRegistry()
    for module in MODULES:
        for spec in declared_in(module):
            registry.register(spec)
    return registry
