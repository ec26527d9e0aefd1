"""Clients of the systems the control plane talks to: every network call to another system lives here."""
