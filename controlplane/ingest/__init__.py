"""Ingest: Alertmanager webhook payloads -> durable alerts grouped into incidents."""
