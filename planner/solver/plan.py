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

from planner.core.batching import BatchingPolicy
from planner.perf.model import EVIDENCE_RANK
from planner.solver.quality import QualityLine
from planner.solver.replan import Moves

Constraint = Literal["capacity", "availability", "latency", "memory", "quality"]
SCHEMA_VERSION = 2
"""Version of the JSON below: 2 added `schema_version`, per-group `evidence` and `startup_s`, `prices`,
`opportunities` and `evidence` at the top level (docs/recommend.md, "JSON")."""


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
    evidence: str = ""
    compile_s: float | None = None

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
            "evidence": self.evidence or self.method,
            "compile_s": _num(self.compile_s, 3),
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
    startup_s: float = 0.0
    """Seconds a replica takes to become ready: weights load + compile of each batch size (planner.solver.startup)."""

    @property
    def measured(self) -> bool:
        return all(c.source == "measured" for c in self.cells)

    @property
    def evidence_method(self) -> str:
        """The least sure method among the group's cells (`EVIDENCE_RANK`)."""
        return self._worst().method if self.cells else "measured"

    @property
    def evidence(self) -> str:
        """`measured`, `interpolated`, `scaled from HxW`, `transferred from F`: the least sure cell's label."""
        worst = self._worst() if self.cells else None
        return "measured" if worst is None else (worst.evidence or worst.method)

    def _worst(self) -> StageCell:
        return max(self.cells, key=lambda c: (EVIDENCE_RANK.get(c.method, 9), c.uncertainty))

    @property
    def rests_on_measurements(self) -> bool:
        """Measured or interpolated between measured batches: what a plan uses without estimates allowed."""
        return self.evidence_method in ("measured", "interpolated")

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
            "evidence": self.evidence,
            "evidence_method": self.evidence_method,
            "startup_s": _num(self.startup_s, 1),
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
    """(cost - lower_bound) / cost; NaN (JSON null) when no valid bound is known."""
    objective: float
    lower_bound: float = float("nan")
    """$/hour no plan from the solver's options can undercut (planner.solver.milp.relaxation_bound)."""

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
            "lower_bound": _num(self.lower_bound),
        }


@dataclass(frozen=True)
class Replan:
    """A re-plan from the running plan (planner.solver.replan): what it moves, and what it gave up for that
    against a fresh solve of the same problem."""

    move_cost_per_hour: float
    moves: Moves
    fresh_cost_per_hour: float | None
    fresh_moves: Moves | None
    cost_per_hour: float

    @property
    def gave_up_per_hour(self) -> float | None:
        """$/hour this plan costs above the fresh solve's (what fewer moves cost)."""
        return None if self.fresh_cost_per_hour is None else self.cost_per_hour - self.fresh_cost_per_hour

    def summary(self) -> str:
        line = (
            f"re-plan from the running plan at a move cost of ${self.move_cost_per_hour:g}/h per replica: moves "
            f"{self.moves.total} replicas ({self.moves.added} added, {self.moves.removed} removed, "
            f"{self.moves.changed} changed recipe, batch or family) at ${self.cost_per_hour:.2f}/h"
        )
        gave_up = self.gave_up_per_hour
        if self.fresh_moves is None or self.fresh_cost_per_hour is None or gave_up is None:
            return line + "; the problem has no fresh plan to compare with"
        fresh = f"; a fresh solve moves {self.fresh_moves.total} at ${self.fresh_cost_per_hour:.2f}/h"
        if gave_up > 1e-9:
            return line + fresh + f": fewer moves give up ${gave_up:.2f}/h"
        return line + fresh + f": fewer moves give up nothing (${-gave_up:.2f}/h less)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "move_cost_per_hour": _num(self.move_cost_per_hour),
            "moves": self.moves.to_dict(),
            "cost_per_hour": _num(self.cost_per_hour),
            "fresh_cost_per_hour": _num(self.fresh_cost_per_hour),
            "fresh_moves": self.fresh_moves.to_dict() if self.fresh_moves is not None else None,
            "gave_up_per_hour": _num(self.gave_up_per_hour),
            "summary": self.summary(),
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
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per fleet family: price, provider, offering, kind, region, date and source (FleetFamily.price_dict)."""
    offering: str | None = None
    """The offering kind catalog prices were taken at."""
    allow_estimates: bool = False
    opportunities: tuple[dict[str, Any], ...] = ()
    """Unmeasured families ranked by what they could save (planner.recommend.opportunities); filled by callers
    that run those extra solves (`planner recommend`)."""
    replan: Replan | None = None
    distilled_quality: tuple[dict[str, Any], ...] = ()
    """Published figures comparing a served distilled variant with its base model, or a row saying there are none
    (planner.solver.distilled); filled by callers, like `opportunities`."""
    batching: BatchingPolicy | None = None
    """The workers' batching policy the plan was simulated with, when the scenario set one (the JSON's
    `batching`, which the workers serving the plan run); None: the defaults (planner.core.batching)."""

    def workload(self, name: str) -> WorkloadPlan:
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)

    def evidence_summary(self) -> dict[str, Any]:
        """What the plan rests on: groups per evidence method, and whether every group was measured."""
        counts: dict[str, int] = {}
        worst = 0.0
        for w in self.workloads:
            for g in w.groups:
                counts[g.evidence_method] = counts.get(g.evidence_method, 0) + 1
                worst = max(worst, g.uncertainty)
        return {
            "groups": counts,
            "measured_only": all(m in ("measured", "interpolated") for m in counts),
            "largest_uncertainty": _num(worst, 4),
            "estimates_allowed": self.allow_estimates,
        }

    def to_dict(self) -> dict[str, Any]:
        """Contract 3 first, then the extra keys."""
        return {
            "schema_version": SCHEMA_VERSION,
            "total_cost_per_hour": _num(self.total_cost_per_hour),
            "gpus": dict(sorted(self.gpus.items())),
            "workloads": [w.to_dict() for w in self.workloads],
            "warnings": list(self.warnings),
            "evidence": self.evidence_summary(),
            "offering": self.offering,
            "prices": {
                f: {k: (_num(v) if isinstance(v, float) else v) for k, v in p.items()}
                for f, p in sorted(self.prices.items())
            },
            "opportunities": list(self.opportunities),
            "feasible": self.feasible,
            "shared_gpus": [s.to_dict() for s in self.shared_gpus],
            "baselines": [b.to_dict() for b in self.baselines],
            "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None,
            "infeasible": [i.to_dict() for i in self.infeasible],
            "solver": self.stats.to_dict() if self.stats else None,
            "quality": [q.to_dict() for q in self.quality],
            "replan": self.replan.to_dict() if self.replan else None,
            "distilled_quality": list(self.distilled_quality),
            **({"batching": self.batching.to_dict()} if self.batching is not None else {}),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """The JSON object `planner recommend --format json` prints (DESIGN.md contract 3)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
