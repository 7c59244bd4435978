r"""The plan as a mixed-integer linear program, solved with scipy.optimize.milp (HiGHS).

Sets
    W                 workloads; lambda_w its rate (images/s)
    K(w)              its choices k = (model, topology) that have options for every group
    G                 group keys (w, model, group); G(k) the groups of choice k
    D(G), S(G)        dedicated and shared-mode options of group key G (planner.solver.options)
    P(G)              cover patterns of G: integer replica counts n_p,o >= 0 over D(G) with
                      sum_o credit_o n_p,o >= lambda_w (see "Patterns" below)
    F                 fleet families; A_f availability (None = unlimited), M_f memory less the reserve
Parameters
    credit_o          credited images/s of one dedicated replica (headroom, uncertainty, latency applied)
    price_o           $/replica-hour (family price + energy where the fleet sets $/kWh)
    cost_p = sum_o price_o n_p,o ;  use_p,f = sum_{o of family f} n_p,o
    phi_o, mem_o      share of a GPU's time and GiB that a shared-mode option needs
Variables
    z_k  in {0,1}     workload w gets choice k
    y_p  in {0,1}     group G is served by dedicated pattern p
    n_o  in Z+        dedicated replicas of option o, for a group whose patterns were too many to list
    shared GPUs are pooled by (family f, service-time class) so co-tenants' batches take similar times;
    shared, exact (problems with at most `exact_packing_max_items` shared candidates in all):
      x_ob in {0,1}   option o placed on shared GPU b of its pool; u_b in {0,1} GPU b is used
    shared, fluid (problems with more):
      q_o in {0,1}    group served by shared-mode option o;  s_pool in Z+ shared GPUs of the pool
Constraints
    (assign)    sum_{k in K(w)} z_k = 1                                             for every w
    (cover)     sum_{p in P(G)} y_p + sum_{o in S(G)} (q_o or sum_b x_ob) - sum_{k : G in G(k)} z_k >= 0
                (a group under a p95 objective has its pure patterns, c* replicas of one option, and the
                mixed covers whose pool p95 meets the group's budget: an objective that cannot bind leaves
                the patterns as they are without it; `group_patterns`)
                (a group without patterns: sum_o min(1, credit_o / lambda_w) n_o in place of sum_p y_p)
    (avail)     sum_p use_p,f y_p + sum_o n_o + (s_f or sum_b u_fb) <= A_f          for f with a limit
    (pack, exact)  sum_b x_ob <= 1;  sum_o phi_o x_ob <= U u_fb;  sum_o mem_o x_ob <= M_f u_fb;
                   u_fb <= u_f(b-1)  (symmetry)
    (pack, fluid)  sum_{o in pool} size_o q_o <= s_pool,   size_o = max(phi_o / U, mem_o / M_f);
                   q_o <= s_pool  (valid: an open pool has a whole GPU; it tightens the LP bound);
                   sum_{o: phi_o / U > 1/2} q_o <= s_pool, and the same for memory (valid: two such
                   tenants never share a GPU; keeps the fluid count from under-counting first-fit)
Objective
    minimise  sum_p cost_p y_p + sum_o price_o n_o + sum_f price_f (s_f or sum_b u_fb)     [$ / hour]

Patterns. A group's replicas only interact with other groups through availability, so its integer covers can
be listed up front: for every vector of replicas on limited families (bounded by availability and by what
covers the rate alone), the cheapest completion on unlimited families (a tiny knapsack solved by branch and
bound), keeping the Pareto set of (cost, use of each limited family). Any cover is matched by a pattern that
costs no more and uses no more of any limited family, so the patterns are exact; and since each is an integer
cover, the LP relaxation no longer rounds replicas fractionally, which is what made branch and bound slow.
A group with more than `PATTERN_LIMIT` vectors of limited-family replicas to list keeps integer n_o columns.

Packing. The exact model is bin packing; the tests compare it with brute force. The fluid model charges each
shared slot the larger of its time and memory share of a GPU: a restriction of two-dimensional packing that
ignores complementary tenants, near-exact for the small slots sharing is for; `planner.solver.engine` packs
its result first-fit-decreasing and reports any GPU it had to add. Rounding each fluid pool up to whole GPUs
is what makes a large exact MILP slow (branch and bound must prove that no choice of tenants fills the pools
better), so large problems are solved in two stages (`solve_with_availability`): stage 1 with continuous
pool counts s_pool (plus q_o <= s_pool, so an opened pool still costs a whole GPU) gives a plan and a lower
bound on the fluid model's cost; stage 2 keeps each pool's GPUs between stage 1's count rounded down and up
and re-solves (time-limited), so it can fill the room a round-up leaves or move tenants out to round down.
Stage 1 itself solves the LP relaxation first (with pattern covers it is nearly integral: 16 fractional
columns of 28,000 at 1,000 workloads), fixes every workload whose columns came out integral, and solves the
MILP of the rest; the LP value is stage 1's bound. That bound is the fluid model's, not the problem's
(the fluid size undercounts complementary tenants, and first-fit can then beat it), so the plan's reported gap
is against `relaxation_bound`: a relaxed packing every plan from the options satisfies.

Columns left out before the solve (exact dominance): a dedicated option when another option of the same group
on a family without an availability limit costs no more per replica and credits no less; in fluid families,
all but the smallest slot of a (group, family), and a slot when a no-more-expensive slot (price x size) of
the same group exists on a family without a limit.

Coverage mode (for an infeasible fleet): integer n_o columns everywhere, z_k bounds a continuous coverage
v_k in [0, 1] that replaces z_k in (cover), (assign) becomes sum_k z_k <= 1, and the objective maximises
sum_k v_k - epsilon x cost: how much of each workload's rate the fleet can carry.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from planner.solver.latency import queue_wait_p95_s
from planner.solver.options import ChoiceKey, GroupKey, Option, OptionSet, Topology
from planner.solver.problem import FleetFamily, Problem
from planner.solver.replan import ReplicaKey, RunningPlan, group_moves

CostMap = dict[str, float]
"""family id -> $/GPU-hour."""
ReplicaMap = dict[int, int]
"""option index -> dedicated replicas."""
UsageMap = dict[str, int]
"""family id -> GPUs used."""
Pool = tuple[str, int]
"""a shared-GPU pool: (family id, service-time class)."""
SharedBins = list[tuple[str, list[int]]]
"""shared GPUs: (family id, option indices placed on it)."""
ChoiceMap = dict[int, tuple[str, Topology]]
"""workload index -> (model, topology) chosen."""

STATUS = {0: "optimal", 1: "limit reached", 2: "infeasible", 3: "unbounded", 4: "error"}
ROUNDING_MIN_TIME_S = 1.0
ROUNDING_TIME_FACTOR = 1.0
"""Stage 2 (rounding fluid pools) gets max(1 s, stage 1's time); past it, the best rounding found is kept."""
PATTERN_LIMIT = 256
BOUND_INTEGRAL_MAX_VARS = 20_000
"""The lower bound's MILP keeps its integer columns up to this size (HiGHS's dual bound); above, its LP."""
COVER_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Pattern:
    """An integer cover of one group's rate by dedicated replicas."""

    cost: float
    replicas: tuple[tuple[int, int], ...]
    usage: tuple[tuple[str, int], ...]


@dataclass
class MilpResult:
    """What the MILP decided, plus solver statistics."""

    status: str
    feasible: bool
    objective: float = math.nan
    replicas: ReplicaMap = field(default_factory=dict)
    shared_bins: SharedBins = field(default_factory=list)
    shared_fluid: dict[Pool, tuple[int, list[int]]] = field(default_factory=dict)
    choices: ChoiceMap = field(default_factory=dict)
    coverage: dict[int, float] = field(default_factory=dict)
    mip_gap: float = math.nan
    dual_bound: float = math.nan
    lower_bound: float = math.nan
    fluid_pools: dict[Pool, float] = field(default_factory=dict)
    stages: int = 1
    solve_s: float = 0.0
    variables: int = 0
    constraints: int = 0
    integers: int = 0


def _size(option: Option, family: FleetFamily, util: float, reserve: float) -> float:
    """A shared slot's share of one GPU: the larger of its time and memory shares."""
    return max(option.fraction / util, (option.memory_gib or 0.0) / (family.memory_gib - reserve))


def select_columns(
    problem: Problem, option_set: OptionSet, limited: set[str] | None = None
) -> tuple[list[int], set[Pool]]:
    """Option indices worth a MILP column (module docstring) and the shared pools packed exactly."""
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
        dedicated = [i for i in idxs if not options[i].shared]
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
        shared = [i for i in idxs if options[i].shared]
        keep.extend(i for i in shared if options[i].pool in exact)
        smallest: dict[Pool, tuple[float, int]] = {}
        for i in shared:
            o = options[i]
            if o.pool in exact:
                continue
            size = _size(o, fams[o.family], opts.share_max_utilization, opts.memory_reserve_gib)
            if o.pool not in smallest or size < smallest[o.pool][0]:
                smallest[o.pool] = (size, i)
        priced = {p: (fams[p[0]].price_per_hour * s, i) for p, (s, i) in smallest.items()}
        for p, (cost, i) in priced.items():
            dominated = any(
                g != p and g[1] == p[1] and g[0] not in limited and (c < cost or (c == cost and j < i))
                for g, (c, j) in priced.items()
            )
            if not dominated:
                keep.append(i)
    return sorted(keep), exact


# ---- cover patterns ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    index: int
    credit: float
    cost: float
    family: str
    bound: int


class _Completion:
    """Cheapest replicas of the unlimited items covering a residual rate (exact branch and bound)."""

    def __init__(self, items: Sequence[_Item]) -> None:
        self.items = sorted(items, key=lambda it: it.cost / it.credit)
        ratios = [it.cost / it.credit for it in self.items]
        self.suffix = [min(ratios[k:]) for k in range(len(ratios))] + [math.inf]
        self.memo: dict[float, tuple[float, tuple[int, ...]]] = {}

    def __call__(self, need: float) -> tuple[float, tuple[int, ...]]:
        if need <= 0:
            return 0.0, tuple(0 for _ in self.items)
        key = round(need, 9)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        items, suffix = self.items, self.suffix
        best_cost = math.inf
        best: tuple[int, ...] = ()
        counts = [0] * len(items)
        tol = need * COVER_TOLERANCE

        def dfs(pos: int, left: float, spent: float) -> None:
            nonlocal best_cost, best
            if left <= tol:
                if spent < best_cost - 1e-12:
                    best_cost, best = spent, tuple(counts)
                return
            if pos == len(items) or spent + left * suffix[pos] >= best_cost - 1e-12:
                return
            item = items[pos]
            for n in range(math.ceil(left / item.credit - COVER_TOLERANCE), -1, -1):
                counts[pos] = n
                dfs(pos + 1, left - n * item.credit, spent + n * item.cost)
            counts[pos] = 0

        dfs(0, need, 0.0)
        self.memo[key] = (best_cost, best)
        return best_cost, best


def _pure_pattern(rate: float, item: _Item, limited: set[str]) -> Pattern | None:
    """Enough replicas of one option alone to cover the rate (None if availability does not allow it)."""
    n = math.ceil(rate / item.credit - COVER_TOLERANCE)
    if n > item.bound:
        return None
    usage = ((item.family, n),) if item.family in limited else ()
    return Pattern(n * item.cost, ((item.index, n),), usage)


def cover_patterns(
    rate: float, items: Sequence[_Item], limited: set[str], limit: int = PATTERN_LIMIT
) -> list[Pattern] | None:
    """The Pareto set of integer covers (module docstring); None when there would be more than `limit`."""
    free = [it for it in items if it.family not in limited]
    capped = [it for it in items if it.family in limited]
    tops = [min(it.bound, max(0, math.ceil(rate / it.credit - COVER_TOLERANCE))) for it in capped]
    if math.prod(t + 1 for t in tops) > limit:
        return None
    complete = _Completion(free)
    found: list[tuple[float, tuple[tuple[int, int], ...], tuple[tuple[str, int], ...]]] = []
    counts = [0] * len(capped)

    def dfs(pos: int, covered: float, spent: float) -> None:
        if pos == len(capped) or covered >= rate * (1 - COVER_TOLERANCE):
            cost_free, free_counts = complete(rate - covered)
            if not math.isfinite(cost_free):
                return
            replicas = [(it.index, n) for it, n in zip(capped, counts, strict=False) if n]
            replicas += [(it.index, n) for it, n in zip(complete.items, free_counts, strict=True) if n]
            usage: dict[str, int] = defaultdict(int)
            for it, n in zip(capped, counts, strict=False):
                if n:
                    usage[it.family] += n
            found.append((spent + cost_free, tuple(sorted(replicas)), tuple(sorted(usage.items()))))
            return
        item = capped[pos]
        for n in range(tops[pos] + 1):
            counts[pos] = n
            dfs(pos + 1, covered + n * item.credit, spent + n * item.cost)
            if covered + n * item.credit >= rate * (1 - COVER_TOLERANCE):
                break
        counts[pos] = 0

    dfs(0, 0.0, 0.0)
    return _pareto_patterns([Pattern(cost, replicas, usage) for cost, replicas, usage in found])


def _pareto_patterns(found: list[Pattern], moved: Callable[[Pattern], float] | None = None) -> list[Pattern]:
    """Keep a cover only if no kept one is as cheap, uses no more of every limited family and (re-planning,
    `moved`: its move cost) moves no more."""
    move = {id(p): moved(p) for p in found} if moved is not None else {}
    found.sort(key=lambda p: (p.cost, sum(n for _, n in p.usage), move.get(id(p), 0.0)))
    kept: list[Pattern] = []
    for p in found:
        use = dict(p.usage)
        if any(
            q.cost <= p.cost + 1e-12
            and all(n <= use.get(f, 0) for f, n in q.usage)
            and move.get(id(q), 0.0) <= move.get(id(p), 0.0) + 1e-12
            for q in kept
        ):
            continue
        kept.append(p)
    return kept


# ---- the model --------------------------------------------------------------------------------------


class _Builder:
    """Collects columns and sparse rows."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[int] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.row_lb: list[float] = []
        self.row_ub: list[float] = []
        self.owner: list[int] = []

    def var(self, cost: float, lb: float, ub: float, integer: bool, owner: int = -1) -> int:
        """A column; `owner` is the workload whose decision it is (-1: shared by all, e.g. a pool's GPUs)."""
        self.cost.append(cost)
        self.lower.append(lb)
        self.upper.append(ub)
        self.integer.append(1 if integer else 0)
        self.owner.append(owner)
        return len(self.cost) - 1

    def row(self, coefs: Mapping[int, float] | list[tuple[int, float]], lb: float, ub: float) -> None:
        r = len(self.row_lb)
        items = coefs.items() if isinstance(coefs, Mapping) else coefs
        for c, v in items:
            if v != 0:
                self.rows.append(r)
                self.cols.append(c)
                self.vals.append(v)
        self.row_lb.append(lb)
        self.row_ub.append(ub)


def usage(problem: Problem, option_set: OptionSet, result: MilpResult) -> UsageMap:
    """GPUs of each family a MILP result uses: dedicated replicas plus shared GPUs."""
    used: UsageMap = defaultdict(int)
    for i, n in result.replicas.items():
        used[option_set.options[i].family] += n
    for fid, _ in result.shared_bins:
        used[fid] += 1
    for (fid, _), (count, _) in result.shared_fluid.items():
        used[fid] += count
    return dict(used)


def _two_stage(problem: Problem, option_set: OptionSet, limited: set[str]) -> MilpResult:
    """Fluid pools: stage 1 with continuous pool GPU counts (a relaxation: its dual bound is a lower bound of
    the fluid model's cost), stage 2 rounds each pool to whole GPUs (`_round_pools`). Without fluid pools,
    one exact solve."""
    first = solve_milp(problem, option_set, limited=limited, pool_counts="continuous")
    if not first.feasible or not first.fluid_pools:
        return first
    started = time.perf_counter()
    _round_pools(problem, option_set, first)
    first.solve_s += time.perf_counter() - started
    first.stages = 2
    return first


def _round_pools(problem: Problem, option_set: OptionSet, result: MilpResult) -> None:
    """Stage 2: round every fluid pool to whole GPUs, greedily, in place.

    Pools go from the smallest fractional part up. A pool is rounded down when moving enough tenants out
    costs less than the GPU saved: to room that rounding up left in another pool where the group has a slot
    (free), else to the group's cheapest pure dedicated cover (cheapest per unit of GPU share first).
    Otherwise it is rounded up, and its room is filled with dedicated groups that have a slot there, largest
    saving first. Availability holds throughout: a dedicated cover is taken only where it fits with every
    GPU already placed (pools not yet rounded counted rounded up), and a pool whose round-up would not fit
    its family's availability is rounded down whatever the moves cost."""
    opts = problem.options
    fams = problem.families
    options = option_set.options
    util, reserve = opts.share_max_utilization, opts.memory_reserve_gib
    chosen = {(wi, m, g) for wi, (m, topo) in result.choices.items() for g in topo}

    def size_in(i: int) -> float:
        return _size(options[i], fams[options[i].family], util, reserve)

    # GPUs in use while pools are rounded: dedicated replicas and exact bins, pools already rounded at their
    # whole count, pools still to round at their count rounded up (they may yet round up).
    pool_gpus: dict[Pool, int] = {
        pool: math.ceil(sum(size_in(i) for i in tenants) - 1e-9) for pool, (_, tenants) in result.shared_fluid.items()
    }

    def in_use(without: Pool | None = None) -> dict[str, int]:
        use: dict[str, int] = defaultdict(int)
        for i, n in result.replicas.items():
            use[options[i].family] += n
        for fid, _ in result.shared_bins:
            use[fid] += 1
        for pool, n in pool_gpus.items():
            if pool != without:
                use[pool[0]] += n
        return use

    def fits(use: Mapping[str, int], fid: str, n: int) -> bool:
        avail = fams[fid].available
        return avail is None or use.get(fid, 0) + n <= avail

    def dedicated_cover(key: GroupKey, use: Mapping[str, int]) -> tuple[float, list[tuple[int, int]]] | None:
        """The group's cheapest pure dedicated cover that fits every family's availability given `use`."""
        lam = problem.workloads[key[0]].rate
        best: tuple[float, list[tuple[int, int]]] | None = None
        for i in option_set.by_group.get(key, []):
            o = options[i]
            if o.shared or o.credit <= 0:
                continue
            n = math.ceil(lam / o.credit - COVER_TOLERANCE)
            if not fits(use, o.family, n):
                continue
            if best is None or n * o.cost_per_hour < best[0]:
                best = (n * o.cost_per_hour, [(i, n)])
        return best

    def price(pool: Pool) -> float:
        fam = fams[pool[0]]
        return fam.price_per_hour + fam.energy_cost_per_hour(None)

    room: dict[Pool, float] = {}
    for pool, (_, tenants) in result.shared_fluid.items():
        total = sum(size_in(i) for i in tenants)
        room[pool] = math.ceil(total - 1e-9) - total
    for pool, _count in sorted(result.fluid_pools.items(), key=lambda kv: kv[1] - math.floor(kv[1])):
        _, tenants = result.shared_fluid[pool]
        sizes = {i: size_in(i) for i in tenants}
        total = sum(sizes.values())
        target = math.floor(total + 1e-9)
        if total - target <= 1e-9:
            result.shared_fluid[pool] = (max(target, 1), tenants)
            pool_gpus[pool] = max(target, 1)
            room[pool] = 0.0
            continue
        high = math.ceil(total - 1e-9)
        # GPUs in use by everything else, with this pool at `target` (what rounding down leaves it).
        use = in_use(without=pool)
        use[pool[0]] += target
        # Rounding up must fit the pool family's availability; where it does not, round down at any cost.
        must_round_down = not fits(use, pool[0], high - target)
        # Try rounding down: move tenants to room left in other pools (free), else to their cheapest
        # dedicated cover that fits availability, cheapest per unit of GPU share first, until the rest fits
        # `target` GPUs.
        moved: list[tuple[int, int | None, tuple[float, list[tuple[int, int]]] | None]] = []
        freed, extra = 0.0, 0.0
        taken: dict[Pool, float] = defaultdict(float)
        by_cost: list[tuple[float, int]] = []
        for i in sorted(tenants, key=lambda i: -sizes[i]):
            if total - freed <= target + 1e-9:
                break
            slot = next(
                (
                    j
                    for j in option_set.by_group.get(options[i].key, [])
                    if options[j].shared
                    and options[j].pool != pool
                    and options[j].pool in room
                    and size_in(j) <= room[options[j].pool] - taken[options[j].pool] + 1e-9
                ),
                None,
            )
            if slot is not None:
                taken[options[slot].pool] += size_in(slot)
                moved.append((i, slot, None))
                freed += sizes[i]
                continue
            cover = dedicated_cover(options[i].key, use)
            if cover is not None:
                by_cost.append((cover[0] / sizes[i], i))
        for _, i in sorted(by_cost):
            if total - freed <= target + 1e-9:
                break
            cover = dedicated_cover(options[i].key, use)  # again: covers taken before may use the room
            if cover is None:
                continue
            for j, n in cover[1]:
                use[options[j].family] += n
            moved.append((i, None, cover))
            freed += sizes[i]
            extra += cover[0]
        closes = target >= 1 or freed >= total - 1e-9
        if total - freed <= target + 1e-9 and closes and (must_round_down or extra < price(pool) - 1e-9):
            gone = {i for i, _, _ in moved}
            for _, slot, cover in moved:
                if slot is not None:
                    other = options[slot].pool
                    _, others = result.shared_fluid[other]
                    others.append(slot)
                    room[other] -= size_in(slot)
                elif cover is not None:
                    for j, n in cover[1]:
                        result.replicas[j] = result.replicas.get(j, 0) + n
            kept = [i for i in tenants if i not in gone]
            if kept:
                result.shared_fluid[pool] = (max(target, 1), kept)
                pool_gpus[pool] = max(target, 1)
                room[pool] = max(target, 1) - (total - freed)
            else:
                del result.shared_fluid[pool]
                del pool_gpus[pool]
                room.pop(pool, None)
            continue
        result.shared_fluid[pool] = (high, tenants)
        pool_gpus[pool] = high
        # Fill the room: dedicated groups with a slot in this pool, largest saving per unit of room first.
        left = high - total
        in_pool = {options[i].key for i in tenants}
        fills: list[tuple[float, int, list[int]]] = []
        dedicated_by_key: dict[GroupKey, list[int]] = defaultdict(list)
        for j in result.replicas:
            dedicated_by_key[options[j].key].append(j)
        for key, held in dedicated_by_key.items():
            if key not in chosen or key in in_pool:
                continue
            slots = [i for i in option_set.by_group.get(key, []) if options[i].shared and options[i].pool == pool]
            if not slots:
                continue
            slot = min(slots, key=lambda i: _size(options[i], fams[pool[0]], util, reserve))
            saving = sum(options[j].cost_per_hour * result.replicas[j] for j in held)
            size = _size(options[slot], fams[pool[0]], util, reserve)
            fills.append((-saving / size, slot, held))
        fills.sort()
        for _, slot, held in fills:
            size = _size(options[slot], fams[pool[0]], util, reserve)
            if size > left + 1e-9:
                continue
            left -= size
            tenants.append(slot)
            for j in held:
                result.replicas.pop(j)
        room[pool] = left
    result.objective = _objective(problem, options, result)


def _objective(problem: Problem, options: Sequence[Option], result: MilpResult) -> float:
    """$/hour of a result: dedicated replicas plus shared GPUs (exact bins and fluid pools)."""
    fams = problem.families
    options_cost = sum(options[i].cost_per_hour * n for i, n in result.replicas.items())

    def gpu(fid: str) -> float:
        return fams[fid].price_per_hour + fams[fid].energy_cost_per_hour(None)

    return float(
        options_cost
        + sum(gpu(f) for f, _ in result.shared_bins)
        + sum(gpu(f) * n for (f, _), (n, _) in result.shared_fluid.items())
    )


def solve_with_availability(problem: Problem, option_set: OptionSet) -> MilpResult:
    """Solve with availability limits added lazily: first every family unlimited, then the limits the answer
    exceeds, until it respects all of them. Exact (a relaxation's optimum that is feasible is optimal) and
    fast when limits do not bind, which keeps the tight pattern columns for every group."""
    limited: set[str] = set()
    total = MilpResult(status="empty", feasible=False)
    while True:
        result = _two_stage(problem, option_set, limited)
        total.solve_s += result.solve_s
        if not result.feasible:
            result.solve_s = total.solve_s
            return result
        used = usage(problem, option_set, result)
        over = {
            f
            for f, n in used.items()
            if problem.families[f].available is not None and n > (problem.families[f].available or 0)
        }
        if not over or over <= limited:
            result.solve_s = total.solve_s
            return result
        limited |= over


@dataclass(frozen=True)
class MoveCosts:
    """$/hour each MILP column pays for the replicas it moves against the running plan (planner.solver.replan).

    A pattern of group G pays for its moves against G's running replicas; a shared slot, for removing them all;
    a choice (model, topology), for removing the running groups it does not serve. Groups listed by integer
    replica columns (too many covers to list) pay nothing: their moves are counted, not weighed."""

    problem: Problem
    option_set: OptionSet
    running: RunningPlan
    per_move: float
    groups: Mapping[tuple[str, tuple[str, ...]], Mapping[ReplicaKey, int]]
    """The running replicas by (workload name, stages)."""

    def _old(self, gk: GroupKey) -> Mapping[ReplicaKey, int]:
        name = self.problem.workloads[gk[0]].name
        if self.running.models.get(name, gk[1]) != gk[1]:
            return {}
        return self.groups.get((name, gk[2]), {})

    def pattern(self, gk: GroupKey, p: Pattern) -> float:
        """Moves of a pattern; a pure one counts as the running replicas' kind where one of its option's latency
        tie-break alternatives is that kind (the engine then keeps it: same replicas, same or lower price)."""
        name = self.problem.workloads[gk[0]].name
        options = self.option_set.options
        old = self._old(gk)
        new = {(name, gk[2], options[i].family, options[i].recipes, options[i].batch): n for i, n in p.replicas}
        if len(p.replicas) == 1 and old and not set(new) & set(old):
            n, o = p.replicas[0][1], options[p.replicas[0][0]]
            for a in o.alternatives.options() if o.alternatives is not None else ():
                key = (name, gk[2], a.family, a.recipes, a.batch)
                if key in old:
                    new = {key: n}
                    break
        return self.per_move * group_moves(old, new).total

    def shared(self, gk: GroupKey) -> float:
        return self.per_move * sum(self._old(gk).values())

    def choice(self, ck: ChoiceKey) -> float:
        wi, model_id, topo = ck
        name = self.problem.workloads[wi].name
        kept = set(topo) if self.running.models.get(name, model_id) == model_id else set()
        gone = sum(n for key, n in self.running.replicas.items() if key[0] == name and key[1] not in kept)
        return self.per_move * gone


def move_costs(problem: Problem, option_set: OptionSet) -> MoveCosts | None:
    """The move costs of a re-plan; None without a running plan or at a move cost of zero."""
    running = problem.options.running
    if running is None or problem.options.move_cost_per_hour <= 0:
        return None
    return MoveCosts(problem, option_set, running, problem.options.move_cost_per_hour, running.by_group())


def _dedicated_columns(
    b: _Builder,
    problem: Problem,
    option_set: OptionSet,
    in_model: set[int],
    limited: set[str],
    cover_rows: dict[GroupKey, dict[int, float]],
    usage_terms: dict[str, list[tuple[int, float]]],
    *,
    coverage: bool = False,
    cost_scale: float = 1.0,
    moves: MoveCosts | None = None,
) -> tuple[dict[int, Pattern], dict[int, int]]:
    """Dedicated columns of every demanded group (`cover_rows`' keys): its cover patterns where they can be
    listed, integer replica columns elsewhere; adds their terms to `cover_rows` and `usage_terms`."""
    fams = problem.families
    workloads = problem.workloads
    options = option_set.options
    pattern_var: dict[int, Pattern] = {}
    opt_var: dict[int, int] = {}
    for gk in cover_rows:
        lam = workloads[gk[0]].rate
        dedicated = [i for i in option_set.by_group.get(gk, []) if i in in_model and not options[i].shared]
        items = []
        for i in dedicated:
            o = options[i]
            avail = fams[o.family].available if o.family in limited else None
            bound = math.ceil(lam / o.credit - COVER_TOLERANCE)
            items.append(_Item(i, o.credit, o.cost_per_hour, o.family, bound if avail is None else min(bound, avail)))
        patterns = None if coverage or not items else _memo_patterns(problem, option_set, gk, items, limited, moves)
        if patterns is not None:
            for p in patterns:
                v = b.var((p.cost + (moves.pattern(gk, p) if moves else 0.0)) * cost_scale, 0.0, 1.0, True, gk[0])
                pattern_var[v] = p
                cover_rows[gk][v] = 1.0
                for fid, n in p.usage:
                    usage_terms[fid].append((v, float(n)))
            continue
        for it in items:
            v = b.var(options[it.index].cost_per_hour * cost_scale, 0.0, float(max(it.bound, 0)), True, gk[0])
            opt_var[it.index] = v
            cover_rows[gk][v] = min(1.0, options[it.index].credit / lam)
            usage_terms[options[it.index].family].append((v, 1.0))
    return pattern_var, opt_var


def mixed_pool_p95_s(rate: float, used: Sequence[tuple[Option, int]]) -> float:
    """p95 of a (possibly mixed) pool of dedicated replicas sharing one queue (planner.solver.latency).

    The queue wait is the pool's (all replicas, their mean batch time, the smallest batch for the arrival
    variability); a request then waits for its replica type's batch to form and for that type's service, so
    the pool's p95 is the worst type's formation + service on top of the shared wait."""
    servers = sum(n for _, n in used)
    capacity = sum(n * o.batch / (o.service_s * (1 + o.uncertainty)) for o, n in used)
    if capacity <= rate:
        return math.inf
    rho = rate / capacity
    mean_service = sum(n * o.service_s * (1 + o.uncertainty) for o, n in used) / servers
    b_min = min(o.batch for o, _ in used)
    wait = queue_wait_p95_s(
        np.array([float(servers)]),
        np.array([rho * servers]),
        np.array([mean_service]),
        np.array([float(b_min)]),
    )
    worst = max((o.batch - 1) / rate + o.service_p95_s * (1 + o.uncertainty) for o, _ in used)
    return float(wait[0]) + worst


def _memo_patterns(
    problem: Problem,
    option_set: OptionSet,
    gk: GroupKey,
    items: Sequence[_Item],
    limited: set[str],
    moves: MoveCosts | None,
) -> list[Pattern] | None:
    """`group_patterns`, remembered by everything it reads (rate, objective, budget, limited families, and per
    item its credit, price, family, bound and latency figures), with option indices stored as item positions:
    the two stages of a solve, the hold's re-solves and most what-ifs ask for the same groups again. Kept in
    the option set's memo (its builder's: one `solve`)."""
    if moves is not None:
        return group_patterns(problem, option_set, gk, items, limited, moves)
    w = problem.workloads[gk[0]]
    options = option_set.options
    memo = option_set.memo
    key = (
        "patterns",
        w.rate,
        w.p95_latency_s is None,
        option_set.budgets.get(gk),
        frozenset(limited),
        tuple(
            (it.credit, it.cost, it.family, it.bound, o.batch, o.service_s, o.uncertainty, o.service_p95_s)
            for it in items
            for o in (options[it.index],)
        ),
    )
    if key in memo:
        found = cast(list[Pattern] | None, memo[key])
        if found is None:
            return None
        return [replace(p, replicas=tuple((items[k].index, n) for k, n in p.replicas)) for p in found]
    patterns = group_patterns(problem, option_set, gk, items, limited, moves)
    position = {it.index: k for k, it in enumerate(items)}
    memo[key] = (
        None
        if patterns is None
        else [replace(p, replicas=tuple((position[i], n) for i, n in p.replicas)) for p in patterns]
    )
    return patterns


def group_patterns(
    problem: Problem,
    option_set: OptionSet,
    gk: GroupKey,
    items: Sequence[_Item],
    limited: set[str],
    moves: MoveCosts | None = None,
) -> list[Pattern] | None:
    """A group's cover patterns (module docstring); None where there are too many to list.

    Under a p95 objective: every pure pattern (c* replicas of one option, which the per-option latency check
    already holds to the group's budget) and every mixed cover whose pool meets that budget (`mixed_pool_p95_s`,
    the p95 the engine checks the plan with). An objective that cannot bind then leaves the patterns, and the
    plan, as they are without it; one that binds drops the mixes it breaks."""
    lam = problem.workloads[gk[0]].rate
    covers = cover_patterns(lam, items, limited)
    pure = [p for it in items if (p := _pure_pattern(lam, it, limited)) is not None]
    if moves is not None:  # a re-plan: keep the pure covers of the running kinds, whatever they cost
        covers = None if covers is None else _pareto_patterns([*covers, *pure], lambda p: moves.pattern(gk, p))
    if problem.workloads[gk[0]].p95_latency_s is None:
        return covers
    budget = option_set.budgets.get(gk)
    options = option_set.options
    mixed = [
        p
        for p in covers or ()
        if len(p.replicas) > 1
        and (budget is None or mixed_pool_p95_s(lam, [(options[i], n) for i, n in p.replicas]) <= budget * (1 + 1e-9))
    ]
    return _pareto_patterns([*pure, *mixed], (lambda p: moves.pattern(gk, p)) if moves is not None else None)


PRESOLVE_CHECK_MAX_COLUMNS = 2000
"""Models with at most this many columns are solved again without HiGHS's presolve (see `solve_milp`)."""


def solve_milp(
    problem: Problem,
    option_set: OptionSet,
    *,
    coverage: bool = False,
    limited: set[str] | None = None,
    pool_counts: str | Mapping[Pool, tuple[int, int]] = "integer",
    time_limit_s: float | None = None,
) -> MilpResult:
    """Build and solve the MILP of the module docstring; `coverage` solves the coverage variant instead.

    `limited`: the families whose availability is enforced (default: all that have a limit).
    `pool_counts`: shared GPUs of a fluid pool are "integer", "continuous" (stage 1 of the two-stage solve)
    or integer within a range per pool (stage 2; pools not named stay closed)."""
    opts = problem.options
    fams: Mapping[str, FleetFamily] = problem.families
    if limited is None:
        limited = {f for f, fam in fams.items() if fam.available is not None}
    b = _Builder()
    options = option_set.options
    choice_var: dict[ChoiceKey, int] = {}
    cover_var: dict[ChoiceKey, int] = {}
    groups_of_choice: dict[ChoiceKey, list[GroupKey]] = {}
    max_price = max((f.price_per_hour for f in fams.values()), default=1.0)
    cost_scale = 1e-4 / max(max_price * max(len(options), 1), 1.0) if coverage else 1.0

    moves = None if coverage else move_costs(problem, option_set)
    for wi, chs in option_set.choices.items():
        for model_id, topo in chs:
            ck: ChoiceKey = (wi, model_id, topo)
            choice_var[ck] = b.var(moves.choice(ck) if moves else 0.0, 0.0, 1.0, True, wi)
            if coverage:
                cover_var[ck] = b.var(-1.0, 0.0, 1.0, False, wi)
            groups_of_choice[ck] = [(wi, model_id, g) for g in topo]
    demand: dict[GroupKey, list[int]] = defaultdict(list)
    for ck, gks in groups_of_choice.items():
        for gk in gks:
            demand[gk].append(cover_var[ck] if coverage else choice_var[ck])

    columns, exact_families = select_columns(problem, option_set, limited)
    in_model = set(columns)
    # Dedicated: patterns per group where they can be listed, integer replica columns elsewhere.
    cover_rows: dict[GroupKey, dict[int, float]] = {gk: dict.fromkeys(zs, -1.0) for gk, zs in demand.items()}
    usage_terms: dict[str, list[tuple[int, float]]] = defaultdict(list)
    pattern_var, opt_var = _dedicated_columns(
        b,
        problem,
        option_set,
        in_model,
        limited,
        cover_rows,
        usage_terms,
        coverage=coverage,
        cost_scale=cost_scale,
        moves=moves,
    )
    # Shared columns.
    shared_by_pool: dict[Pool, list[int]] = defaultdict(list)
    for i in columns:
        if options[i].shared and options[i].key in demand:
            shared_by_pool[options[i].pool].append(i)
    x_var: dict[tuple[int, int], int] = {}
    q_var: dict[int, int] = {}
    bins_var: dict[Pool, list[int]] = {}
    s_var: dict[Pool, int] = {}
    for pool, idxs in shared_by_pool.items():
        fid = pool[0]
        fam = fams[fid]
        bin_cost = (fam.price_per_hour + fam.energy_cost_per_hour(None)) * cost_scale
        nkeys = len({options[i].key for i in idxs})
        avail = fam.available if fid in limited else None
        top = nkeys if avail is None else min(nkeys, avail)
        if pool in exact_families:
            bins_var[pool] = [b.var(bin_cost, 0.0, 1.0, True) for _ in range(top)]
            for i in idxs:
                for k in range(top):
                    x_var[(i, k)] = b.var(
                        moves.shared(options[i].key) if moves else 0.0, 0.0, 1.0, True, options[i].workload
                    )
                    cover_rows[options[i].key][x_var[(i, k)]] = 1.0
            usage_terms[fid].extend((v, 1.0) for v in bins_var[pool])
        else:
            if isinstance(pool_counts, str):
                s_var[pool] = b.var(bin_cost, 0.0, float(top), pool_counts == "integer")
            else:
                low, high = pool_counts.get(pool, (0, 0))
                s_var[pool] = b.var(bin_cost, float(min(low, top)), float(min(high, top)), True)
            usage_terms[fid].append((s_var[pool], 1.0))
            for i in idxs:
                q_var[i] = b.var(moves.shared(options[i].key) if moves else 0.0, 0.0, 1.0, True, options[i].workload)
                cover_rows[options[i].key][q_var[i]] = 1.0

    # (assign)
    by_workload: dict[int, list[ChoiceKey]] = defaultdict(list)
    for ck in choice_var:
        by_workload[ck[0]].append(ck)
    for cks in by_workload.values():
        coefs = [(choice_var[ck], 1.0) for ck in cks]
        if coverage:
            b.row(coefs, 0.0, 1.0)
            for ck in cks:
                b.row([(cover_var[ck], 1.0), (choice_var[ck], -1.0)], -np.inf, 0.0)
        else:
            b.row(coefs, 1.0, 1.0)
    # (cover)
    for row in cover_rows.values():
        b.row(row, 0.0, np.inf)
    # (avail)
    for fid in limited:
        terms = usage_terms.get(fid)
        if terms:
            b.row(terms, -np.inf, float(fams[fid].available or 0))
    # (pack)
    util = opts.share_max_utilization
    for pool, idxs in shared_by_pool.items():
        fid = pool[0]
        mem_cap = fams[fid].memory_gib - opts.memory_reserve_gib
        if pool in exact_families:
            bins = bins_var[pool]
            for i in idxs:
                b.row([(x_var[(i, k)], 1.0) for k in range(len(bins))], -np.inf, 1.0)
            for k, y in enumerate(bins):
                b.row([(x_var[(i, k)], options[i].fraction) for i in idxs] + [(y, -util)], -np.inf, 0.0)
                b.row(
                    [(x_var[(i, k)], options[i].memory_gib or 0.0) for i in idxs] + [(y, -mem_cap)],
                    -np.inf,
                    0.0,
                )
                if k:
                    b.row([(y, 1.0), (bins[k - 1], -1.0)], -np.inf, 0.0)
        else:
            sizes = [(q_var[i], _size(options[i], fams[fid], util, opts.memory_reserve_gib)) for i in idxs]
            b.row([*sizes, (s_var[pool], -1.0)], -np.inf, 0.0)
            for i in idxs:  # a used pool costs at least one whole GPU: tightens the LP bound
                b.row([(q_var[i], 1.0), (s_var[pool], -1.0)], -np.inf, 0.0)
            # Two tenants that each need more than half a GPU's time (or memory) cannot share one: valid for
            # any packing, and it keeps the fluid count from under-counting what first-fit will need.
            mem_cap = fams[fid].memory_gib - opts.memory_reserve_gib
            for big in (
                [i for i in idxs if options[i].fraction / util > 0.5 + 1e-9],
                [i for i in idxs if (options[i].memory_gib or 0.0) / mem_cap > 0.5 + 1e-9],
            ):
                if len(big) > 1:
                    b.row([*((q_var[i], 1.0) for i in big), (s_var[pool], -1.0)], -np.inf, 0.0)

    nvar = len(b.cost)
    ncon = len(b.row_lb)
    result = MilpResult(status="empty", feasible=False, variables=nvar, constraints=ncon, integers=sum(b.integer))
    if nvar == 0:
        result.status = "no options"
        return result
    constraints = []
    if ncon:
        a = coo_array((b.vals, (b.rows, b.cols)), shape=(ncon, nvar)).tocsr()
        constraints.append(LinearConstraint(a, np.array(b.row_lb), np.array(b.row_ub)))
    started = time.perf_counter()
    milp_options = {
        "disp": opts.verbose,
        "mip_rel_gap": opts.mip_rel_gap,
        "time_limit": min(opts.time_limit_s, time_limit_s or math.inf),
    }
    cost = np.array(b.cost)
    integrality = np.array(b.integer)
    lower, upper = np.array(b.lower), np.array(b.upper)
    res = None
    lp_bound = math.nan
    if pool_counts == "continuous" and s_var and not coverage:
        # Stage 1: the LP relaxation is nearly integral (covers are integer patterns), so solve it, fix every
        # workload whose columns are all integral there, and solve the MILP of the few left; its LP value is
        # the lower bound. If the fixed part leaves no integer solution, solve the whole MILP.
        lp = milp(
            c=cost,
            constraints=constraints,
            integrality=np.zeros_like(integrality),
            bounds=Bounds(lower, upper),
            options={"disp": False},
        )
        if lp.x is not None:
            lp_bound = float(lp.fun)
            x_lp = np.asarray(lp.x)
            owner = np.array(b.owner)
            fractional = (integrality == 1) & (np.abs(x_lp - np.round(x_lp)) > 1e-6)
            free = np.isin(owner, owner[fractional & (owner >= 0)]) | (owner < 0)
            fix = ~free & (integrality == 1)
            fixed_lower, fixed_upper = lower.copy(), upper.copy()
            fixed_lower[fix] = fixed_upper[fix] = np.round(x_lp[fix])
            res = milp(
                c=cost,
                constraints=constraints,
                integrality=integrality,
                bounds=Bounds(fixed_lower, fixed_upper),
                options=milp_options,
            )
            if res.x is None:
                res = None
    if res is None:
        res = milp(
            c=cost,
            constraints=constraints,
            integrality=integrality,
            bounds=Bounds(lower, upper),
            options=milp_options,
        )
    if nvar <= PRESOLVE_CHECK_MAX_COLUMNS:
        # HiGHS's presolve (scipy 1.17) was seen to return a wrong "optimal" on a small exact-packing model
        # (objective 6 where a cover of 1 was in the model; tests/solver/test_milp_exhaustive.py found it). A small
        # model solves in milliseconds without presolve: that answer is kept where it is strictly cheaper.
        check = milp(
            c=cost,
            constraints=constraints,
            integrality=integrality,
            bounds=Bounds(lower, upper),
            options={**milp_options, "presolve": False},
        )
        if check.x is not None and (res.x is None or check.fun < res.fun - 1e-9 * max(1.0, abs(res.fun))):
            res = check
    result.solve_s = time.perf_counter() - started
    result.status = STATUS.get(int(res.status), str(res.status))
    if res.x is None:
        return result
    x = np.asarray(res.x)
    result.feasible = True
    gap = getattr(res, "mip_gap", None)
    result.mip_gap = float(gap) if gap is not None else 0.0
    dual = getattr(res, "mip_dual_bound", None)
    result.dual_bound = float(dual) if dual is not None else math.nan
    for ck, v in choice_var.items():
        if x[v] > 0.5:
            result.choices[ck[0]] = (ck[1], ck[2])
            if coverage:
                result.coverage[ck[0]] = float(x[cover_var[ck]])
    replicas: dict[int, int] = defaultdict(int)
    for v, p in pattern_var.items():
        if x[v] > 0.5:
            for i, n in p.replicas:
                replicas[i] += n
    for i, v in opt_var.items():
        count = round(x[v])
        if count > 0:
            replicas[i] += int(count)
    result.replicas = dict(replicas)
    for pool, bins in bins_var.items():
        for k, y in enumerate(bins):
            if x[y] > 0.5:
                placed = [i for i in shared_by_pool[pool] if x[x_var[(i, k)]] > 0.5]
                if placed:
                    result.shared_bins.append((pool[0], placed))
    for pool, s in s_var.items():
        placed = [i for i in shared_by_pool[pool] if x[q_var[i]] > 0.5]
        if placed:
            result.shared_fluid[pool] = (math.ceil(x[s] - 1e-6), placed)
            result.fluid_pools[pool] = float(x[s])
    result.objective = _objective(problem, options, result)
    lower_bound: float = result.dual_bound if math.isfinite(result.dual_bound) else float(res.fun)
    if math.isfinite(lp_bound):
        lower_bound = lp_bound  # the fixed MILP's bound is not a bound of the whole problem; the LP's is
    result.lower_bound = min(lower_bound / cost_scale if coverage else lower_bound, result.objective)
    return result


def relaxation_bound(problem: Problem, option_set: OptionSet, *, integral: bool = True) -> float:
    r"""A lower bound on the cost of any plan built from `option_set`: the LP relaxation of a relaxed packing.

    The MILP's own LP value is not one: its fluid packing charges a shared slot max(phi / U, mem / M) of a GPU,
    which two complementary tenants undercut, and first-fit then packs them on fewer GPUs than it counted. Here
    the shared slots of a family f share one continuous GPU count s_f with only constraints every real packing
    meets, whatever its pools (service-time classes) or bins:
        s_f >= sum_o phi_o q_o / U,   s_f >= sum_o mem_o q_o / M_f,
        s_f >= sum_{o: phi_o > U / 2} q_o   (and the same for memory: two such tenants never share a GPU),
    with every shared slot of the set as a column, and the dedicated cover patterns, availability and assignment
    rows of the MILP. Any plan whose groups use options of the set (replicas dropped, pools packed first-fit,
    exact bins) is a feasible point of it, so its cost is at least the model's optimum. Up to
    `BOUND_INTEGRAL_MAX_VARS` columns it is solved as a MILP within `bound_time_limit_s` and HiGHS's dual bound
    is taken (integer GPU counts and choices tighten it); above that, or where that gives no bound, the value
    of its LP relaxation. NaN when neither has a solution (then the plan has no bound to report)."""
    opts = problem.options
    fams = problem.families
    options = option_set.options
    limited = {f for f, fam in fams.items() if fam.available is not None}
    b = _Builder()
    demand: dict[GroupKey, list[int]] = defaultdict(list)
    for wi, chs in option_set.choices.items():
        row = []
        for model_id, topo in chs:
            z = b.var(0.0, 0.0, 1.0, True, wi)
            row.append((z, 1.0))
            for g in topo:
                demand[(wi, model_id, g)].append(z)
        if row:
            b.row(row, 1.0, 1.0)
    columns, _ = select_columns(problem, option_set, limited)
    in_model = set(columns)
    cover_rows: dict[GroupKey, dict[int, float]] = {gk: dict.fromkeys(zs, -1.0) for gk, zs in demand.items()}
    usage_terms: dict[str, list[tuple[int, float]]] = defaultdict(list)
    _dedicated_columns(b, problem, option_set, in_model, limited, cover_rows, usage_terms)
    util = opts.share_max_utilization
    by_family: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, o in enumerate(options):
        if o.shared and o.key in demand:
            by_family[(o.family, 0)].append(i)
    pack_rows: list[tuple[list[tuple[int, float]], float, float]] = []
    for (fid, _), idxs in by_family.items():
        fam = fams[fid]
        mem_cap = fam.memory_gib - opts.memory_reserve_gib
        top = len({options[i].key for i in idxs})
        if fam.available is not None:
            top = min(top, fam.available)
        s = b.var(fam.price_per_hour + fam.energy_cost_per_hour(None), 0.0, float(top), True)
        usage_terms[fid].append((s, 1.0))
        q = {i: b.var(0.0, 0.0, 1.0, True, options[i].workload) for i in idxs}
        for i, v in q.items():
            cover_rows[options[i].key][v] = 1.0
        pack_rows.append(([*((v, options[i].fraction / util) for i, v in q.items()), (s, -1.0)], -np.inf, 0.0))
        pack_rows.append(
            ([*((v, (options[i].memory_gib or 0.0) / mem_cap) for i, v in q.items()), (s, -1.0)], -np.inf, 0.0)
        )
        for big in (
            [v for i, v in q.items() if options[i].fraction / util > 0.5 + 1e-9],
            [v for i, v in q.items() if (options[i].memory_gib or 0.0) / mem_cap > 0.5 + 1e-9],
        ):
            if len(big) > 1:
                pack_rows.append(([*((v, 1.0) for v in big), (s, -1.0)], -np.inf, 0.0))
    for cover in cover_rows.values():
        b.row(cover, 0.0, np.inf)
    for fid in limited:
        terms = usage_terms.get(fid)
        if terms:
            b.row(terms, -np.inf, float(fams[fid].available or 0))
    for coefs, lo, hi in pack_rows:
        b.row(coefs, lo, hi)
    if not b.cost:
        return 0.0
    a = coo_array((b.vals, (b.rows, b.cols)), shape=(len(b.row_lb), len(b.cost))).tocsr()
    integral = integral and len(b.cost) <= BOUND_INTEGRAL_MAX_VARS

    def run(integer: bool) -> float:
        res = milp(
            c=np.array(b.cost),
            constraints=[LinearConstraint(a, np.array(b.row_lb), np.array(b.row_ub))],
            integrality=np.array(b.integer) if integer else np.zeros(len(b.cost)),
            bounds=Bounds(np.array(b.lower), np.array(b.upper)),
            options={
                "disp": False,
                "time_limit": min(opts.time_limit_s, opts.bound_time_limit_s),
                "mip_rel_gap": opts.mip_rel_gap,
            },
        )
        if not integer:
            return float(res.fun) if res.x is not None and res.status == 0 else math.nan
        dual = getattr(res, "mip_dual_bound", None)
        return float(dual) if dual is not None and math.isfinite(dual) else math.nan

    bound = run(True) if integral else math.nan
    return bound if math.isfinite(bound) else run(False)
