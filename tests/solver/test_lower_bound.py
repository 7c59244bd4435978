"""The gap a plan prints is measured against a bound no plan can undercut, on the scale benchmark's scenarios;
no baseline is cheaper than the plan, and no workload misses its objective without a warning.

The benchmark's generator (benchmarks/solver_scale.py: 10 families, 8 models, every recipe x batch, p95
objectives on most workloads, availability limits, shared GPUs) at small sizes, with the defaults on; and the
same scenarios forced through the fluid packing path (no exact packing, no exact retry), which is what large
problems take."""

from __future__ import annotations

import math

import pytest

from benchmarks.solver_scale import build
from planner.solver import solve
from planner.solver.milp import relaxation_bound
from planner.solver.options import OptionBuilder


@pytest.mark.parametrize(("n", "seed"), [(10, 0), (10, 1), (30, 2)])
def test_bound_is_at_most_the_cost_with_defaults(n: int, seed: int) -> None:
    problem = build(n, seed, verbose=False).with_options(baselines=True, sensitivity=False)
    plan = solve(problem)
    assert plan.feasible
    assert plan.total_cost_per_hour is not None
    assert plan.stats is not None
    bound = plan.stats.lower_bound
    assert math.isfinite(bound), plan.warnings
    assert bound <= plan.total_cost_per_hour * (1 + 1e-9)
    assert 0 <= plan.stats.mip_gap < 1
    assert plan.stats.mip_gap == pytest.approx((plan.total_cost_per_hour - bound) / plan.total_cost_per_hour)
    assert all(b.saving is None or b.saving >= -1e-9 for b in plan.baselines), [
        (b.name, b.saving) for b in plan.baselines
    ]
    # No workload is over its objective, simulated or predicted, without a warning naming it.
    for w in plan.workloads:
        objective = w.p95_objective_s
        if objective is None:
            continue
        over = w.predicted_p95_s > objective * (1 + 1e-9) or (w.simulated_p95_s or 0.0) > objective * (1 + 1e-9)
        if over:
            assert any(w.name in line for line in plan.warnings), (w.name, plan.warnings)


@pytest.mark.parametrize(("n", "seed"), [(30, 0)])
def test_bound_holds_on_the_fluid_packing_path(n: int, seed: int) -> None:
    problem = build(n, seed, verbose=False).with_options(exact_packing_max_items=0, exact_packing_retry_max_items=0)
    plan = solve(problem)
    assert plan.feasible
    assert plan.total_cost_per_hour is not None
    assert plan.stats is not None
    assert plan.stats.lower_bound <= plan.total_cost_per_hour * (1 + 1e-9)


def test_the_fluid_models_own_lp_value_is_not_the_bound() -> None:
    """The LP relaxation here relaxes the packing (time and memory rows, not the fluid max of the two): never
    above the fluid model's LP value, which first-fit packing can undercut."""
    from planner.solver.milp import solve_with_availability

    problem = build(30, 0, verbose=False).with_options(exact_packing_max_items=0)
    builder = OptionBuilder(problem.perf, problem.models, problem.recipes)
    option_set = builder.build(problem)
    fluid = solve_with_availability(problem, option_set)
    assert relaxation_bound(problem, option_set, integral=False) <= fluid.lower_bound + 1e-6


@pytest.mark.parametrize(("n", "seed", "fluid"), [(10, 0, False), (30, 1, True)])
def test_a_baselines_cost_floor_is_under_its_plan_and_skipping_changes_no_answer(
    n: int, seed: int, fluid: bool
) -> None:
    """`baselines.cost_floor` never exceeds the cost of a plan from the same options (each single-family filter,
    exact and fluid packing), so the filters it skips could not have won: `_cheapest` picks what solving every
    filter picks."""
    from planner.solver.baselines import _cheapest, cost_floor
    from planner.solver.options import OptionFilter
    from planner.solver.solve_loop import build_options, solve_core

    problem = build(n, seed, verbose=False).with_options(baselines=False, sensitivity=False, latency_repair_rounds=1)
    if fluid:
        problem = problem.with_options(exact_packing_max_items=0, exact_packing_retry_max_items=0)
    builder = OptionBuilder(problem.perf, problem.models, problem.recipes)
    filters = [(f, OptionFilter(families=frozenset({f}))) for f in sorted(problem.families)]
    solved = []
    for label, flt in filters:
        core = solve_core(problem, builder, flt)
        floor = cost_floor(problem, build_options(problem, builder, flt))
        if core.feasible:
            assert floor <= core.cost * (1 + 1e-9), label
            solved.append((core.cost, label))
    assert solved, "no single family can serve this scenario: the test proves nothing"
    label, best = _cheapest(problem, builder, filters)
    assert best is not None
    assert (best.cost, label) == min(solved)
