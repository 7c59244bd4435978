"""`--format csv`: one row per group of the plan, for a spreadsheet (columns documented in docs/recommend.md).

Money columns of a group are that group's share: a workload's rows add up to its cost. `cost_per_image` of a
group is its $/hour over the workload's images per hour, so the groups' $/image also add up.
"""

from __future__ import annotations

import csv
from typing import TextIO

from planner.recommend.views import HOURS_PER_MONTH
from planner.solver.plan import Plan

CSV_COLUMNS: tuple[str, ...] = (
    "workload",
    "model",
    "topology",
    "group",
    "stages",
    "family",
    "recipes",
    "batch",
    "replicas",
    "shared_gpu",
    "gpu_fraction",
    "throughput",
    "utilization",
    "p95_s",
    "workload_p95_s",
    "simulated_p95_s",
    "workload_simulated_p95_s",
    "p95_objective_s",
    "bound_objective_s",
    "rate",
    "cost_per_hour",
    "cost_per_image",
    "cost_per_1000_images",
    "cost_per_month",
    "source",
    "uncertainty",
    "binding",
    "evidence",
    "startup_s",
)


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def write_csv(plan: Plan, out: TextIO) -> int:
    """Write the plan's groups; returns how many rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for w in plan.workloads:
        per_hour_images = 3600.0 * w.rate
        for i, g in enumerate(w.groups):
            per_image = g.cost_per_hour / per_hour_images
            writer.writerow(
                (
                    w.name,
                    w.model,
                    w.topology,
                    i,
                    "+".join(g.stages),
                    g.family,
                    ";".join(f"{s}={r}" for s, r in g.recipes.items()),
                    g.batch,
                    g.replicas,
                    g.shared_gpu or "",
                    _num(g.gpu_fraction, 4),
                    _num(g.throughput),
                    _num(g.utilization, 4),
                    _num(g.p95_s, 4),
                    _num(w.predicted_p95_s, 4),
                    _num(g.simulated_p95_s, 4),
                    _num(w.simulated_p95_s, 4),
                    _num(w.p95_objective_s),
                    _num(w.bound_objective_s),
                    _num(w.rate),
                    _num(g.cost_per_hour),
                    _num(per_image),
                    _num(per_image * 1000),
                    _num(g.cost_per_hour * HOURS_PER_MONTH),
                    "measured" if g.measured else "estimated",
                    _num(g.uncertainty, 4),
                    ";".join(w.binding),
                    g.evidence,
                    _num(g.startup_s, 4),
                )
            )
            count += 1
    return count
