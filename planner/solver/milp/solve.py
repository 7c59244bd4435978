"""The MILP of planner.solver.milp built with named rows and columns (`formulate`), solved (`solve_milp`), and the
lazy-availability, two-stage loop around it (`solve_with_availability`)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import LinearConstraint, OptimizeResult

from planner.solver.milp.columns import Terms, choice_columns, dedicated_columns, group_name, select_columns
from planner.solver.milp.model import Model, lp_name
from planner.solver.milp.moves import move_costs
from planner.solver.milp.packing import PoolCounts, SharedColumns, packing_rows, shared_columns
from planner.solver.milp.patterns import Pattern
from planner.solver.milp.result import STATUS, MilpResult, objective, usage
from planner.solver.milp.rounding import round_pools
from planner.solver.options import ChoiceKey, OptionSet
from planner.solver.problem import Problem

PRESOLVE_CHECK_MAX_COLUMNS = 2000
"""Models with at most this many columns are solved again without HiGHS's presolve, and the cheaper answer kept.

HiGHS's presolve, as scipy 1.17.1 ships it, returns wrong answers on small exact-packing models: "optimal" at a
cost above the optimum, or "infeasible" where a plan exists. Reproducers (tests/solver/test_milp_presolve.py):
tests/solver/data/presolve_wrong_optimum.json, a 52-column model dumped with `Model.to_dict`, optimum $12/h
(one pattern per workload), presolve answers "optimal" at $36/h; presolve_wrong_infeasible.json, the same
instance with its availability row, presolve answers "infeasible". tests/solver/test_milp_exhaustive.py found
them; with this check off its random instances hit one about every 120. A model this small solves in
milliseconds without presolve."""


@dataclass
class Formulation:
    """A built model and what its columns mean."""

    model: Model
    choice: dict[ChoiceKey, int]
    coverage: dict[ChoiceKey, int]
    """v_k of the coverage variant (empty otherwise)."""
    patterns: dict[int, Pattern]
    replicas: dict[int, int]
    """option index -> its n_o column."""
    shared: SharedColumns
    cost_scale: float


def formulate(
    problem: Problem,
    option_set: OptionSet,
    *,
    coverage: bool = False,
    limited: set[str] | None = None,
    pool_counts: PoolCounts = "integer",
) -> Formulation:
    """The model of planner.solver.milp's docstring (or its coverage variant), columns then rows."""
    fams = problem.families
    if limited is None:
        limited = {f for f, fam in fams.items() if fam.available is not None}
    model = Model()
    max_price = max((f.price_per_hour for f in fams.values()), default=1.0)
    cost_scale = 1e-4 / max(max_price * max(len(option_set.options), 1), 1.0) if coverage else 1.0
    moves = None if coverage else move_costs(problem, option_set)
    choice, cover, terms = choice_columns(model, option_set, coverage=coverage, moves=moves)
    columns, exact = select_columns(problem, option_set, limited)
    patterns, replicas = dedicated_columns(
        model, problem, option_set, set(columns), limited, terms, coverage=coverage, cost_scale=cost_scale, moves=moves
    )
    shared = shared_columns(
        model, problem, option_set, columns, terms, limited, exact, pool_counts, cost_scale=cost_scale, moves=moves
    )
    assignment_rows(model, choice, cover)
    for gk, row in terms.cover.items():
        model.row(group_name("cover", gk), row, 0.0, np.inf)
    availability_rows(model, problem, limited, terms)
    packing_rows(model, problem, option_set, shared)
    return Formulation(model, choice, cover, patterns, replicas, shared, cost_scale)


def assignment_rows(model: Model, choice: dict[ChoiceKey, int], cover: dict[ChoiceKey, int]) -> None:
    """(assign) one choice per workload; in the coverage variant at most one, and v_k <= z_k."""
    by_workload: dict[int, list[ChoiceKey]] = defaultdict(list)
    for ck in choice:
        by_workload[ck[0]].append(ck)
    for wi, cks in by_workload.items():
        coefs = [(choice[ck], 1.0) for ck in cks]
        if cover:
            model.row(lp_name("assign", f"w{wi}"), coefs, 0.0, 1.0)
            for k, ck in enumerate(cks):
                model.row(lp_name("link", f"w{wi}", k), [(cover[ck], 1.0), (choice[ck], -1.0)], -np.inf, 0.0)
        else:
            model.row(lp_name("assign", f"w{wi}"), coefs, 1.0, 1.0)


def availability_rows(model: Model, problem: Problem, limited: set[str], terms: Terms) -> None:
    """(avail) GPUs of each limited family within its availability."""
    for fid in sorted(limited):
        row = terms.usage.get(fid)
        if row:
            model.row(lp_name("avail", fid), row, -np.inf, float(problem.families[fid].available or 0))


# ---- solving ----------------------------------------------------------------------------------------


def solve_milp(
    problem: Problem,
    option_set: OptionSet,
    *,
    coverage: bool = False,
    limited: set[str] | None = None,
    pool_counts: PoolCounts = "integer",
    time_limit_s: float | None = None,
) -> MilpResult:
    """Build and solve the MILP of the module docstring; `coverage` solves the coverage variant instead.

    `limited`: the families whose availability is enforced (default: all that have a limit).
    `pool_counts`: shared GPUs of a fluid pool are "integer", "continuous" (stage 1 of the two-stage solve)
    or integer within a range per pool (stage 2; pools not named stay closed)."""
    form = formulate(problem, option_set, coverage=coverage, limited=limited, pool_counts=pool_counts)
    model = form.model
    result = MilpResult(
        status="empty",
        feasible=False,
        variables=len(model.columns),
        constraints=len(model.rows),
        integers=sum(model.integer),
    )
    if not model.columns:
        result.status = "no options"
        return result
    opts = problem.options
    options = {
        "disp": opts.verbose,
        "mip_rel_gap": opts.mip_rel_gap,
        "time_limit": min(opts.time_limit_s, time_limit_s or math.inf),
    }
    started = time.perf_counter()
    res, lp_bound = solve_model(
        model, options, stage_one=pool_counts == "continuous" and bool(form.shared.s) and not coverage
    )
    result.solve_s = time.perf_counter() - started
    result.status = STATUS.get(int(res.status), str(res.status))
    if res.x is not None:
        _read(problem, option_set, form, res, lp_bound, result)
    return result


def solve_model(model: Model, options: Mapping[str, Any], *, stage_one: bool = False) -> tuple[OptimizeResult, float]:
    """The solve (stage 1's where `stage_one`; a small model checked without presolve, `PRESOLVE_CHECK_MAX_COLUMNS`),
    and the LP bound where stage 1 fixed columns (NaN otherwise)."""
    constraints = model.constraints()
    res, lp_bound = _stage_one(model, constraints, options) if stage_one else (None, math.nan)
    if res is None:
        res = model.solve(options, constraints=constraints)
    if len(model.columns) <= PRESOLVE_CHECK_MAX_COLUMNS:
        check = model.solve({**options, "presolve": False}, constraints=constraints)
        if check.x is not None and (res.x is None or check.fun < res.fun - 1e-9 * max(1.0, abs(res.fun))):
            res = check
    return res, lp_bound


def _stage_one(
    model: Model, constraints: list[LinearConstraint], options: Mapping[str, Any]
) -> tuple[OptimizeResult | None, float]:
    """The LP relaxation is nearly integral (covers are integer patterns): solve it, fix every workload whose
    columns are all integral there, and solve the MILP of the few left; the LP value is the lower bound. None
    where the fixed part leaves no integer solution (then the whole MILP is solved)."""
    lp = model.solve({"disp": False}, relax=True, constraints=constraints)
    if lp.x is None:
        return None, math.nan
    x_lp = np.asarray(lp.x)
    integrality = np.array(model.integer)
    owner = np.array(model.owner)
    fractional = (integrality == 1) & (np.abs(x_lp - np.round(x_lp)) > 1e-6)
    free = np.isin(owner, owner[fractional & (owner >= 0)]) | (owner < 0)
    fix = ~free & (integrality == 1)
    lower, upper = np.array(model.lower), np.array(model.upper)
    lower[fix] = upper[fix] = np.round(x_lp[fix])
    res = model.solve(options, lower=lower, upper=upper, constraints=constraints)
    return (res if res.x is not None else None), float(lp.fun)


def _read(
    problem: Problem, option_set: OptionSet, form: Formulation, res: OptimizeResult, lp_bound: float, result: MilpResult
) -> None:
    """Fill `result` from the solution: choices, replicas, shared GPUs, objective and bounds."""
    x = np.asarray(res.x)
    result.feasible = True
    gap = getattr(res, "mip_gap", None)
    result.mip_gap = float(gap) if gap is not None else 0.0
    dual = getattr(res, "mip_dual_bound", None)
    result.dual_bound = float(dual) if dual is not None else math.nan
    for ck, v in form.choice.items():
        if x[v] > 0.5:
            result.choices[ck[0]] = (ck[1], ck[2])
            if form.coverage:
                result.coverage[ck[0]] = float(x[form.coverage[ck]])
    replicas: dict[int, int] = defaultdict(int)
    for v, p in form.patterns.items():
        if x[v] > 0.5:
            for i, n in p.replicas:
                replicas[i] += n
    for i, v in form.replicas.items():
        if (count := round(x[v])) > 0:
            replicas[i] += int(count)
    result.replicas = dict(replicas)
    shared = form.shared
    for pool, bins in shared.bins.items():
        for k, u in enumerate(bins):
            placed = [i for i in shared.by_pool[pool] if x[shared.x[(i, k)]] > 0.5] if x[u] > 0.5 else []
            if placed:
                result.shared_bins.append((pool[0], placed))
    for pool, s in shared.s.items():
        placed = [i for i in shared.by_pool[pool] if x[shared.q[i]] > 0.5]
        if placed:
            result.shared_fluid[pool] = (math.ceil(x[s] - 1e-6), placed)
            result.fluid_pools[pool] = float(x[s])
    result.objective = objective(problem, option_set.options, result)
    bound = result.dual_bound if math.isfinite(result.dual_bound) else float(res.fun)
    if math.isfinite(lp_bound):
        bound = lp_bound  # the fixed MILP's bound is not a bound of the whole problem; the LP's is
    result.lower_bound = min(bound / form.cost_scale if form.coverage else bound, result.objective)


# ---- the loop around it -----------------------------------------------------------------------------


def _two_stage(problem: Problem, option_set: OptionSet, limited: set[str]) -> MilpResult:
    """Fluid pools: stage 1 with continuous pool GPU counts (a relaxation: its dual bound is a lower bound of
    the fluid model's cost), stage 2 rounds each pool to whole GPUs (planner.solver.milp.rounding). Without fluid
    pools, one exact solve."""
    first = solve_milp(problem, option_set, limited=limited, pool_counts="continuous")
    if not first.feasible or not first.fluid_pools:
        return first
    started = time.perf_counter()
    round_pools(problem, option_set, first)
    first.solve_s += time.perf_counter() - started
    first.stages = 2
    return first


def solve_with_availability(problem: Problem, option_set: OptionSet) -> MilpResult:
    """Solve with availability limits added lazily: first every family unlimited, then the limits the answer
    exceeds, until it respects all of them. Exact (a relaxation's optimum that is feasible is optimal) and
    fast when limits do not bind, which keeps the tight pattern columns for every group."""
    limited: set[str] = set()
    solve_s = 0.0
    while True:
        result = _two_stage(problem, option_set, limited)
        solve_s += result.solve_s
        result.solve_s = solve_s
        if not result.feasible:
            return result
        over = {
            f
            for f, n in usage(option_set, result).items()
            if problem.families[f].available is not None and n > (problem.families[f].available or 0)
        }
        if not over or over <= limited:
            return result
        limited |= over
