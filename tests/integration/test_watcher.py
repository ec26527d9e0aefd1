"""Who watches the watcher: what the rules that page when the control plane is dead, missing or deaf rely on."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_a_control_plane_that_accepted_nothing_yet_exports_a_zero(client: TestClient) -> None:
    """ControlPlaneWebhookSilent counts `increase()` of the accepted webhooks: a series that first appears
    at 1 has no increase, so a fresh or long-dead control plane's first webhook would go unseen."""
    text = client.get("/metrics").text
    assert 'controlplane_webhook_requests_total{outcome="accepted"} 0.0' in text
