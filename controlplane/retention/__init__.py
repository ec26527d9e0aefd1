"""Retention: what is deleted when (prune.py), run by the leader (sweeps.py), archived first if asked (archive.py)."""
