"""Queueing arithmetic behind the predicted p95."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planner.solver.latency import (
    Tenant,
    erlang_c,
    min_replicas_for_latency,
    pool_p95_s,
    queue_wait_p95_s,
    share_class,
    share_class_bound_s,
    shared_check_p95_s,
    shared_p95_s,
)


def test_erlang_c_known_values() -> None:
    got = erlang_c(np.array([1.0, 2.0, 10.0, 3.0]), np.array([0.5, 1.0, 8.0, 0.0]))
    assert got == pytest.approx([0.5, 1 / 3, 0.40918, 0.0], abs=1e-4)
    assert erlang_c(np.array([2.0]), np.array([2.5]))[0] == 1.0


def test_queue_wait_is_zero_when_light_and_infinite_when_overloaded() -> None:
    light = queue_wait_p95_s(np.array([4.0]), np.array([0.5]), np.array([1.0]), np.array([1.0]))
    full = queue_wait_p95_s(np.array([1.0]), np.array([1.2]), np.array([1.0]), np.array([1.0]))
    assert light[0] == 0.0
    assert math.isinf(full[0])
    # M/D/1 at rho 0.9, S = 1 s: kappa S ln(C / 0.05) / (1 - rho) with kappa = 1/2.
    md1 = queue_wait_p95_s(np.array([1.0]), np.array([0.9]), np.array([1.0]), np.array([1.0]))
    assert md1[0] == pytest.approx(0.5 * math.log(0.9 / 0.05) / 0.1)


def test_bigger_batches_wait_longer_to_form() -> None:
    one = pool_p95_s(1.0, np.array([1.0]), np.array([0.5]), np.array([0.5]), np.array([2.0]))
    eight = pool_p95_s(1.0, np.array([8.0]), np.array([0.5]), np.array([0.5]), np.array([2.0]))
    assert eight[0] - one[0] > 6.0  # formation adds (b - 1) / lambda = 7 s; the queue gets lighter


def test_tighter_budgets_need_more_replicas() -> None:
    args = (5.0, np.array([1.0, 1.0]), np.array([0.8, 0.8]), np.array([0.9, 0.9]), np.array([5.0, 5.0]))
    loose, tight = min_replicas_for_latency(*args, budget_s=np.array([30.0, 1.0]))
    assert loose == 5.0
    assert tight > loose
    impossible = min_replicas_for_latency(*args, budget_s=np.array([0.5, 0.5]))
    assert np.all(np.isinf(impossible))


def test_service_classes_bound_the_service_time() -> None:
    s = np.array([0.01, 0.25, 0.26, 1.0, 3.9, 100.0])
    k = share_class(s)
    assert list(k) == [0, 0, 1, 1, 2, 5]
    assert np.all(s <= share_class_bound_s(k) + 1e-12)


def test_shared_p95_grows_with_the_neighbours_load_and_the_check_bounds_it() -> None:
    me = Tenant(rate=0.1, batch=1, service_s=0.5, own_p95_s=0.6)
    alone = shared_p95_s([me])[0]
    crowded = shared_p95_s([me, Tenant(rate=0.8, batch=1, service_s=0.7, own_p95_s=0.8)])[0]
    assert alone >= me.own_p95_s
    assert crowded > alone
    bound = shared_check_p95_s(np.array([0.1]), np.array([1.0]), np.array([0.6]), np.array([1.0]), 0.7)[0]
    assert crowded <= bound  # co-tenant utilisation <= 0.7 and service <= the class bound 1 s
