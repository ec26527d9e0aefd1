"""`build_registry()`: every call a registry of its own, holding every action the package declares."""

from __future__ import annotations

import importlib
import pkgutil

import controlplane.actions as package
from controlplane.actions.base import ActionContext, ActionResult, NoParams, action, declared_in
from controlplane.actions.builtin import MODULES, build_registry


def test_every_module_that_declares_actions_is_listed() -> None:
    """A new action module left out of MODULES would have actions no rule could use: caught here, not at 3 a.m."""
    declaring = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if declared_in(module):
            declaring.add(module.__name__)
    assert declaring == {m.__name__ for m in MODULES}
    assert set(build_registry().names()) == {spec.name for m in MODULES for spec in declared_in(m)}


def test_each_registry_is_its_own() -> None:
    first, second = build_registry(), build_registry()
    assert first.names() == second.names()
    assert "notify.escalate" in first and "graph.disable" in first

    @action("test.only_here", params=NoParams, into=first)
    def only_here(_ctx: ActionContext, _params: NoParams) -> ActionResult:
        """A test's own action."""
        return ActionResult()

    assert "test.only_here" in first
    assert "test.only_here" not in second and "test.only_here" not in build_registry()
    assert first.get("test.only_here").description == "A test's own action."


def test_every_built_in_action_can_plan() -> None:
    """Plans, shadow mode and approvals show what a step would do: an action without a plan would show nothing."""
    registry = build_registry()
    without = [spec.name for spec in registry.specs() if spec.plan is None]
    assert without == []
    assert all(spec.describe()["plans"] for spec in registry.specs())
