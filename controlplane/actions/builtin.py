"""Owns which actions ship with controlplane: `build_registry()`, a new registry holding them all."""

from __future__ import annotations

from types import ModuleType

from controlplane.actions import (
    failover,
    flow,
    graph,
    http,
    incident,
    k8s,
    notify,
    paging,
    prometheus,
    silence,
    storage,
)
from controlplane.actions.base import ActionRegistry, declared_in

# Every module that declares built-in actions: a new one is added here, or its actions do not exist.
MODULES: tuple[ModuleType, ...] = (
    failover,
    flow,
    graph,
    http,
    incident,
    k8s,
    notify,
    paging,
    prometheus,
    silence,
    storage,
)


def build_registry() -> ActionRegistry:
    """A registry of its own with every built-in action: the service, `controlplane check` and tests each build one."""
    registry = ActionRegistry()
    for module in MODULES:
        for spec in declared_in(module):
            registry.register(spec)
    return registry
