"""Incidents: reading incidents, their alerts and timelines."""
