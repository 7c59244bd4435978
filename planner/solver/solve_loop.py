"""Options, MILP, assembly and latency repair, with exact packing retried where the fluid packing was
used (planner.solver.engine, steps 1-4)."""

from __future__ import annotations

import time
from dataclasses import replace

from planner.solver.assembly import assemble
from planner.solver.core import REPAIR_CREDIT_FACTOR, Core, progress, weighted
from planner.solver.milp import solve_with_availability
from planner.solver.options import GroupKey, OptionBuilder, OptionFilter, OptionSet
from planner.solver.problem import Problem


def solve_core(
    problem: Problem, builder: OptionBuilder, flt: OptionFilter, option_set: OptionSet | None = None
) -> Core:
    """Options + MILP + packing + latency repair (module docstring, steps 1-4), with exact packing tried where
    the fluid packing was used on few enough candidates (`_exact_packing_retry`). `option_set`: the options of
    `problem` under `flt`, where the caller built them already."""
    return _exact_packing_retry(problem, builder, flt, _solve_once(problem, builder, flt, option_set))


def build_options(problem: Problem, builder: OptionBuilder, flt: OptionFilter) -> OptionSet:
    """The options a solve of `problem` under `flt` uses (a baseline's filter stops at its first unserved
    workload: it is infeasible, and building the others is waste)."""
    return builder.build(problem, flt, stop_when_unserved=flt != OptionFilter())


def _exact_packing_retry(problem: Problem, builder: OptionBuilder, flt: OptionFilter, core: Core) -> Core:
    """The cheaper of `core` and the same problem packed exactly, where `core` packed fluidly.

    The fluid packing charges each shared slot the larger of its time and memory share and keeps one slot per
    pool, so it can miss complementary tenants and buy a GPU more than the optimum (cheaper than the plan's own
    single-family baseline on small fleets, where that baseline packs exactly). Up to
    `exact_packing_retry_max_items` candidates the exact bin-packing MILP usually proves its optimum in well
    under a second; it gets `exact_packing_retry_s`, and whichever plan is cheaper is kept. A fluid solve that
    found no plan at all is retried too: on a fleet with limited availability its rounding can call a fleet short
    that an exact packing fits (tests/solver/test_milp_exhaustive.py found one). A fluid plan without any shared
    GPU is retried as well: the fluid columns are a heuristic subset (one slot per group, family and class, priced
    by size), so a plan that shares no GPU there can still lose to one that shares (issue 29)."""
    opts = problem.options
    if (
        core.milp is None
        or core.option_set.shared_candidates <= opts.exact_packing_max_items
        or core.option_set.shared_candidates > opts.exact_packing_retry_max_items
        or opts.exact_packing_max_items >= opts.exact_packing_retry_max_items
    ):
        return core
    exact = problem.with_options(
        exact_packing_max_items=opts.exact_packing_retry_max_items,
        time_limit_s=min(opts.time_limit_s, opts.exact_packing_retry_s),
    )
    progress(problem, f"packing {core.option_set.shared_candidates} shared candidates exactly")
    alt = _solve_once(exact, builder, flt)
    over = core.feasible and _over_availability(problem, core)
    proven_infeasible = not alt.feasible and alt.milp is not None and alt.milp.status == "infeasible"
    if (
        alt.feasible and (not core.feasible or over or weighted(problem, alt) < weighted(problem, core) * (1 - 1e-9))
    ) or (
        over and proven_infeasible
    ):  # a fluid plan whose first-fit packing broke availability loses to the exact answer, even "no plan"
        alt.build_s += core.build_s
        alt.solve_s += core.solve_s
        return alt
    return core


def _over_availability(problem: Problem, core: Core) -> bool:
    """Whether a plan uses more GPUs of a family than the fleet has (first-fit packing past the fluid count)."""
    return any((avail := problem.families[fid].available) is not None and n > avail for fid, n in core.gpus.items())


def _solve_once(
    problem: Problem, builder: OptionBuilder, flt: OptionFilter, option_set: OptionSet | None = None
) -> Core:
    """Options + MILP + packing + latency repair (module docstring, steps 1-4)."""
    started = time.perf_counter()
    if option_set is None:
        option_set = build_options(problem, builder, flt)
    build_s = time.perf_counter() - started
    progress(problem, f"options: {len(option_set.options)} after pruning ({build_s:.2f} s)")
    unserved = {wi: option_set.diagnostics[wi].reasons for wi, c in option_set.choices.items() if not c}
    if unserved:
        return Core(feasible=False, option_set=option_set, milp=None, unserved=unserved, build_s=build_s)
    solve_s = 0.0
    bound_set = option_set
    for round_ in range(problem.options.latency_repair_rounds + 1):
        result = solve_with_availability(problem, option_set)
        solve_s += result.solve_s
        progress(
            problem,
            f"MILP {result.status}: {result.variables} variables, {result.stages} stage(s), {result.solve_s:.2f} s",
        )
        if not result.feasible:
            return Core(feasible=False, option_set=option_set, milp=result, build_s=build_s, solve_s=solve_s)
        core, violations = assemble(problem, option_set, result)
        core.build_s = build_s
        core.solve_s = solve_s
        core.bound_set = bound_set  # later rounds solve a restriction of it: its bound is theirs too
        if not violations or round_ == problem.options.latency_repair_rounds:
            if violations:
                core.warnings.append(
                    "predicted p95 still above the objective after latency repair for: "
                    + ", ".join(sorted({problem.workloads[k[0]].name for k in violations}))
                )
            return core
        option_set = _repair(option_set, violations)
    raise AssertionError("unreachable")  # pragma: no cover


def _repair(option_set: OptionSet, violations: dict[GroupKey, tuple[set[str], bool]]) -> OptionSet:
    """Cut the credit of the options a late group used (mixed pools queue worse than the per-option check
    assumed) and drop its shared slots, without rebuilding the other workloads' options."""
    options = list(option_set.options)
    by_group = dict(option_set.by_group)
    for gk, (fams, was_shared) in violations.items():
        kept = []
        for i in by_group.get(gk, []):
            o = options[i]
            if o.shared and was_shared:
                continue
            if not o.shared and o.family in fams:
                alts = o.alternatives
                if alts is not None:
                    alts = replace(alts, credit_scale=alts.credit_scale * REPAIR_CREDIT_FACTOR)
                options[i] = replace(o, credit=o.credit * REPAIR_CREDIT_FACTOR, latency_bound=True, alternatives=alts)
            kept.append(i)
        by_group[gk] = kept
    return replace(option_set, options=options, by_group=by_group)
