"""The plan's baselines solved on the same data, and the plan never dearer than any of them."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from planner.solver.core import Core, weighted
from planner.solver.hold import simulated
from planner.solver.options import GroupKey, OptionBuilder, OptionFilter, OptionSet, default_recipe
from planner.solver.plan import Baseline
from planner.solver.problem import Problem
from planner.solver.simulate import PoolKey
from planner.solver.solve_loop import build_options, solve_core


def _cheapest(
    problem: Problem, builder: OptionBuilder, filters: list[tuple[str, OptionFilter]]
) -> tuple[str, Core | None]:
    """The cheapest plan over the filters (the first listed among equal costs). Filters are solved from the
    lowest cost bound (`cost_floor`) up, and one whose bound is above the cheapest plan found cannot win: its
    MILP is skipped, the answer is the same."""
    quick = problem.with_options(baselines=False, sensitivity=False, latency_repair_rounds=1, running=None)
    built = [build_options(quick, builder, flt) for _, flt in filters]
    floors = [cost_floor(quick, s) for s in built]
    best: tuple[int, Core] | None = None
    for k in sorted(range(len(filters)), key=lambda k: floors[k]):
        if best is not None and floors[k] * (1 - FLOOR_MARGIN) > best[1].cost:
            continue
        core = solve_core(quick, builder, filters[k][1], built[k])
        if core.feasible and (best is None or (core.cost, k) < (best[1].cost, best[0])):
            best = (k, core)
    return ("", None) if best is None else (filters[best[0]][0], best[1])


FLOOR_MARGIN = 1e-6
"""A filter is skipped only where its bound is above the best cost by this much (rounding of the two sums)."""


def cost_floor(problem: Problem, option_set: OptionSet) -> float:
    """A cost no plan from these options can go under (inf where a workload has no choice).

    Every workload pays, per group of its chosen topology, for dedicated replicas whose credits cover its rate
    (so at least rate x the least $/credited image of the group's options and their tie-break alternatives) or
    for a shared slot (at least price x its GPU share / the utilization cap, the slot's share of a GPU's cost).
    Where the exact-packing retry may rebuild the options with more shared candidates, the bound is not claimed
    (0)."""
    opts = problem.options
    candidates = option_set.shared_candidates
    if opts.exact_packing_max_items < candidates <= opts.exact_packing_retry_max_items:
        return 0.0
    cap = opts.share_max_utilization + 1e-6  # the packing's tolerance, with room for HiGHS's
    per_group: dict[GroupKey, float] = {}
    for gk, idx in option_set.by_group.items():
        rate = problem.workloads[gk[0]].rate
        least = math.inf
        for i in idx:
            o = option_set.options[i]
            if o.shared:
                least = min(least, problem.families[o.family].price_per_hour * o.fraction / cap)
                continue
            least = min(least, rate * o.cost_per_hour / o.credit)
            if o.alternatives is not None:
                src, rows = o.alternatives.source, o.alternatives.rows
                least = min(least, rate * float(np.min(src.cost[rows] / src.credit[rows])))
        per_group[gk] = least
    total = 0.0
    for wi, choices in option_set.choices.items():
        total += min((sum(per_group.get((wi, m, g), math.inf) for g in topo) for m, topo in choices), default=math.inf)
    return total


BaselineCore = tuple[str, str, str, "Core | None"]
"""(name, description, label of the winning filter, its core or None where infeasible)."""


def baseline_cores(problem: Problem, builder: OptionBuilder) -> list[BaselineCore]:
    """Each baseline of `reported_baselines` solved on the same data (the cheapest of its filters)."""
    fams = sorted(problem.families)
    out: list[BaselineCore] = []
    recipes = (
        ", ".join(sorted({default_recipe(s, problem.recipes) for m in problem.models.values() for s in m.stage_names}))
        or "bf16"
    )
    specs = [
        (
            "naive",
            f"one family, default recipe ({recipes}), batch 1, stages together, dedicated GPUs",
            [
                (
                    f,
                    OptionFilter(
                        families=frozenset({f}),
                        together_only=True,
                        batch_one=True,
                        default_recipes=True,
                        share=False,
                    ),
                )
                for f in fams
            ],
        ),
        (
            "single-family",
            "the best single family; recipes, batch, topology and sharing free",
            [(f, OptionFilter(families=frozenset({f}))) for f in fams],
        ),
        (
            "gpu-mix-together",
            "a GPU mix with each workload's stages together on one GPU (Melange's formulation)",
            [("mix", OptionFilter(together_only=True))],
        ),
    ]
    for name, description, filters in specs:
        label, core = _cheapest(problem, builder, filters)
        out.append((name, description, label, core))
    return out


def reported_baselines(found: list[BaselineCore], cost: float) -> list[Baseline]:
    """The baselines as the plan reports them, each with what the plan saves against it."""
    out: list[Baseline] = []
    for name, description, label, core in found:
        if core is None:
            out.append(Baseline(name, description, False, None, None, note="infeasible on this fleet"))
            continue
        saving = 1 - cost / core.cost if core.cost > 0 else 0.0
        if -1e-9 < saving < 0:  # equal within the float tolerance `no_dearer_than_baselines` compares with
            saving = 0.0
        note = f"family {label}" if label != "mix" else ""
        out.append(Baseline(name, description, True, core.cost, saving, gpus=dict(core.gpus), note=note))
    return out


def no_dearer_than_baselines(
    problem: Problem, core: Core, found: list[BaselineCore], cache: dict[PoolKey, float] | None = None
) -> tuple[Core, list[str]]:
    """The plan, or the cheapest baseline's plan where that costs less (with a line saying so).

    Every baseline is a restriction of the plan's problem, so the plan's optimum is never dearer; a heuristic
    step (fluid packing past `exact_packing_retry_max_items` candidates, a time limit) can still leave it
    dearer, and a plan that prints a negative saving against its own baseline helps nobody."""
    cheaper = [(weighted(problem, c), name, label, c) for name, _, label, c in found if c is not None and c.feasible]
    if not cheaper:
        return core, []
    _, name, label, best = min(cheaper, key=lambda t: t[0])
    cost = best.cost
    if weighted(problem, best) >= weighted(problem, core) * (1 - 1e-9) or cost >= core.cost * (1 - 1e-9):
        return core, []
    note = (
        f"the solver's plan (${core.cost:.2f}/h) cost more than its {name} baseline"
        + (f" ({label})" if label != "mix" else "")
        + f" (${cost:.2f}/h); that baseline's plan is returned (a heuristic step of the full solve, such as "
        "fluid packing of many shared candidates or a time limit, missed it)"
    )
    # The bound stays the full problem's: the baseline's own options are a restriction of it.
    return replace(simulated(problem, best, cache), warnings=[*best.warnings], bound_set=core.bound_set), [note]
