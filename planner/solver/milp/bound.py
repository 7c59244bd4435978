"""The lower bound a plan's gap is measured against (`relaxation_bound`)."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from planner.solver.milp.columns import Terms, choice_columns, dedicated_columns, group_name, select_columns
from planner.solver.milp.model import Model, lp_name
from planner.solver.milp.packing import HALF
from planner.solver.milp.result import gpu_price
from planner.solver.milp.solve import assignment_rows, availability_rows
from planner.solver.options import OptionSet
from planner.solver.problem import Problem

BOUND_INTEGRAL_MAX_VARS = 20_000
"""The lower bound's MILP keeps its integer columns up to this size (HiGHS's dual bound); above, its LP."""


def relaxation_bound(problem: Problem, option_set: OptionSet, *, integral: bool = True) -> float:
    r"""A lower bound on the cost of any plan built from `option_set`: a relaxed packing (`bound_model`).

    The MILP's own LP value is not one: its fluid packing charges a shared slot max(phi / U, mem / M) of a GPU,
    which two complementary tenants undercut, and first-fit then packs them on fewer GPUs than it counted. Any
    plan whose groups use options of the set (replicas dropped, pools packed first-fit, exact bins) is a feasible
    point of the relaxed model, so its cost is at least the model's optimum. Up to `BOUND_INTEGRAL_MAX_VARS`
    columns it is solved as a MILP within `bound_time_limit_s` and HiGHS's dual bound is taken (integer GPU
    counts and choices tighten it); above that, or where that gives no bound, the value of its LP relaxation.
    NaN when neither has a solution (then the plan has no bound to report)."""
    model = bound_model(problem, option_set)
    if not model.columns:
        return 0.0
    opts = problem.options
    options = {
        "disp": False,
        "time_limit": min(opts.time_limit_s, opts.bound_time_limit_s),
        "mip_rel_gap": opts.mip_rel_gap,
    }
    constraints = model.constraints()
    if integral and len(model.columns) <= BOUND_INTEGRAL_MAX_VARS:
        dual = getattr(model.solve(options, constraints=constraints), "mip_dual_bound", None)
        if dual is not None and math.isfinite(dual):
            return float(dual)
    res = model.solve(options, relax=True, constraints=constraints)
    return float(res.fun) if res.x is not None and res.status == 0 else math.nan


def bound_model(problem: Problem, option_set: OptionSet) -> Model:
    r"""The relaxed model: the shared slots of a family f share one GPU count s_f with only constraints every
    real packing meets, whatever its pools (service-time classes) or bins:
        s_f >= sum_o phi_o q_o / U,   s_f >= sum_o mem_o q_o / M_f,
        s_f >= sum_{o: phi_o > U / 2} q_o   (and the same for memory: two such tenants never share a GPU),
    with every shared slot of the set as a column, and the dedicated cover patterns, availability and assignment
    rows of the MILP."""
    fams = problem.families
    limited = {f for f, fam in fams.items() if fam.available is not None}
    model = Model()
    choice, _, terms = choice_columns(model, option_set, coverage=False, moves=None)
    assignment_rows(model, choice, {})
    columns, _ = select_columns(problem, option_set, limited)
    dedicated_columns(model, problem, option_set, set(columns), limited, terms)
    pack_rows = _family_columns(model, problem, option_set, terms)
    for gk, row in terms.cover.items():
        model.row(group_name("cover", gk), row, 0.0, np.inf)
    availability_rows(model, problem, limited, terms)
    for name, coefs in pack_rows:
        model.row(name, coefs, -np.inf, 0.0)
    return model


def _family_columns(
    model: Model, problem: Problem, option_set: OptionSet, terms: Terms
) -> list[tuple[str, list[tuple[int, float]]]]:
    """s_f and every demanded shared slot's q_o per family; returns the packing rows (<= 0) to add last."""
    opts = problem.options
    options = option_set.options
    util = opts.share_max_utilization
    by_family: dict[str, list[int]] = defaultdict(list)
    for i, o in enumerate(options):
        if o.shared and o.key in terms.cover:
            by_family[o.family].append(i)
    rows: list[tuple[str, list[tuple[int, float]]]] = []
    for fid, idxs in by_family.items():
        fam = problem.families[fid]
        mem_cap = fam.memory_gib - opts.memory_reserve_gib
        top = len({options[i].key for i in idxs})
        if fam.available is not None:
            top = min(top, fam.available)
        s = model.var(lp_name("s", fid), gpu_price(problem, fid), 0.0, float(top), True)
        terms.usage[fid].append((s, 1.0))
        q = {i: model.var(lp_name("q", f"o{i}"), 0.0, 0.0, 1.0, True, options[i].workload) for i in idxs}
        for i, v in q.items():
            terms.cover[options[i].key][v] = 1.0
        time = [(v, options[i].fraction / util) for i, v in q.items()]
        mem = [(v, (options[i].memory_gib or 0.0) / mem_cap) for i, v in q.items()]
        rows += [(lp_name("time", fid), [*time, (s, -1.0)]), (lp_name("mem", fid), [*mem, (s, -1.0)])]
        big_time = [v for i, v in q.items() if options[i].fraction / util > HALF]
        big_mem = [v for i, v in q.items() if (options[i].memory_gib or 0.0) / mem_cap > HALF]
        for name, big in (("big_time", big_time), ("big_mem", big_mem)):
            if len(big) > 1:
                rows.append((lp_name(name, fid), [*((v, 1.0) for v in big), (s, -1.0)]))
    return rows
