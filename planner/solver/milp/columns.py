"""The MILP's columns: which options get one (exact dominance), choices z_k, dedicated patterns y_p or replica
counts n_o, and the terms they add to the cover and availability rows."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from planner.solver.milp.model import Model, lp_name
from planner.solver.milp.moves import MoveCosts, pattern_cost
from planner.solver.milp.patterns import COVER_TOLERANCE, Item, Pattern, memo_patterns
from planner.solver.milp.result import Pool
from planner.solver.options import ChoiceKey, GroupKey, Option, OptionSet
from planner.solver.problem import FleetFamily, Problem


def slot_size(option: Option, family: FleetFamily, util: float, reserve: float) -> float:
    """A shared slot's share of one GPU in the fluid packing: the larger of its time and memory shares."""
    return max(option.fraction / util, (option.memory_gib or 0.0) / (family.memory_gib - reserve))


def group_name(kind: str, gk: GroupKey, *rest: object) -> str:
    """`kind(w<workload>,<model>,<stage.stage>,...)`: a column or row of one group."""
    return lp_name(kind, f"w{gk[0]}", gk[1], ".".join(gk[2]), *rest)


@dataclass
class Terms:
    """Rows under construction: each demanded group's cover terms and each family's GPU-use terms."""

    cover: dict[GroupKey, dict[int, float]]
    usage: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))


def choice_columns(
    model: Model, option_set: OptionSet, *, coverage: bool, moves: MoveCosts | None
) -> tuple[dict[ChoiceKey, int], dict[ChoiceKey, int], Terms]:
    """z_k per (workload, model, topology) (and the coverage v_k); the cover rows start with -z_k (or -v_k)."""
    choice_var: dict[ChoiceKey, int] = {}
    cover_var: dict[ChoiceKey, int] = {}
    demand: dict[GroupKey, list[int]] = defaultdict(list)
    for wi, chs in option_set.choices.items():
        for k, (model_id, topo) in enumerate(chs):
            ck: ChoiceKey = (wi, model_id, topo)
            choice_var[ck] = model.var(
                lp_name("z", f"w{wi}", k), moves.choice(ck) if moves else 0.0, 0.0, 1.0, True, wi
            )
            if coverage:
                cover_var[ck] = model.var(lp_name("v", f"w{wi}", k), -1.0, 0.0, 1.0, False, wi)
            for g in topo:
                demand[(wi, model_id, g)].append(cover_var[ck] if coverage else choice_var[ck])
    return choice_var, cover_var, Terms({gk: dict.fromkeys(zs, -1.0) for gk, zs in demand.items()})


def select_columns(
    problem: Problem, option_set: OptionSet, limited: set[str] | None = None
) -> tuple[list[int], set[Pool]]:
    """Option indices worth a MILP column (planner.solver.milp, "Columns left out") and the pools packed exactly."""
    opts = problem.options
    fams = problem.families
    if limited is None:
        limited = {f for f, fam in fams.items() if fam.available is not None}
    options = option_set.options
    shared_count: dict[Pool, int] = defaultdict(int)
    for o in options:
        if o.shared:
            shared_count[o.pool] += 1
    exact = set(shared_count) if sum(shared_count.values()) <= opts.exact_packing_max_items else set()
    keep: list[int] = []
    for idxs in option_set.by_group.values():
        keep.extend(_undominated_dedicated(options, idxs, limited))
        shared = [i for i in idxs if options[i].shared]
        keep.extend(i for i in shared if options[i].pool in exact)
        keep.extend(
            _undominated_fluid_slots(problem, options, [i for i in shared if options[i].pool not in exact], limited)
        )
    return sorted(keep), exact


def _undominated_dedicated(options: list[Option], idxs: list[int], limited: set[str]) -> list[int]:
    """A group's dedicated options less those another option on an unlimited family beats on price and credit."""
    dedicated = [i for i in idxs if not options[i].shared]
    keep = []
    for i in dedicated:
        o = options[i]
        dominated = not o.running and any(
            j != i
            and options[j].family not in limited
            and options[j].cost_per_hour <= o.cost_per_hour
            and options[j].credit >= o.credit
            and (options[j].cost_per_hour < o.cost_per_hour or options[j].credit > o.credit or j < i)
            for j in dedicated
        )
        if not dominated:
            keep.append(i)
    return keep


def _undominated_fluid_slots(
    problem: Problem, options: list[Option], shared: list[int], limited: set[str]
) -> list[int]:
    """A group's fluid slots: the smallest per pool, less those a slot of the same class on an unlimited family
    prices (price x size) no higher."""
    opts = problem.options
    fams = problem.families
    smallest: dict[Pool, tuple[float, int]] = {}
    for i in shared:
        o = options[i]
        size = slot_size(o, fams[o.family], opts.share_max_utilization, opts.memory_reserve_gib)
        if o.pool not in smallest or size < smallest[o.pool][0]:
            smallest[o.pool] = (size, i)
    priced = {p: (fams[p[0]].price_per_hour * s, i) for p, (s, i) in smallest.items()}
    keep = []
    for p, (cost, i) in priced.items():
        dominated = any(
            g != p and g[1] == p[1] and g[0] not in limited and (c < cost or (c == cost and j < i))
            for g, (c, j) in priced.items()
        )
        if not dominated:
            keep.append(i)
    return keep


def dedicated_columns(
    model: Model,
    problem: Problem,
    option_set: OptionSet,
    in_model: set[int],
    limited: set[str],
    terms: Terms,
    *,
    coverage: bool = False,
    cost_scale: float = 1.0,
    moves: MoveCosts | None = None,
) -> tuple[dict[int, Pattern], dict[int, int]]:
    """Dedicated columns of every demanded group (`terms.cover`'s keys): its cover patterns y_p where they can be
    listed, integer replica columns n_o elsewhere; adds their terms to the cover and usage rows."""
    fams = problem.families
    options = option_set.options
    pattern_var: dict[int, Pattern] = {}
    opt_var: dict[int, int] = {}
    for gk, cover in terms.cover.items():
        lam = problem.workloads[gk[0]].rate
        items = []
        for i in option_set.by_group.get(gk, []):
            o = options[i]
            if i not in in_model or o.shared:
                continue
            avail = fams[o.family].available if o.family in limited else None
            bound = math.ceil(lam / o.credit - COVER_TOLERANCE)
            items.append(Item(i, o.credit, o.cost_per_hour, o.family, bound if avail is None else min(bound, avail)))
        moved = pattern_cost(moves, gk)
        patterns = None if coverage or not items else memo_patterns(problem, option_set, gk, items, limited, moved)
        if patterns is not None:
            for k, p in enumerate(patterns):
                cost = (p.cost + (moved(p) if moved else 0.0)) * cost_scale
                v = model.var(group_name("y", gk, f"p{k}"), cost, 0.0, 1.0, True, gk[0])
                pattern_var[v] = p
                cover[v] = 1.0
                for fid, n in p.usage:
                    terms.usage[fid].append((v, float(n)))
            continue
        for it in items:
            o = options[it.index]
            v = model.var(
                lp_name("n", f"o{it.index}"), o.cost_per_hour * cost_scale, 0.0, float(max(it.bound, 0)), True, gk[0]
            )
            opt_var[it.index] = v
            cover[v] = min(1.0, o.credit / lam)
            terms.usage[o.family].append((v, 1.0))
    return pattern_var, opt_var
