"""The batching-policy simulation against queueing results that have closed forms, and on solved plans."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from planner.core.batching import BatchingPolicy
from planner.solver import Plan, Problem, SolverOptions, solve
from planner.solver.plan import GroupPlan
from planner.solver.simulate import linear_curve, pool_curve, simulate_pool
from scheduler.config import SchedulerSettings
from tests.solver.factory import fleet, pipeline_rows, problem, workload


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


# ---- the simulation on a solved plan (`SolverOptions.simulate_p95`) --------------------------------------


def _solved(rate: float, **options: Any) -> tuple[Problem, Plan]:
    rows = pipeline_rows("h100", dn={1: 50.0, 2: 60.0, 4: 90.0, 8: 150.0})
    rows += pipeline_rows("h100", dn={1: 30.0, 2: 40.0, 4: 60.0, 8: 100.0}, rcp="bf16-compile")
    p = problem(rows, [fleet("h100", 4.18)], [workload("w", rate=rate, steps=10)], **options)
    return p, solve(p)


def test_every_dedicated_pool_of_a_plan_is_simulated_and_the_workload_sums_its_groups() -> None:
    _, plan = _solved(8.0, share_gpus=False)
    w = plan.workloads[0]
    assert w.groups
    assert all(g.shared_gpu is None for g in w.groups)
    sims = [g.simulated_p95_s for g in w.groups]
    assert all(s is not None and s > 0 for s in sims)
    slowest: dict[tuple[str, ...], float] = {}
    for g in w.groups:
        assert g.simulated_p95_s is not None
        slowest[g.stages] = max(slowest.get(g.stages, 0.0), g.simulated_p95_s)
    assert w.simulated_p95_s == pytest.approx(sum(slowest.values()))
    data = json.loads(plan.to_json())["workloads"][0]
    assert data["simulated_p95_s"] == pytest.approx(w.simulated_p95_s, abs=1e-4)
    assert data["groups"][0]["simulated_p95_s"] == pytest.approx(w.groups[0].simulated_p95_s, abs=1e-4)


def test_the_greedy_batcher_beats_the_bound_where_batch_formation_dominates() -> None:
    """The bound charges a full batch timeout (b - 1) / rate; the workers dispatch after 50 ms."""
    _, plan = _solved(2.0, share_gpus=False)
    w = plan.workloads[0]
    assert w.simulated_p95_s is not None
    assert max(g.batch for g in w.groups) > 1
    assert w.simulated_p95_s < 0.8 * w.predicted_p95_s


def test_the_simulation_is_off_on_request_and_skips_shared_gpus() -> None:
    _, off = _solved(8.0, share_gpus=False, simulate_p95=False)
    assert off.workloads[0].simulated_p95_s is None
    assert all(g.simulated_p95_s is None for g in off.workloads[0].groups)
    low = [workload("a", rate=0.05), workload("b", rate=0.05)]
    shared = solve(problem(pipeline_rows("h100"), [fleet("h100", 4.18)], low))
    for w in shared.workloads:
        assert w.groups[0].shared_gpu is not None
        assert w.simulated_p95_s is None
        assert w.groups[0].simulated_p95_s is None


def test_a_compiled_stage_runs_a_short_batch_at_its_padded_size() -> None:
    p, plan = _solved(8.0, share_gpus=False)
    w = plan.workloads[0]
    g = GroupPlan(**{**w.groups[0].__dict__, "recipes": dict.fromkeys(w.groups[0].stages, "bf16-compile"), "batch": 8})
    eager = GroupPlan(**{**g.__dict__, "recipes": dict.fromkeys(g.stages, "bf16")})
    pow2 = pool_curve(p, p.workloads[0], w.model, g, compiled_batches="pow2")
    assert pow2(3) == pytest.approx(pow2(4))
    assert pow2(5) == pytest.approx(pow2(8))
    off = pool_curve(p, p.workloads[0], w.model, g, compiled_batches="off")
    assert off(3) < off(4)
    plan_only = pool_curve(p, p.workloads[0], w.model, g, compiled_batches="plan")
    assert plan_only(1) == pytest.approx(plan_only(8))
    runs = pool_curve(p, p.workloads[0], w.model, eager, compiled_batches="pow2")
    assert runs(3) < runs(4)  # an eager stage runs the batch as formed


def test_the_assumed_worker_settings_are_the_schedulers_defaults() -> None:
    """With no policy in the scenario (so none in the plan), the simulation and a worker of default settings run
    one policy; with one, the worker runs the plan's."""
    opts, workers = SolverOptions(), SchedulerSettings()
    assert workers.batching(None) == opts.policy
    assert opts.batch_wait_s == workers.batching(None).batch_wait_s
    assert opts.compiled_batches == workers.batching(None).compiled_batches
    chosen = BatchingPolicy(compiled_batches="plan", batch_wait_s=0.2)
    assert workers.batching(chosen) == replace(opts, batching=chosen).policy


def _flat(p95: float | None, *, available: int | None = None, **options: Any) -> Plan:
    """Compiled pools pad short batches: with a flat service curve a short batch costs a full one, so at this
    load the greedy batcher's p95 (1.81 s on the bound's plan) is above the bound (1.36 s)."""
    rows = pipeline_rows("h100", dn={1: 95.0, 2: 96.0, 4: 98.0, 8: 100.0}, rcp="bf16-compile", te=1.0, vae=1.0)
    w = workload("flat", rate=40.0, steps=10, recipes={"denoiser": ("bf16-compile",)}, p95=p95)
    return solve(problem(rows, [fleet("h100", 4.18, available=available)], [w], share_gpus=False, **options))


def test_on_the_bound_alone_a_plan_whose_simulated_batching_misses_the_objective_says_so() -> None:
    plan = _flat(1.5, simulated_p95_binds=False)
    w = plan.workloads[0]
    assert w.meets_latency
    assert w.bound_objective_s is None
    assert w.simulated_p95_s is not None
    assert w.simulated_p95_s > 1.5
    (warning,) = [x for x in plan.warnings if "simulated" in x]
    assert warning.startswith("flat: ")
    assert "objective 1.5 s" in warning
    assert "Fix: ask for about" in warning
    # Nothing to miss without an objective: the only line says there is none and states the p95 the plan gives.
    (stated,) = [x for x in _flat(None, simulated_p95_binds=False).warnings if "simulated" in x]
    assert "no p95 latency objective was given" in stated
    assert "above the objective" not in stated
    assert not [x for x in _flat(5.0, simulated_p95_binds=False).warnings if "simulated" in x]  # met by both


def test_a_plan_is_held_to_the_simulated_batching_where_the_bounds_plan_misses_it() -> None:
    bound_only = _flat(1.5, simulated_p95_binds=False)
    plan = _flat(1.5)
    w, was = plan.workloads[0], bound_only.workloads[0]
    assert was.simulated_p95_s is not None
    assert was.simulated_p95_s > 1.5
    assert w.simulated_p95_s is not None
    assert w.simulated_p95_s <= 1.5
    assert w.p95_objective_s == 1.5  # the user's objective stays the plan's
    assert w.bound_objective_s is not None
    assert w.predicted_p95_s <= w.bound_objective_s < 1.5
    assert w.meets_latency
    assert plan.total_cost_per_hour is not None
    assert bound_only.total_cost_per_hour is not None
    extra = plan.total_cost_per_hour - bound_only.total_cost_per_hour
    assert extra > 0
    (note,) = [x for x in plan.warnings if "holds the analytic bound" in x]
    assert note.startswith("flat: ")
    assert f"+${extra:.2f}/h" in note
    assert "simulated_p95_binds: false" in note
    assert not [x for x in plan.warnings if "Fix:" in x]
    data = json.loads(plan.to_json())["workloads"][0]
    assert data["bound_objective_s"] == pytest.approx(w.bound_objective_s, abs=1e-4)
    assert data["p95_objective_s"] == 1.5
    # The search finds the cheapest bound's plan (over objectives 1.00-1.50 s) whose simulation meets 1.5 s: the
    # back-off took it from the first plan that met, which was dearer.
    ladder = [_flat(1.0 + k / 50, simulated_p95_binds=False) for k in range(26)]
    meets = [p.total_cost_per_hour for p in ladder if (p.workloads[0].simulated_p95_s or 9.0) <= 1.5]
    assert plan.total_cost_per_hour == pytest.approx(min(c for c in meets if c is not None))
    assert max(c for c in meets if c is not None) > plan.total_cost_per_hour


def test_a_plan_the_simulation_already_meets_is_the_bounds_plan() -> None:
    plan, bound_only = _flat(5.0), _flat(5.0, simulated_p95_binds=False)
    assert plan.workloads[0].bound_objective_s is None
    assert plan.total_cost_per_hour == bound_only.total_cost_per_hour
    assert json.loads(plan.to_json())["workloads"][0]["bound_objective_s"] is None
    assert not [x for x in plan.warnings if "simulat" in x]


def test_a_fleet_too_small_for_a_tighter_bound_keeps_the_bounds_plan_and_says_so() -> None:
    plan = _flat(1.5, available=6)  # the bound's plan takes all 6 GPUs; the simulation wants about 8
    w = plan.workloads[0]
    assert w.bound_objective_s is None
    assert w.simulated_p95_s is not None
    assert w.simulated_p95_s > 1.5
    (tried,) = [x for x in plan.warnings if x.startswith("holding the analytic bound")]
    assert "before the fleet ran out of plans" in tried
    assert "the plan below is the bound's" in tried
    (warning,) = [x for x in plan.warnings if x.startswith("flat: ")]
    assert "Fix: relax the objective" in warning
    assert "ask for about" not in warning  # the solver already tried
    held = _flat(1.5, available=8)  # room for the plan the back-off finds
    assert held.workloads[0].bound_objective_s is not None
    assert held.gpus == {"h100": 8}
