"""`solve(problem) -> Plan`: options, MILP, packing, latency check, baselines, sensitivity, diagnosis.

The steps, and why each is there:
1. options (planner.solver.options): every (model, topology, group, family, recipes, batch) a workload may
   use, pruned to the non-dominated ones;
2. the MILP (planner.solver.milp) picks one (model, topology) per workload and integer replicas per option,
   packing low-rate groups onto shared GPUs;
3. aggregate shared-GPU decisions are packed first-fit-decreasing into real GPUs;
4. a dedicated pool whose rate is covered with room to spare swaps to a lower-latency option of the same
   group and family at the same replica count and no higher price (`assembly.prefer_lower_latency`; the MILP's cost
   is kept, only latency nobody pays for goes);
   every group's p95 is recomputed with the pools the MILP actually chose (mixed pools, shared GPUs); a group
   over its latency budget has its options' credit cut by 15% (or its shared slot forbidden) and the MILP is
   solved again, at most `latency_repair_rounds` times, so an option whose predicted p95 breaks the objective
   is not chosen;
5. the scheduler's greedy batching simulated on each dedicated pool of the plan (planner.solver.simulate) and
   reported next to the analytic p95 (mostly the lower figure; docs/benchmarks.md). Where it misses an
   objective that the bound meets (compiled pools padding short batches at high load), the plan is held to
   both: the workload's bound is held to a tighter objective, searched by re-solving (`hold.hold_to_simulation`),
   and the plan says what that cost; `simulated_p95_binds=False` plans on the bound alone;
   then baselines on the same data and sensitivity (what-if rates and quality floors, relaxed constraints),
   both for the problem as the plan was solved (tightened bounds included);
6. an infeasible input returns a plan with `feasible=False` and, per workload, how much of its rate the fleet
   can carry (coverage MILP), why, and what would carry it (the same problem with unlimited availability).
"""

from __future__ import annotations

import math
from dataclasses import replace

from planner.solver.baselines import baseline_cores, no_dearer_than_baselines, reported_baselines
from planner.solver.core import Core, progress
from planner.solver.evidence import evidence_warnings, latency_notes, left_out_line
from planner.solver.explain import infeasible_plan
from planner.solver.hold import hold_to_simulation, simulated, simulation_warnings, with_users_objective
from planner.solver.milp import relaxation_bound
from planner.solver.options import OptionBuilder, OptionFilter
from planner.solver.plan import Baseline, Plan, Replan
from planner.solver.problem import Problem
from planner.solver.quality import ledger
from planner.solver.replan import plan_moves, plan_replicas
from planner.solver.sensitivity import sensitivity_analysis
from planner.solver.simulate import PoolKey
from planner.solver.solve_loop import solve_core


def solve(problem: Problem, *, builder: OptionBuilder | None = None) -> Plan:
    """The cheapest plan that carries every workload's rate within its latency objective and quality floor."""
    builder = builder or OptionBuilder(problem.perf, problem.models, problem.recipes)
    core = solve_core(problem, builder, OptionFilter())
    if not core.feasible:
        return infeasible_plan(problem, builder, core)
    sim_cache: dict[PoolKey, float] = {}
    core = simulated(problem, core, sim_cache)
    asked: Problem = problem
    held: list[str] = []
    if problem.options.simulate_p95 and problem.options.simulated_p95_binds:
        asked, core, held = hold_to_simulation(problem, builder, core, sim_cache)
    # Baselines and sensitivity answer for the problem the plan was solved for (tightened bounds included), so
    # their costs compare with the plan's.
    baselines: list[Baseline] = []
    swapped: list[str] = []
    if problem.options.baselines:
        progress(problem, "baselines")
        found = baseline_cores(asked, builder)
        core, swapped = no_dearer_than_baselines(asked, core, found, sim_cache)
        baselines = reported_baselines(found, core.cost)
    core = _with_bound(asked, core)
    replan = _replan(asked, builder, core)
    sensitivity = None
    workloads = core.workloads
    if problem.options.sensitivity:
        progress(problem, "sensitivity")
        sensitivity, per_workload = sensitivity_analysis(asked, builder, core)
        workloads = [
            replace(w, binding=tuple(dict.fromkeys([*w.binding, *sorted(per_workload.get(w.name, set()))])))
            for w in workloads
        ]
    workloads = [with_users_objective(wp, problem) for wp in workloads]
    return Plan(
        feasible=True,
        batching=problem.options.batching,  # the workers serving the plan run what it was simulated with
        total_cost_per_hour=core.cost,
        gpus=core.gpus,
        workloads=tuple(workloads),
        shared_gpus=tuple(core.shared),
        baselines=tuple(baselines),
        sensitivity=sensitivity,
        # Evidence first (what the plan rests on), then latency stated where there is no objective, then the
        # rest; `held` lines with the bound's own problem back mean the search gave up: say so in the miss's fix.
        warnings=(
            *evidence_warnings(workloads, allow_estimates=problem.allow_estimates),
            *left_out_line(problem),
            *latency_notes(workloads),
            *core.warnings,
            *held,
            *swapped,
            *simulation_warnings(workloads, tried=bool(held) and asked is problem),
        ),
        stats=core.stats(),
        quality=ledger(problem.perf, problem.workloads, problem.recipes),
        prices={fid: fam.price_dict() for fid, fam in problem.families.items()},
        offering=problem.offering,
        allow_estimates=problem.allow_estimates,
        replan=replan,
    )


def _with_bound(problem: Problem, core: Core) -> Core:
    """The core with a lower bound valid for the problem its plan solves (planner.solver.milp.relaxation_bound).

    Computed once, on the final plan: the options before latency repair (a relaxation of every repaired round),
    with the packing relaxed so that first-fit bins, exact bins and dropped replicas all stay feasible in it. A
    bound above the cost means the plan left the options it was solved over (a bug, or an energy-priced
    latency tie-break): the gap is then reported unknown (NaN) with a warning, never clamped to zero."""
    if not core.feasible or core.bound_set is None:
        return core
    progress(problem, "lower bound (LP relaxation)")
    bound = relaxation_bound(problem, core.bound_set)
    warnings = core.warnings
    if math.isfinite(bound) and bound > core.cost * (1 + 1e-7) + 1e-9:
        warnings = [
            *warnings,
            f"the lower bound ${bound:.2f}/h is above the plan's cost ${core.cost:.2f}/h, so it is not a bound of "
            "the problem this plan solves: the optimality gap is unknown",
        ]
        bound = math.nan
    return replace(core, lower_bound=bound, warnings=warnings)


def _replan(problem: Problem, builder: OptionBuilder, core: Core) -> Replan | None:
    """What a re-plan from the running plan moves, and what a fresh solve would have moved and cost."""
    running = problem.options.running
    if running is None:
        return None
    progress(problem, "re-plan: solving fresh to say what the moves saved")
    fresh = solve_core(problem.with_options(running=None, baselines=False, sensitivity=False), builder, OptionFilter())
    return Replan(
        move_cost_per_hour=problem.options.move_cost_per_hour,
        moves=plan_moves(running, plan_replicas(core.workloads)),
        fresh_cost_per_hour=fresh.cost if fresh.feasible else None,
        fresh_moves=plan_moves(running, plan_replicas(fresh.workloads)) if fresh.feasible else None,
        cost_per_hour=core.cost,
    )
