"""Shared GPUs in the MILP: per pool (family, service-time class), exact bins (x_ob, u_b) or a fluid count s_pool
with one q_o per slot, and the packing rows of each (planner.solver.milp, "(pack, exact)" and "(pack, fluid)")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from planner.solver.milp.columns import Terms, slot_size
from planner.solver.milp.model import Model, lp_name
from planner.solver.milp.moves import MoveCosts
from planner.solver.milp.result import Pool, gpu_price
from planner.solver.options import OptionSet
from planner.solver.problem import Problem

PoolCounts = str | Mapping[Pool, tuple[int, int]]
"""A fluid pool's GPU count: "integer", "continuous" (stage 1), or integer within a range per pool (stage 2)."""
HALF = 0.5 + 1e-9


@dataclass
class SharedColumns:
    """The shared columns of a model, by pool."""

    by_pool: dict[Pool, list[int]] = field(default_factory=lambda: defaultdict(list))
    x: dict[tuple[int, int], int] = field(default_factory=dict)
    """(option, bin) -> x_ob, exact pools."""
    bins: dict[Pool, list[int]] = field(default_factory=dict)
    """pool -> u_b per bin, exact pools."""
    q: dict[int, int] = field(default_factory=dict)
    """option -> q_o, fluid pools."""
    s: dict[Pool, int] = field(default_factory=dict)
    """pool -> s_pool, fluid pools."""


def _pool_name(kind: str, pool: Pool, *rest: object) -> str:
    return lp_name(kind, pool[0], f"k{pool[1]}", *rest)


def shared_columns(
    model: Model,
    problem: Problem,
    option_set: OptionSet,
    columns: list[int],
    terms: Terms,
    limited: set[str],
    exact: set[Pool],
    pool_counts: PoolCounts,
    *,
    cost_scale: float = 1.0,
    moves: MoveCosts | None = None,
) -> SharedColumns:
    """Columns of every pool with a demanded slot: bins where `exact` names the pool, else a fluid count."""
    options = option_set.options
    fams = problem.families
    out = SharedColumns()
    for i in columns:
        if options[i].shared and options[i].key in terms.cover:
            out.by_pool[options[i].pool].append(i)
    for pool, idxs in out.by_pool.items():
        fid = pool[0]
        fam = fams[fid]
        bin_cost = gpu_price(problem, fid) * cost_scale
        nkeys = len({options[i].key for i in idxs})
        top = nkeys if fid not in limited or fam.available is None else min(nkeys, fam.available)

        def move(i: int) -> float:
            return moves.shared(options[i].key) if moves else 0.0

        if pool in exact:
            out.bins[pool] = [model.var(_pool_name("u", pool, f"b{k}"), bin_cost, 0.0, 1.0, True) for k in range(top)]
            for i in idxs:
                for k in range(top):
                    v = model.var(lp_name("x", f"o{i}", f"b{k}"), move(i), 0.0, 1.0, True, options[i].workload)
                    out.x[(i, k)] = v
                    terms.cover[options[i].key][v] = 1.0
            terms.usage[fid].extend((v, 1.0) for v in out.bins[pool])
            continue
        if isinstance(pool_counts, str):
            low, high, integer = 0.0, float(top), pool_counts == "integer"
        else:
            lo, hi = pool_counts.get(pool, (0, 0))
            low, high, integer = float(min(lo, top)), float(min(hi, top)), True
        out.s[pool] = model.var(_pool_name("s", pool), bin_cost, low, high, integer)
        terms.usage[fid].append((out.s[pool], 1.0))
        for i in idxs:
            out.q[i] = model.var(lp_name("q", f"o{i}"), move(i), 0.0, 1.0, True, options[i].workload)
            terms.cover[options[i].key][out.q[i]] = 1.0
    return out


def packing_rows(model: Model, problem: Problem, option_set: OptionSet, shared: SharedColumns) -> None:
    """(pack) rows of every pool: bin capacities for exact pools, the fluid count's rows for the others."""
    for pool, idxs in shared.by_pool.items():
        if pool in shared.bins:
            _exact_rows(model, problem, option_set, shared, pool, idxs)
        else:
            _fluid_rows(model, problem, option_set, shared, pool, idxs)


def _exact_rows(
    model: Model, problem: Problem, option_set: OptionSet, shared: SharedColumns, pool: Pool, idxs: list[int]
) -> None:
    """Each slot on at most one bin; a bin's time and memory within one GPU's; bins opened in order (symmetry)."""
    options = option_set.options
    util = problem.options.share_max_utilization
    mem_cap = problem.families[pool[0]].memory_gib - problem.options.memory_reserve_gib
    bins = shared.bins[pool]
    x = shared.x
    for i in idxs:
        model.row(lp_name("one_bin", f"o{i}"), [(x[(i, k)], 1.0) for k in range(len(bins))], -np.inf, 1.0)
    for k, u in enumerate(bins):
        time_terms = [(x[(i, k)], options[i].fraction) for i in idxs]
        model.row(_pool_name("time", pool, f"b{k}"), [*time_terms, (u, -util)], -np.inf, 0.0)
        mem_terms = [(x[(i, k)], options[i].memory_gib or 0.0) for i in idxs]
        model.row(_pool_name("mem", pool, f"b{k}"), [*mem_terms, (u, -mem_cap)], -np.inf, 0.0)
        if k:
            model.row(_pool_name("order", pool, f"b{k}"), [(u, 1.0), (bins[k - 1], -1.0)], -np.inf, 0.0)


def _fluid_rows(
    model: Model, problem: Problem, option_set: OptionSet, shared: SharedColumns, pool: Pool, idxs: list[int]
) -> None:
    """Slot sizes within s_pool; q_o <= s_pool (a used pool costs a whole GPU: tightens the LP bound); and two
    tenants that each need more than half a GPU's time (or memory) never share one (valid for any packing, and
    it keeps the fluid count from under-counting what first-fit will need)."""
    options = option_set.options
    opts = problem.options
    fam = problem.families[pool[0]]
    util, mem_cap = opts.share_max_utilization, fam.memory_gib - opts.memory_reserve_gib
    q, s = shared.q, shared.s[pool]
    sizes = [(q[i], slot_size(options[i], fam, util, opts.memory_reserve_gib)) for i in idxs]
    model.row(_pool_name("fluid", pool), [*sizes, (s, -1.0)], -np.inf, 0.0)
    for i in idxs:
        model.row(lp_name("open", f"o{i}"), [(q[i], 1.0), (s, -1.0)], -np.inf, 0.0)
    big_time = [i for i in idxs if options[i].fraction / util > HALF]
    big_mem = [i for i in idxs if (options[i].memory_gib or 0.0) / mem_cap > HALF]
    for name, big in (("big_time", big_time), ("big_mem", big_mem)):
        if len(big) > 1:
            model.row(_pool_name(name, pool), [*((q[i], 1.0) for i in big), (s, -1.0)], -np.inf, 0.0)
