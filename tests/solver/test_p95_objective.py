"""A p95 objective only changes a plan where it binds: the mixed covers it allows are checked on the whole pool."""

from __future__ import annotations

import pytest

from planner.solver import solve
from tests.solver.factory import fleet, model, problem, row, workload

STAGES = ("denoiser",)


def _mixed_case(p95: float | None):  # type: ignore[no-untyped-def]
    """Two families whose cheapest cover of 2.5 images/s mixes them: 2 x cheap (1/s, $3, two available) + 1 x
    fast (1.2/s, $4.5) = $10.50/h; the fast family alone needs 3 ($13.50/h), the cheap one alone 3 (only 2)."""
    rows = [row("cheap", "m", "denoiser", "bf16", 1, 1000.0), row("fast", "m", "denoiser", "bf16", 1, 1000.0 / 1.2)]
    return problem(
        rows,
        [fleet("cheap", 3.0, available=2), fleet("fast", 4.5)],
        [workload("w", rate=2.5, steps=1, p95=p95)],
        models=[model("m", stages=STAGES, steps=1)],
        share_gpus=False,
    )


def _shape(plan):  # type: ignore[no-untyped-def]
    return sorted((g.family, g.replicas, g.batch) for w in plan.workloads for g in w.groups)


def test_mixed_family_cover_is_the_optimum_without_an_objective() -> None:
    plan = solve(_mixed_case(None))
    assert plan.total_cost_per_hour == pytest.approx(10.5)
    assert _shape(plan) == [("cheap", 2, 1), ("fast", 1, 1)]


@pytest.mark.parametrize("p95", [300.0, 3000.0])
def test_an_objective_far_above_the_plans_p95_gives_the_same_plan(p95: float) -> None:
    free = solve(_mixed_case(None))
    held = solve(_mixed_case(p95))
    assert held.feasible
    assert held.total_cost_per_hour == pytest.approx(free.total_cost_per_hour)
    assert _shape(held) == _shape(free)
    w = held.workload("w")
    assert w.predicted_p95_s <= p95
    assert "latency" not in w.binding


def test_an_objective_the_mixed_pool_breaks_is_still_met() -> None:
    """Tight enough that the mixed pool's queueing breaks it: the plan buys what meets it, and says so."""
    free = solve(_mixed_case(None))
    tight = free.workload("w").predicted_p95_s * 0.9
    plan = solve(_mixed_case(tight))
    if plan.feasible:
        assert plan.workload("w").predicted_p95_s <= tight * (1 + 1e-9)
        assert plan.total_cost_per_hour is not None
        assert plan.total_cost_per_hour >= free.total_cost_per_hour - 1e-9
