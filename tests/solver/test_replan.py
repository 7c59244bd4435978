"""Re-plans from a running plan: moves weighed against savings, reported, and today's optimum at move cost zero.

On the scale benchmark's generator (30 workloads, p95 objectives, availability limits, shared GPUs): the plan
for today's rates runs; every rate then rises 10%."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from benchmarks.solver_scale import build
from planner.solver import Problem, solve
from planner.solver.replan import Moves, RunningPlan, group_moves, plan_moves, plan_replicas


@pytest.fixture(scope="module")
def today() -> tuple[Problem, RunningPlan]:
    problem = build(30, 0, verbose=False).with_options(baselines=False, sensitivity=False)
    plan = solve(problem)
    running = RunningPlan.from_plan_dict(json.loads(plan.to_json()))  # as `--from plan.json` reads it
    assert running.replicas
    up = problem.with_workloads([replace(w, rate=w.rate * 1.1) for w in problem.workloads])
    return up, running


def test_a_plus_ten_percent_replan_moves_fewer_replicas_and_says_what_it_gave_up(
    today: tuple[Problem, RunningPlan],
) -> None:
    up, running = today
    fresh = solve(up)
    fresh_moves = plan_moves(running, plan_replicas(fresh.workloads))
    plan = solve(up.with_options(running=running))  # the default move cost
    assert plan.feasible
    assert plan.replan is not None
    assert plan.replan.moves == plan_moves(running, plan_replicas(plan.workloads))
    assert plan.replan.moves.total < fresh_moves.total
    assert plan.replan.fresh_moves == fresh_moves
    assert plan.replan.fresh_cost_per_hour == pytest.approx(fresh.total_cost_per_hour)
    assert plan.replan.gave_up_per_hour == pytest.approx(plan.total_cost_per_hour - fresh.total_cost_per_hour)
    summary = plan.to_dict()["replan"]["summary"]
    assert "a fresh solve moves" in summary
    assert "give up" in summary
    # Every workload still carries its new rate.
    for w in plan.workloads:
        assert w.rate == pytest.approx(next(x.rate for x in up.workloads if x.name == w.name))


def test_at_move_cost_zero_a_replan_is_the_fresh_optimum(today: tuple[Problem, RunningPlan]) -> None:
    up, running = today
    fresh = solve(up)
    plan = solve(up.with_options(running=running, move_cost_per_hour=0.0))
    assert plan.total_cost_per_hour == pytest.approx(fresh.total_cost_per_hour)
    assert plan.replan is not None
    assert plan.replan.gave_up_per_hour == pytest.approx(0.0)


def test_a_higher_move_cost_never_moves_more(today: tuple[Problem, RunningPlan]) -> None:
    up, running = today
    cheap = solve(up.with_options(running=running, move_cost_per_hour=0.1))
    dear = solve(up.with_options(running=running, move_cost_per_hour=5.0))
    assert cheap.replan is not None
    assert dear.replan is not None
    assert dear.replan.moves.total <= cheap.replan.moves.total


def test_moves_count_changes_on_one_family_once() -> None:
    a = ("w", ("denoiser",), "h100", ("bf16",), 4)
    b = ("w", ("denoiser",), "h100", ("fp8",), 4)
    c = ("w", ("denoiser",), "l4", ("bf16",), 1)
    assert group_moves({a: 3}, {b: 2, c: 2}) == Moves(added=2, removed=1, changed=2)
    assert group_moves({a: 3}, {a: 3}).total == 0
