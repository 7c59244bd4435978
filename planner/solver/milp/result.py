"""What a MILP solve decided (`MilpResult`), its GPUs and its $/hour."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from planner.solver.options import Option, OptionSet, Topology
from planner.solver.problem import Problem

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


def usage(option_set: OptionSet, result: MilpResult) -> UsageMap:
    """GPUs of each family a MILP result uses: dedicated replicas plus shared GPUs."""
    used: UsageMap = defaultdict(int)
    for i, n in result.replicas.items():
        used[option_set.options[i].family] += n
    for fid, _ in result.shared_bins:
        used[fid] += 1
    for (fid, _), (count, _) in result.shared_fluid.items():
        used[fid] += count
    return dict(used)


def gpu_price(problem: Problem, fid: str) -> float:
    """$/hour of one GPU of a family: its price plus energy where the fleet sets $/kWh."""
    fam = problem.families[fid]
    return fam.price_per_hour + fam.energy_cost_per_hour(None)


def objective(problem: Problem, options: Sequence[Option], result: MilpResult) -> float:
    """$/hour of a result: dedicated replicas plus shared GPUs (exact bins and fluid pools)."""
    options_cost = sum(options[i].cost_per_hour * n for i, n in result.replicas.items())
    return float(
        options_cost
        + sum(gpu_price(problem, f) for f, _ in result.shared_bins)
        + sum(gpu_price(problem, f) * n for (f, _), (n, _) in result.shared_fluid.items())
    )
