"""The solver's answer: a typed plan and its JSON form (DESIGN.md contract 3 plus extra keys).

Contract 3 keys, exactly: `total_cost_per_hour`, `gpus` (family -> count), `workloads[]` with `name`,
`topology`, `cost_per_hour`, `cost_per_image`, `groups[]` with `stages`, `family`, `recipes`
(stage -> recipe), `batch`, `replicas`, `throughput` (images/s of the group's replicas together).
Everything else is extra: feasibility, predicted p95 per workload and group (and the scheduler's batching
simulated on the plan, `simulated_p95_s`), utilisation, which cells
were measured or estimated, shared GPUs, baselines and savings, sensitivity, binding constraints,
infeasibility explanations, solver statistics. A group served on a shared GPU has `replicas: 1` and a
`shared_gpu` id; its `throughput` is the share of that GPU's capacity it is given. `gpus` counts dedicated
replicas plus shared GPUs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from planner.solver.quality import QualityLine

Constraint = Literal["capacity", "availability", "latency", "memory", "quality"]


def _num(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


@dataclass(frozen=True)
class StageCell:
    """Where one stage's latency came from."""

    stage: str
    recipe: str
    latency_ms: float
    calls: int
    source: str
    method: str
    uncertainty: float
    basis: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "recipe": self.recipe,
            "latency_ms": _num(self.latency_ms, 3),
            "calls": self.calls,
            "source": self.source,
            "method": self.method,
            "uncertainty": _num(self.uncertainty, 4),
            "basis": self.basis,
        }


@dataclass(frozen=True)
class GroupPlan:
    """One pool of identical replicas serving a group of stages of one workload."""

    stages: tuple[str, ...]
    family: str
    recipes: dict[str, str]
    batch: int
    replicas: int
    throughput: float
    capacity_credited: float
    utilization: float
    service_time_s: float
    service_p95_s: float
    p95_s: float
    batch_timeout_s: float
    memory_gib: float | None
    uncertainty: float
    cost_per_hour: float
    cells: tuple[StageCell, ...]
    shared_gpu: str | None = None
    gpu_fraction: float | None = None
    latency_bound: bool = False
    simulated_p95_s: float | None = None
    """p95 of this pool under the scheduler's greedy batching, simulated (planner.solver.simulate); None when
    not simulated (a shared GPU, or `SolverOptions.simulate_p95` off). `p95_s` is the bound the plan is held to."""

    @property
    def measured(self) -> bool:
        return all(c.source == "measured" for c in self.cells)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "family": self.family,
            "recipes": dict(self.recipes),
            "batch": self.batch,
            "replicas": self.replicas,
            "throughput": _num(self.throughput),
            "capacity_credited": _num(self.capacity_credited),
            "utilization": _num(self.utilization, 4),
            "service_time_s": _num(self.service_time_s, 4),
            "service_p95_s": _num(self.service_p95_s, 4),
            "p95_s": _num(self.p95_s, 4),
            "batch_timeout_s": _num(self.batch_timeout_s, 4),
            "memory_gib": _num(self.memory_gib, 3),
            "uncertainty": _num(self.uncertainty, 4),
            "cost_per_hour": _num(self.cost_per_hour),
            "measured": self.measured,
            "cells": [c.to_dict() for c in self.cells],
            "shared_gpu": self.shared_gpu,
            "gpu_fraction": _num(self.gpu_fraction, 4),
            "latency_bound": self.latency_bound,
            "simulated_p95_s": _num(self.simulated_p95_s, 4),
        }


@dataclass(frozen=True)
class WorkloadPlan:
    """How one workload is served."""

    name: str
    model: str
    topology: str
    topology_groups: tuple[tuple[str, ...], ...]
    rate: float
    headroom: float
    p95_objective_s: float | None
    predicted_p95_s: float
    cost_per_hour: float
    groups: tuple[GroupPlan, ...]
    binding: tuple[Constraint, ...] = ()
    simulated_p95_s: float | None = None
    """The groups' simulated p95s summed (as `predicted_p95_s` sums the bounds); None if any is not simulated."""
    bound_objective_s: float | None = None
    """The objective the analytic bound was held to when the simulated batching missed `p95_objective_s` on the
    bound's own plan (`SolverOptions.simulated_p95_binds`); None when it was `p95_objective_s` itself."""

    @property
    def cost_per_image(self) -> float:
        return self.cost_per_hour / (3600.0 * self.rate)

    @property
    def meets_latency(self) -> bool:
        return self.p95_objective_s is None or self.predicted_p95_s <= self.p95_objective_s * (1 + 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "topology": self.topology,
            "cost_per_hour": _num(self.cost_per_hour),
            "cost_per_image": _num(self.cost_per_image, 9),
            "groups": [g.to_dict() for g in self.groups],
            "model": self.model,
            "topology_groups": [list(g) for g in self.topology_groups],
            "rate": self.rate,
            "headroom": self.headroom,
            "p95_objective_s": self.p95_objective_s,
            "predicted_p95_s": _num(self.predicted_p95_s, 4),
            "simulated_p95_s": _num(self.simulated_p95_s, 4),
            "bound_objective_s": _num(self.bound_objective_s, 4),
            "meets_latency": self.meets_latency,
            "binding": list(self.binding),
        }


@dataclass(frozen=True)
class SharedGpu:
    """One GPU time-shared by several low-rate groups."""

    id: str
    family: str
    tenants: tuple[tuple[str, tuple[str, ...]], ...]
    utilization: float
    memory_gib: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "tenants": [{"workload": w, "stages": list(s)} for w, s in self.tenants],
            "utilization": _num(self.utilization, 4),
            "memory_gib": _num(self.memory_gib, 3),
        }


@dataclass(frozen=True)
class Baseline:
    """A simpler way to serve the same workloads, solved on the same data, and what the plan saves over it."""

    name: str
    description: str
    feasible: bool
    cost_per_hour: float | None
    saving: float | None
    gpus: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "feasible": self.feasible,
            "cost_per_hour": _num(self.cost_per_hour),
            "saving": _num(self.saving, 4),
            "gpus": dict(self.gpus),
            "note": self.note,
        }


@dataclass(frozen=True)
class WhatIf:
    """The plan's cost under one change of the inputs (None: infeasible)."""

    label: str
    cost_per_hour: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "cost_per_hour": _num(self.cost_per_hour)}


@dataclass(frozen=True)
class Sensitivity:
    """Cost against what-if rates and quality floors; which constraints bind (relaxing them saves money)."""

    rates: tuple[WhatIf, ...] = ()
    quality: tuple[WhatIf, ...] = ()
    relaxed: tuple[tuple[Constraint, WhatIf], ...] = ()
    binding: tuple[Constraint, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rates": [r.to_dict() for r in self.rates],
            "quality": [q.to_dict() for q in self.quality],
            "relaxed": {c: w.to_dict() for c, w in self.relaxed},
            "binding": list(self.binding),
        }


@dataclass(frozen=True)
class Infeasibility:
    """A workload the fleet cannot carry: how much of it, why, and what would carry it."""

    workload: str
    carried_fraction: float
    message: str
    suggestion: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "carried_fraction": _num(self.carried_fraction, 4),
            "message": self.message,
            "suggestion": self.suggestion,
        }


@dataclass(frozen=True)
class SolverStats:
    """How the MILP went."""

    status: str
    solve_s: float
    build_s: float
    options: int
    variables: int
    constraints: int
    mip_gap: float
    objective: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "solve_s": _num(self.solve_s, 4),
            "build_s": _num(self.build_s, 4),
            "options": self.options,
            "variables": self.variables,
            "constraints": self.constraints,
            "mip_gap": _num(self.mip_gap, 6),
            "objective": _num(self.objective),
        }


@dataclass(frozen=True)
class Plan:
    """The answer for a fleet and a set of workloads."""

    feasible: bool
    total_cost_per_hour: float | None
    gpus: dict[str, int]
    workloads: tuple[WorkloadPlan, ...]
    shared_gpus: tuple[SharedGpu, ...] = ()
    baselines: tuple[Baseline, ...] = ()
    sensitivity: Sensitivity | None = None
    infeasible: tuple[Infeasibility, ...] = ()
    warnings: tuple[str, ...] = ()
    stats: SolverStats | None = None
    quality: tuple[QualityLine, ...] = ()
    """For each recipe a quality floor judged: its quality, the source of it, allowed or excluded and why."""

    def workload(self, name: str) -> WorkloadPlan:
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Contract 3 first, then the extra keys."""
        return {
            "total_cost_per_hour": _num(self.total_cost_per_hour),
            "gpus": dict(sorted(self.gpus.items())),
            "workloads": [w.to_dict() for w in self.workloads],
            "feasible": self.feasible,
            "shared_gpus": [s.to_dict() for s in self.shared_gpus],
            "baselines": [b.to_dict() for b in self.baselines],
            "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None,
            "infeasible": [i.to_dict() for i in self.infeasible],
            "warnings": list(self.warnings),
            "solver": self.stats.to_dict() if self.stats else None,
            "quality": [q.to_dict() for q in self.quality],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """The JSON object `planner recommend --format json` prints (DESIGN.md contract 3)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
