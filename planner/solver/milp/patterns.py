"""A group's cover patterns: the integer covers of its rate by dedicated replicas (the MILP's y_p columns).

A group's replicas only interact with other groups through availability, so its integer covers can be listed up
front: for every vector of replicas on limited families (bounded by availability and by what covers the rate
alone), the cheapest completion on unlimited families (a tiny knapsack solved by branch and bound), keeping the
Pareto set of (cost, use of each limited family). Any cover is matched by a pattern that costs no more and uses
no more of any limited family, so the patterns are exact; and since each is an integer cover, the LP relaxation
no longer rounds replicas fractionally, which is what made branch and bound slow. A group with more than
`PATTERN_LIMIT` vectors of limited-family replicas to list keeps integer n_o columns.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import cast

import numpy as np

from planner.solver.latency import queue_wait_p95_s
from planner.solver.options import GroupKey, Option, OptionSet
from planner.solver.problem import Problem

PATTERN_LIMIT = 256
COVER_TOLERANCE = 1e-9

MoveCost = Callable[["Pattern"], float]
"""$/hour a pattern pays for the replicas it moves against the running plan (planner.solver.milp.moves)."""


@dataclass(frozen=True)
class Pattern:
    """An integer cover of one group's rate by dedicated replicas."""

    cost: float
    replicas: tuple[tuple[int, int], ...]
    usage: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Item:
    """A dedicated option as a cover item: credited images/s and $/hour per replica, at most `bound` replicas."""

    index: int
    credit: float
    cost: float
    family: str
    bound: int


class _Completion:
    """Cheapest replicas of the unlimited items covering a residual rate (exact branch and bound)."""

    def __init__(self, items: Sequence[Item]) -> None:
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


def _pure_pattern(rate: float, item: Item, limited: set[str]) -> Pattern | None:
    """Enough replicas of one option alone to cover the rate (None if availability does not allow it)."""
    n = math.ceil(rate / item.credit - COVER_TOLERANCE)
    if n > item.bound:
        return None
    usage = ((item.family, n),) if item.family in limited else ()
    return Pattern(n * item.cost, ((item.index, n),), usage)


def cover_patterns(
    rate: float, items: Sequence[Item], limited: set[str], limit: int = PATTERN_LIMIT
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


def _pareto_patterns(found: list[Pattern], moved: MoveCost | None = None) -> list[Pattern]:
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


def group_patterns(
    problem: Problem,
    option_set: OptionSet,
    gk: GroupKey,
    items: Sequence[Item],
    limited: set[str],
    moved: MoveCost | None = None,
) -> list[Pattern] | None:
    """A group's cover patterns (module docstring); None where there are too many to list.

    Under a p95 objective: every pure pattern (c* replicas of one option, which the per-option latency check
    already holds to the group's budget) and every mixed cover whose pool meets that budget (`mixed_pool_p95_s`,
    the p95 the engine checks the plan with). An objective that cannot bind then leaves the patterns, and the
    plan, as they are without it; one that binds drops the mixes it breaks. `moved`: a re-plan's move cost."""
    lam = problem.workloads[gk[0]].rate
    covers = cover_patterns(lam, items, limited)
    pure = [p for it in items if (p := _pure_pattern(lam, it, limited)) is not None]
    if moved is not None:  # a re-plan: keep the pure covers of the running kinds, whatever they cost
        covers = None if covers is None else _pareto_patterns([*covers, *pure], moved)
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
    return _pareto_patterns([*pure, *mixed], moved)


def memo_patterns(
    problem: Problem,
    option_set: OptionSet,
    gk: GroupKey,
    items: Sequence[Item],
    limited: set[str],
    moved: MoveCost | None = None,
) -> list[Pattern] | None:
    """`group_patterns`, remembered by everything it reads (rate, objective, budget, limited families, and per
    item its credit, price, family, bound and latency figures), with option indices stored as item positions:
    the two stages of a solve, the hold's re-solves and most what-ifs ask for the same groups again. Kept in
    the option set's memo (its builder's: one `solve`); a re-plan's move costs are not remembered."""
    if moved is not None:
        return group_patterns(problem, option_set, gk, items, limited, moved)
    w = problem.workloads[gk[0]]
    options = option_set.options
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
    if key in option_set.memo:
        found = cast(list[Pattern] | None, option_set.memo[key])
        if found is None:
            return None
        return [replace(p, replicas=tuple((items[k].index, n) for k, n in p.replicas)) for p in found]
    patterns = group_patterns(problem, option_set, gk, items, limited, moved)
    position = {it.index: k for k, it in enumerate(items)}
    option_set.memo[key] = (
        None
        if patterns is None
        else [replace(p, replicas=tuple((position[i], n) for i, n in p.replicas)) for p in patterns]
    )
    return patterns
