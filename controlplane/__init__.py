"""controlplane: monitoring and auto-remediation control plane for LLM-agent graph services."""

__version__ = "0.1.0"
