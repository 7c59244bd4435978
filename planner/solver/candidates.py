"""Option: one MILP column (a dedicated replica kind, or a shared-GPU slot, of one group of one workload), and
how options are built from the rows of a cell table (planner.solver.cells) once a workload has credited them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from planner.perf.model import CellEstimate
from planner.solver.cells import FloatArray, IntArray, RowLists
from planner.solver.topology import Group, GroupKey


@dataclass(frozen=True, slots=True)
class Option:
    """One MILP column: a dedicated replica kind, or a shared-GPU slot, of one group of one workload."""

    workload: int
    model: str
    group: Group
    family: str
    recipes: tuple[str, ...]
    batch: int
    service_s: float
    service_p95_s: float
    throughput: float
    credit: float
    memory_gib: float | None
    uncertainty: float
    power_w: float | None
    cost_per_hour: float
    cells: tuple[CellEstimate, ...]
    calls: tuple[int, ...]
    shared: bool
    fraction: float
    min_replicas: int
    latency_bound: bool
    budget_s: float | None
    share_class: int = -1
    alternatives: Alternatives | None = field(default=None, compare=False, repr=False)
    """Same-segment dedicated options that cost no more per replica, credit less and have a lower p95 floor
    (planner.solver.options, "Latency tie-break"); not MILP columns, only swapped in after the solve."""
    startup_s: float = 0.0
    """Seconds a replica takes to become ready (planner.solver.startup)."""
    running: bool = False
    """A kind (family, recipes, batch) the running plan uses for this group: kept as a column even where
    dominated, so a re-plan can keep it (planner.solver.replan)."""

    @property
    def key(self) -> GroupKey:
        return (self.workload, self.model, self.group)

    @property
    def pool(self) -> tuple[str, int]:
        """Where a shared-mode option may be packed: (family, service-time class)."""
        return (self.family, self.share_class)


def make_option(
    lists: RowLists,
    i: int,
    wi: int,
    model_id: str,
    family: str,
    *,
    credit: float,
    cost: float,
    cstar: float,
    latency_bound: bool,
    budget: float | None,
    shared: bool,
    fraction: float,
    share_class: int = -1,
    alternatives: Alternatives | None = None,
    running: bool = False,
) -> Option:
    """Row `i` of a table as workload `wi`'s option, with what the workload's crediting decided."""
    return Option(
        workload=wi,
        model=model_id,
        group=lists.tbl.groups[lists.group[i]],
        family=family,
        recipes=lists.recipes[i],
        batch=lists.batch[i],
        service_s=lists.service[i],
        service_p95_s=lists.p95[i],
        throughput=lists.batch[i] / lists.service[i],
        credit=credit,
        memory_gib=lists.mem[i],
        uncertainty=lists.u[i],
        power_w=lists.power[i],
        cost_per_hour=cost,
        cells=lists.tbl.combos[i],
        calls=lists.calls[i],
        shared=shared,
        fraction=fraction,
        min_replicas=int(cstar) if math.isfinite(cstar) else 0,
        latency_bound=latency_bound,
        budget_s=budget,
        share_class=share_class,
        alternatives=alternatives,
        startup_s=lists.startup[i],
        running=running,
    )


@dataclass(frozen=True)
class AlternativeSource:
    """What building an alternative Option needs from one workload's crediting (shared by its options)."""

    lists: RowLists
    workload: int
    model: str
    families: list[str]
    credit: FloatArray
    cost: FloatArray
    cstar: FloatArray
    latency_bound: NDArray[np.bool_]
    budgets: list[float | None]
    rate: float


@dataclass(frozen=True, slots=True)
class Alternatives:
    """An option's latency tie-break candidates, built into Options only when the engine asks: most options are
    never chosen, and building tens of thousands of Options up front doubled the time to build a large set."""

    source: AlternativeSource
    rows: IntArray
    credit_scale: float = 1.0

    def options(self) -> list[Option]:
        src = self.source
        out = []
        for i in self.rows.tolist():
            credit = float(src.credit[i]) * self.credit_scale
            out.append(
                make_option(
                    src.lists,
                    i,
                    src.workload,
                    src.model,
                    src.families[src.lists.family[i]],
                    credit=credit,
                    cost=float(src.cost[i]),
                    cstar=float(src.cstar[i]),
                    latency_bound=bool(src.latency_bound[i]) or self.credit_scale < 1.0,
                    budget=src.budgets[src.lists.group[i]],
                    shared=False,
                    fraction=src.rate / credit,
                )
            )
        return out


@dataclass(frozen=True)
class SharedBatch:
    """The shared-mode candidates of one (workload, model), as arrays, before the builder decides how many
    of them the MILP needs."""

    lists: RowLists
    workload: int
    model: str
    families: list[str]
    groups: list[Group]
    budgets: list[float | None]
    rows: IntArray
    group: IntArray
    family: IntArray
    klass: IntArray
    credit: FloatArray
    cost: FloatArray
    cstar: FloatArray
    phi: FloatArray
    size: FloatArray
    price: FloatArray
    unlimited: NDArray[np.bool_]
