"""Silences the control plane creates in Alertmanager: created, recorded, expired (silences/service.py)."""
