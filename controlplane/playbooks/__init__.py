"""Playbooks: durable executions of rule playbooks, their guards, steps and workers."""
