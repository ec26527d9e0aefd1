"""Owns `controlplane demo` and the end-to-end tests' stack: the whole loop on loopback, with real binaries.

stack.py starts and stops the processes, fast_rules.py makes the sped-up rule copies they load,
narration.py drives the demo and prints it; `run_demo` is what `controlplane demo` calls.
"""

from controlplane.demo.narration import run_demo
from controlplane.demo.stack import BINARIES, MissingBinaries, Stack

__all__ = ["BINARIES", "MissingBinaries", "Stack", "run_demo"]
