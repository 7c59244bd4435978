"""Why a workload has few or no options: per group what its best row needs, and the sentence that says which
group blocks a model and what would unblock it (memory, latency, cells)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from planner.solver.problem import SolverOptions
from planner.solver.topology import Group, group_name, topologies, topology_name


@dataclass
class GroupDiagnostics:
    """One group of one model: what its best row needs, to say which group blocks a workload and why."""

    has_rows: bool = False
    min_memory_gib: float = math.inf
    """The least memory any of its rows needs (NaN-memory rows left out)."""
    fits: bool = False
    min_floor_p95_s: float = math.inf
    """Over the rows that fit: batch formation (b - 1) / rate + own p95 service, the p95 without queueing."""
    budget_s: float | None = None
    ok: bool = False
    """Some row fits and meets the group's latency budget."""


@dataclass
class Diagnostics:
    """Why a workload has few or no options, to explain an infeasible answer."""

    reasons: list[str] = field(default_factory=list)
    max_free_gib: float = 0.0
    objective_s: float | None = None
    groups: dict[tuple[str, Group], GroupDiagnostics] = field(default_factory=dict)
    """Per (model, group), filled only for a model some of whose groups have no option."""


def why_none(model_id: str, stages: Sequence[str], diag: Diagnostics, opts: SolverOptions) -> str:
    """Why no topology of a model has an option for every group, told of the group that blocks it.

    A topology t is blocked by its groups g without an option. When some topology is blocked by memory
    alone, the memory that would unblock one is min_t max_{g in t} need_g (need_g: the least any row of g
    needs); that value and its group are named, so the number is what a GPU must have free. Otherwise,
    when some topology is blocked by latency alone, the one nearest to its budgets (least max over its
    blocked groups of floor_g / budget_g) is named with that group's p95 floor and budget. Otherwise each
    blocked group of the topology with the fewest (and narrowest) blocked groups gets its own reason.
    """
    info = {g: diag.groups.get((model_id, g), GroupDiagnostics()) for t in topologies(stages) for g in t}

    def why(g: Group) -> str:
        d = info[g]
        return "cells" if not d.has_rows else "memory" if not d.fits else "latency"

    def memory(g: Group) -> str:
        return (
            f"its {group_name(g)} group needs at least {info[g].min_memory_gib:.1f} GiB, the largest allowed "
            f"GPU has {diag.max_free_gib:.1f} GiB after the {opts.memory_reserve_gib:g} GiB reserve"
        )

    def latency(g: Group) -> str:
        d = info[g]
        budget = d.budget_s if d.budget_s is not None else math.inf
        whole = len(g) == len(stages) or diag.objective_s is None
        of = "" if whole else f", its share of the {diag.objective_s:g} s objective"
        if d.min_floor_p95_s > budget:
            return (
                f"the fastest option of its {group_name(g)} group has a p95 of {d.min_floor_p95_s:.2f} s "
                f"before any queueing, over that group's latency budget ({budget:.2f} s{of})"
            )
        return (
            f"its {group_name(g)} group's p95 with queueing stays over that group's latency budget "
            f"({budget:.2f} s{of}) even with {opts.max_latency_extra_replicas} replicas more than the rate needs"
        )

    blocked = {t: [g for g in t if not info[g].ok] for t in topologies(stages)}
    blocked = {t: gs for t, gs in blocked.items() if gs}
    if not blocked or not any(d.has_rows for d in info.values()):
        return f"{model_id}: no family in the fleet has cells (measured or estimated) for every stage"
    by_memory = [t for t, gs in blocked.items() if all(why(g) == "memory" for g in gs)]
    if by_memory:
        t = min(by_memory, key=lambda t: max(info[g].min_memory_gib for g in blocked[t]))
        g = max(blocked[t], key=lambda g: info[g].min_memory_gib)
        split = f" (split as {topology_name(t)})" if len(t) > 1 else ""
        return f"{model_id}: {memory(g)}{split}"
    by_latency = [t for t, gs in blocked.items() if all(why(g) == "latency" for g in gs)]

    def ratio(g: Group) -> float:
        budget = info[g].budget_s
        return info[g].min_floor_p95_s / budget if budget else math.inf

    if by_latency:
        t = min(by_latency, key=lambda t: max(ratio(g) for g in blocked[t]))
        return f"{model_id}: {latency(max(blocked[t], key=ratio))}"
    t = min(blocked, key=lambda t: (len(blocked[t]), sum(len(g) for g in blocked[t])))
    parts = []
    for g in blocked[t]:
        kind = why(g)
        if kind == "memory":
            parts.append(memory(g))
        elif kind == "latency":
            parts.append(latency(g))
        else:
            parts.append(f"its {group_name(g)} group has no cells (measured or estimated) on the allowed families")
    return f"{model_id}: " + "; ".join(parts)
