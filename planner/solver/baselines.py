"""The plan's baselines solved on the same data, and the plan never dearer than any of them."""

from __future__ import annotations

from dataclasses import replace

from planner.solver.core import Core, weighted
from planner.solver.hold import simulated
from planner.solver.options import OptionBuilder, OptionFilter, default_recipe
from planner.solver.plan import Baseline
from planner.solver.problem import Problem
from planner.solver.simulate import PoolKey
from planner.solver.solve_loop import solve_core


def _cheapest(
    problem: Problem, builder: OptionBuilder, filters: list[tuple[str, OptionFilter]]
) -> tuple[str, Core | None]:
    best: tuple[str, Core | None] = ("", None)
    for label, flt in filters:
        core = solve_core(
            problem.with_options(baselines=False, sensitivity=False, latency_repair_rounds=1, running=None),
            builder,
            flt,
        )
        if core.feasible and (best[1] is None or core.cost < best[1].cost):
            best = (label, core)
    return best


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
