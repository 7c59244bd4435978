"""What a plan rests on, said first: the evidence lines that lead a plan's warnings, and the latency it gives
where nobody set an objective.

A plan's groups carry the least sure of their cells' evidence (`GroupPlan.evidence`: measured, interpolated,
scaled from HxW, imported estimate, transferred from F). A reviewer must hear before anything else when a plan
leans on anything but measurements, and how far the figures may be off; and a plan solved without a p95
objective must say the p95 it gives, never that it "meets" an objective nobody set.
"""

from __future__ import annotations

from collections.abc import Sequence

from planner.solver.options import group_name
from planner.solver.plan import WorkloadPlan
from planner.solver.problem import Problem


def unmeasured_families(problem: Problem) -> list[str]:
    """Fleet families that some workload's model has no measured cell on (in fleet order)."""
    models = {m for w in problem.workloads for m in w.models}
    measured = {m: problem.perf.measured_families_of(m) for m in models}
    return [fid for fid in problem.families if any(fid not in measured[m] for m in models)]


def left_out_line(problem: Problem) -> list[str]:
    """Without estimates, the fleet families the plan could not consider, said once."""
    if problem.allow_estimates:
        return []
    missing = unmeasured_families(problem)
    if not missing:
        return []
    models = ", ".join(sorted({m for w in problem.workloads for m in w.models}))
    return [
        f"Left out: {', '.join(missing)}: no agent measured {models} on them, and estimates are not allowed. "
        "--allow-estimates (or `allow_estimates: true`) plans on their estimates, labelled; a plan's "
        "`opportunities` (What to probe next) rank them by what they could save."
    ]


_NEAR = ("interpolated", "scaled")


def _where(w: WorkloadPlan, methods: Sequence[str]) -> list[str]:
    return [
        f"{w.name} {group_name(g.stages)} on {g.family}: {g.evidence} (±{g.uncertainty:.0%})"
        for g in w.groups
        if g.evidence_method in methods
    ]


def evidence_warnings(workloads: Sequence[WorkloadPlan], *, allow_estimates: bool) -> list[str]:
    """The lines that lead a plan's warnings: estimates first, then interpolation and scaling; none when every
    group was measured. `allow_estimates` only words the fix."""
    estimated = [line for w in workloads for line in _where(w, ("imported-estimate", "transferred"))]
    near = [line for w in workloads for line in _where(w, _NEAR)]
    out: list[str] = []
    if estimated:
        out.append(
            "This plan rests on ESTIMATES, not measurements (estimates allowed): "
            + "; ".join(estimated)
            + ". No agent measured these cells on these families: measure them before buying (the opportunities "
            "name the command)"
            + (", or plan on measured families only (leave out --allow-estimates)." if allow_estimates else ".")
        )
    if near:
        out.append(
            "Derived from measurements of the same family: "
            + "; ".join(near)
            + ". Interpolated: between two measured batch sizes; scaled: from a measured image size by FLOPs."
        )
    return out


def latency_notes(workloads: Sequence[WorkloadPlan]) -> list[str]:
    """Per workload without a p95 objective: there is none, and this is the p95 the plan gives."""
    out: list[str] = []
    for w in workloads:
        if w.p95_objective_s is not None:
            continue
        batches = sorted({g.batch for g in w.groups})
        sim = f" (simulated {w.simulated_p95_s:.2f} s)" if w.simulated_p95_s is not None else ""
        out.append(
            f"{w.name}: no p95 latency objective was given, so the plan is the cheapest at any latency: it batches "
            f"{'/'.join(str(b) for b in batches)} and its p95 is {w.predicted_p95_s:.2f} s{sim}. For interactive "
            "requests give one (--p95 SECONDS, or `p95_latency_s:` in a scenario; docs/recommend.md, 'Choosing a "
            "latency objective')."
        )
    return out
