"""Replays stored alert history through a rule set, in a sandbox database: see replay/sandbox.py."""
