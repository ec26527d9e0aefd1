"""Incidents: grouping alerts into incidents, their state machine, and reading them with their alerts and timelines."""
