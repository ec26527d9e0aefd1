"""The running service keeps start-up's objects out of the garbage collector's full passes
(services.freeze_startup_heap): each full pass over them stopped every thread for 80-90 ms, the
whole p99 of the console's biggest page. Stopping gives them back, so a process that starts the
service again does not keep the last one's memory."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from controlplane.app import create_app
from controlplane.config import Settings


def test_startup_objects_are_frozen_while_serving_and_released_on_stop(settings: Settings) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        frozen = gc.get_freeze_count()
        assert frozen > 100_000, f"only {frozen} objects frozen: start-up's modules and app alone are more"
        gc.collect()  # a full pass leaves them where they are (reference counting may still free a few)
        assert gc.get_freeze_count() > frozen * 0.9
    assert gc.get_freeze_count() == 0
