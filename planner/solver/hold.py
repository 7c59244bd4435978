"""The plan held to the scheduler's simulated batching (planner.solver.engine, step 5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace

from planner.solver.core import Core, progress
from planner.solver.options import OptionBuilder, OptionFilter
from planner.solver.plan import WorkloadPlan
from planner.solver.problem import Problem
from planner.solver.simulate import PoolKey, simulate_workload
from planner.solver.solve_loop import solve_core


def simulated(problem: Problem, core: Core, cache: dict[PoolKey, float] | None = None) -> Core:
    """The core with every workload's pools simulated (step 5); unchanged when the simulation is off. `cache`
    (one per `solve`) keeps the pools already simulated, so a re-solve simulates only the pools it changes."""
    if not problem.options.simulate_p95:
        return core
    progress(problem, "simulating the scheduler's batching")
    by_name = {w.name: w for w in problem.workloads}
    opts = problem.options
    return replace(
        core,
        workloads=[
            simulate_workload(
                problem,
                by_name[wp.name],
                wp,
                wait_s=opts.batch_wait_s,
                compiled_batches=opts.compiled_batches,
                cache=cache,
            )
            for wp in core.workloads
        ],
    )


def _misses(core: Core, objectives: dict[str, float | None]) -> dict[str, float]:
    """Workloads whose simulated p95 is over their (user's) objective while the bound meets the bound's own."""
    out: dict[str, float] = {}
    for wp in core.workloads:
        objective, sim = objectives.get(wp.name), wp.simulated_p95_s
        if objective is not None and sim is not None and wp.meets_latency and sim > objective * (1 + 1e-9):
            out[wp.name] = sim
    return out


def hold_to_simulation(
    problem: Problem, builder: OptionBuilder, core: Core, cache: dict[PoolKey, float] | None = None
) -> tuple[Problem, Core, list[str]]:
    """The cheapest plan found whose bound and simulated batching both meet every objective (step 5).

    The bound is the MILP's constraint; the simulation has no closed form to put there, so the bound's objective
    is searched instead. Tighten: where the simulation misses objective L with p95 S > L, the workload's bound is
    held to L' = L' x L / S (starting from L' = L) and the problem solved again, at most
    `simulation_repair_rounds` times; the bound's plan at a smaller L' batches less or buys replicas, and its
    simulation falls. Back off: the bound's plans are steps, so the first L' that meets may buy more than
    needed; as many rounds again bisect (geometrically) between the last L' that missed and the best that met,
    keeping a plan that meets at no higher cost (and, where the first tightening left the fleet no plan, looking
    between the two for one). Returns the problem the plan was solved for (the tightened objectives), its core,
    and one line per tightened workload saying what it cost; where no round meets every objective, the bound's
    plan, with a line saying so (and `simulation_warnings` its miss)."""
    objectives = {w.name: w.p95_latency_s for w in problem.workloads}
    misses = _misses(core, objectives)
    if not misses:
        return problem, core, []
    rounds = problem.options.simulation_repair_rounds

    def attempt(asked: Mapping[str, float | None]) -> tuple[Problem, Core | None, dict[str, float]]:
        current = problem.with_workloads([replace(w, p95_latency_s=asked[w.name]) for w in problem.workloads])
        progress(current, "holding the plan to the simulated batching: solving again with tighter bounds")
        alt = solve_core(current, builder, OptionFilter())
        if not alt.feasible:
            return current, None, {}
        alt = simulated(current, alt, cache)
        return current, alt, _misses(alt, objectives)

    asked: dict[str, float | None] = dict(objectives)
    missed: dict[str, float] = {}  # per tightened workload, the loosest bound objective known to miss
    tight, best = _tighten(attempt, objectives, misses, asked, missed, rounds)
    best = _back_off(attempt, tight, best, missed, rounds)
    if best is None:
        outcome = "before the fleet ran out of plans" if tight is not None else f"within {rounds} re-solve(s)"
        tried = ", ".join(f"{n} (down to {asked[n]:.3g} s)" for n in sorted(missed))
        return (
            problem,
            core,
            [f"holding the analytic bound to tighter objectives found no plan whose simulated batching meets them "
             f"{outcome}: {tried}; the plan below is the bound's."],
        )  # fmt: skip
    current, alt, met = best
    return current, alt, _held_notes(core, alt, met, sorted(missed), objectives)


Attempt = Callable[[Mapping[str, float | None]], tuple[Problem, Core | None, dict[str, float]]]
"""A re-solve with the bound held to the given objectives: its problem, its core (None: no plan), its misses."""
Best = tuple[Problem, Core, dict[str, float | None]]
"""The cheapest plan found that meets every objective: its problem, core and bound objectives."""


def _tighten(
    attempt: Attempt,
    objectives: Mapping[str, float | None],
    misses: dict[str, float],
    asked: dict[str, float | None],
    missed: dict[str, float],
    rounds: int,
) -> tuple[dict[str, float | None] | None, Best | None]:
    """Tighten each missing workload's bound objective by objective / simulated p95 until a plan meets every
    objective or the fleet has no plan (at most `rounds` re-solves); `asked` and `missed` are updated in place.
    Returns the bound objectives that met or left no plan (None: neither within the rounds) and the plan met."""
    for _ in range(rounds):
        for name, sim in misses.items():
            objective, bound = objectives[name], asked[name]
            assert objective is not None  # a miss needs an objective
            assert bound is not None
            missed[name] = bound
            asked[name] = bound * objective / sim
        current, alt, misses = attempt(asked)
        if alt is None or not misses:
            tight = dict(asked)
            return tight, None if alt is None else (current, alt, tight)
    return None, None


def _back_off(
    attempt: Attempt,
    tight: dict[str, float | None] | None,
    best: Best | None,
    missed: Mapping[str, float],
    rounds: int,
) -> Best | None:
    """Bisect (geometrically) between the loosest bound objectives known to miss and the tightest known to meet
    (or to leave no plan), keeping the cheapest plan that meets."""
    loosest = dict(missed)
    for _ in range(rounds):
        if tight is None:
            break
        trial: dict[str, float | None] = dict(tight)
        for name, loose in loosest.items():
            bound = tight[name]
            assert bound is not None
            trial[name] = math.sqrt(bound * loose)
        current, alt, misses = attempt(trial)
        if alt is not None and misses:
            loosest = {name: trial[name] or loose for name, loose in loosest.items()}
            continue
        tight = trial
        if alt is not None and (best is None or alt.cost <= best[1].cost * (1 + 1e-9)):
            best = (current, alt, trial)
    return best


def _held_notes(
    core: Core, alt: Core, met: Mapping[str, float | None], names: list[str], objectives: Mapping[str, float | None]
) -> list[str]:
    """One line per tightened workload: its simulated p95 before and after, the bound it is held to, the cost."""
    first = {wp.name: wp for wp in core.workloads}
    notes = []
    for name in names:
        was, now = first[name], _workload(alt, name)
        notes.append(
            f"{name}: the scheduler's batching, simulated on the bound's plan, gives a p95 of "
            f"{was.simulated_p95_s or 0:.2f} s against the objective {objectives[name]:g} s; the plan holds "
            f"the analytic bound to {met[name] or 0:.3g} s instead, where the simulation gives "
            f"{now.simulated_p95_s or 0:.2f} s ({_dollars(now.cost_per_hour - was.cost_per_hour)}/h for this "
            "workload). To plan on the bound alone: `solver: {simulated_p95_binds: false}` in a scenario."
        )
    return notes


def _dollars(delta: float) -> str:
    return f"{'-' if delta < 0 else '+'}${abs(delta):.2f}"


def _workload(core: Core, name: str) -> WorkloadPlan:
    return next(w for w in core.workloads if w.name == name)


def with_users_objective(wp: WorkloadPlan, problem: Problem) -> WorkloadPlan:
    """The workload's plan with the user's objective, and the bound's own where the plan tightened it."""
    objective = next(w.p95_latency_s for w in problem.workloads if w.name == wp.name)
    if wp.p95_objective_s == objective:
        return wp
    return replace(wp, p95_objective_s=objective, bound_objective_s=wp.p95_objective_s)


def simulation_warnings(workloads: list[WorkloadPlan], *, tried: bool) -> list[str]:
    """Where the workers' batching, simulated, misses an objective that the analytic bound says is met.

    The bound is usually the higher figure; it is not where compiled pools pad short batches up to a warmed
    size (docs/benchmarks.md, the p95 grid), and a reviewer should hear of that before buying. `tried`: the
    solver already held the bound to tighter objectives (`hold_to_simulation`) and found nothing better."""
    out: list[str] = []
    for w in workloads:
        sim, objective = w.simulated_p95_s, w.p95_objective_s
        if sim is not None and objective is not None and w.meets_latency and sim > objective * (1 + 1e-9):
            fix = (
                "Fix: relax the objective, or allow faster recipes or families"
                if tried
                else f"Fix: ask for about {objective * w.predicted_p95_s / sim:.3g} s (the objective scaled by "
                "bound/simulated) so the solver buys the margin"
            )
            out.append(
                f"{w.name}: the scheduler's batching, simulated on this plan, gives a p95 of {sim:.2f} s, above "
                f"the objective {objective:g} s (the analytic bound says {w.predicted_p95_s:.2f} s). {fix}, or "
                "measure the plan on real workers (benchmarks/e2e_gpu.py)."
            )
    return out
