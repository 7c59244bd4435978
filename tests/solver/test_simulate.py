"""The batching-policy simulation against queueing results that have closed forms."""

from __future__ import annotations

import pytest

from planner.solver.simulate import linear_curve, simulate_pool


def test_one_replica_batch_one_is_the_m_d_1_queue() -> None:
    """Pollaczek-Khinchine: W = S + rho S / (2 (1 - rho)); at rho = 0.5, 1.5 S."""
    sim = simulate_pool(rate=0.5, servers=1, batch=1, service_s=lambda n: 1.0, wait_s=0.0, jobs=40_000, seed=1)
    assert sim.mean_s == pytest.approx(1.5, rel=0.04)
    assert sim.utilization == pytest.approx(0.5, rel=0.03)
    assert sim.mean_batch == 1.0


def test_a_long_wait_fills_every_batch_and_formation_is_half_the_fill_time() -> None:
    """Waiting for b = 4 at a rate that keeps the replica idle: mean formation wait (b - 1) / (2 lambda)."""
    sim = simulate_pool(rate=10.0, servers=1, batch=4, service_s=lambda n: 0.01, wait_s=60.0, jobs=20_000, seed=2)
    assert sim.mean_batch == pytest.approx(4.0)
    assert sim.mean_s == pytest.approx(3 / (2 * 10.0) + 0.01, rel=0.05)


def test_no_wait_on_an_idle_pool_runs_single_jobs() -> None:
    sim = simulate_pool(rate=0.1, servers=2, batch=8, service_s=lambda n: 0.05, wait_s=0.0, jobs=5_000, seed=3)
    assert sim.mean_batch == pytest.approx(1.0, abs=0.01)
    assert sim.p95_s == pytest.approx(0.05, abs=1e-9)


def test_a_short_batch_runs_at_its_padded_size() -> None:
    ran: list[int] = []

    def curve(n: int) -> float:
        ran.append(n)
        return 0.5

    simulate_pool(rate=3.0, servers=1, batch=8, service_s=curve, wait_s=0.05, jobs=2_000, sizes=(1, 2, 4, 8), seed=4)
    assert set(ran) <= {1, 2, 4, 8}
    assert {2, 4} & set(ran)  # partial batches happened and were padded


def test_more_replicas_only_shorten_the_tail() -> None:
    curve = linear_curve([(1, 0.3), (4, 0.9)])
    one = simulate_pool(rate=3.0, servers=1, batch=4, service_s=curve, wait_s=0.05, jobs=20_000, seed=5)
    two = simulate_pool(rate=3.0, servers=2, batch=4, service_s=curve, wait_s=0.05, jobs=20_000, seed=5)
    assert two.p95_s < one.p95_s


def test_helpers() -> None:
    assert linear_curve([(8, 8.0), (1, 1.0)])(4) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="rate > 0"):
        simulate_pool(rate=0.0, servers=1, batch=1, service_s=lambda n: 1.0, wait_s=0.0)


def test_a_replay_serves_the_given_arrivals_by_the_batcher_rule() -> None:
    """Two jobs fill batch 2 at 0.01 s; the third waits out the 0.05 s batch wait alone."""
    sim = simulate_pool(
        rate=1.0, servers=1, batch=2, service_s=lambda n: 0.1, wait_s=0.05, warmup_jobs=0, arrivals=[0.0, 0.01, 1.0]
    )
    assert sim.jobs == 3
    assert sim.mean_batch == pytest.approx(1.5)
    assert sim.mean_s == pytest.approx((0.11 + 0.10 + 0.15) / 3)
