"""Seed 004's capacity model, as k8s.scale's `capacity` computes it (controlplane/actions/capacity.py)."""

from __future__ import annotations

import pytest

from controlplane.actions.capacity import CapacityParams, capacity_replicas


def test_the_seeds_example_with_its_defaults() -> None:
    # 250 rps x 1 s = 250 concurrent; x peak 2 x (1 + 0.3) = 650; / 50 per instance = 13 replicas.
    estimate = capacity_replicas(250, 1.0)
    assert estimate.concurrency == pytest.approx(650)
    assert estimate.replicas == 13
    assert (estimate.peak_factor, estimate.safety_margin, estimate.per_instance, estimate.min_replicas) == (
        2.0,
        0.3,
        50,
        3,
    )


def test_a_partial_instance_rounds_up_where_the_seed_floors() -> None:
    # 100 rps x 2 s x 2 x 1.3 = 520 concurrent = 10.4 instances: the seed's int() says 10, leaving
    # 20 concurrent executions without a replica; we ask for 11.
    estimate = capacity_replicas(100, 2.0)
    assert estimate.concurrency == pytest.approx(520)
    assert estimate.replicas == 11


def test_float_noise_does_not_add_a_replica() -> None:
    # These inputs make exactly 500 concurrent, which floats compute as 10.000000000000002 instances.
    rps = 0.1 * 3 * 1000 / 1.3 / 0.3
    assert capacity_replicas(rps, 0.5, peak_factor=1).replicas == 10


def test_little_traffic_keeps_the_minimum_of_three() -> None:
    assert capacity_replicas(10, 0.5).replicas == 3
    assert capacity_replicas(0, 1.0).replicas == 3
    assert capacity_replicas(10, 0.5, min_replicas=1).replicas == 1


def test_the_factors_can_be_given() -> None:
    estimate = capacity_replicas(100, 2.0, peak_factor=1.5, safety_margin=0, per_instance=20)
    assert (estimate.concurrency, estimate.replicas) == (pytest.approx(300), 15)


def test_params_refuse_nonsense_factors() -> None:
    base = {"rps": "r", "execution_time": "t"}
    for bad in ({"peak_factor": 0}, {"safety_margin": -0.1}, {"per_instance": 0}, {"min_replicas": -1}, {"x": 1}):
        with pytest.raises(ValueError):
            CapacityParams.model_validate(base | bad)
    with pytest.raises(ValueError):
        CapacityParams.model_validate({"rps": "", "execution_time": "t"})
