"""Owns the wheel of this working tree for the tests that install it: built once per test session.

tests/conftest.py registers it (pytest_plugins). `project_wheel` is the path of a wheel built (with pip's
build isolation, as a user's build) from a copy of only what a source distribution holds, in a temporary
directory outside the tree: the packaging test installs it into a fresh virtualenv, the container image
test builds the image from it. Building it once spares the second build (about 5 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1]
# What a source distribution of the project holds: the build needs nothing else from the tree.
BUILD_INPUTS = ("pyproject.toml", "README.md", "controlplane")
BUILD_TIMEOUT = 300.0
# Environment that would make the build see something else than the copy.
LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The controlplane wheel of a copy of the tree (a build writes build/ and *.egg-info where it runs)."""
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(SOURCE)
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = SOURCE / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    wheels = root / "wheels"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_") and k not in LEAKY}
    started = time.monotonic()
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(source)]
    try:
        built = subprocess.run(
            command, cwd=root, env={**env, "PIP_NO_INPUT": "1"}, capture_output=True, text=True, timeout=BUILD_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(command)}: still running after {BUILD_TIMEOUT:g}s\n{exc.stdout}\n{exc.stderr}")
    assert built.returncode == 0, f"{' '.join(command)} -> {built.returncode}\n{built.stdout}\n{built.stderr}"
    print(f"pip wheel of the tree: {time.monotonic() - started:.1f}s")
    [wheel] = wheels.glob("controlplane-*.whl")
    return wheel
