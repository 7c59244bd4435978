"""What to probe next: the fleet's unmeasured families, ranked by what they could save on this plan.

A plan rests on measurements by default (planner.perf.model, "Evidence first"), so a family no agent measured for
a workload's model is left out of it. Whether it is worth measuring before buying is the question a capacity
review has to answer, and the planner can: for each such family F, solve again on F alone with estimates allowed
(the roofline transfer of planner.perf.model), without baselines or sensitivity; where F alone cannot carry every
stage (memory), on F together with the families the plan uses. Its cost C_F, against the plan's cost C, is what F
could save if its estimate holds (negative: what it would cost more).

Cost range. The solver already keeps u (the estimate's uncertainty) as extra headroom, so a group on F of cost c
and workload headroom h costs c_pt = c (1 + h) / (1 + h + u) at the point estimate; its latency could be off by
u either way, and the replicas it needs with it (up to rounding to whole GPUs):
    C_low = sum_groups-on-F c_pt (1 - u) + the rest,     C_high = sum_groups-on-F c_pt (1 + u) + the rest.
Families are ranked by C - C_F (the saving at the estimate). A family whose estimates miss the p95 objective is
priced without it (`meets_objective: false`, its p95 in `reason`, no saving claimed) and ranked after those that
meet it; one with no plan even then (no estimate at all: its precision missing, no family to transfer from, a
vendor-specific recipe) is listed last with the reason.

The command that would measure F is the agent's probe of the recipes and batches F's plan uses, all stages,
reporting to the planner; the agent reads NVML, so it runs on NVIDIA families only: for another vendor the same
cells are timed with the user's own harness and imported (`planner measurements import`, docs/measurements.md).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from planner.solver import Plan, Problem, solve
from planner.solver.evidence import unmeasured_families
from planner.solver.plan import GroupPlan

Tick = Callable[[], None]


def _range(plan: Plan, family: str, headroom: dict[str, float]) -> tuple[float, float, float]:
    """(low, high, largest uncertainty) of a plan's cost when its groups on `family` are off by their u."""
    assert plan.total_cost_per_hour is not None
    low = high = plan.total_cost_per_hour
    worst = 0.0
    for w in plan.workloads:
        h = headroom.get(w.name, 0.0)
        for g in w.groups:
            if g.family != family:
                continue
            point = g.cost_per_hour * (1 + h) / (1 + h + g.uncertainty)
            low += point * (1 - g.uncertainty) - g.cost_per_hour
            high += point * (1 + g.uncertainty) - g.cost_per_hour
            worst = max(worst, g.uncertainty)
    return low, high, worst


def cells_to_measure(groups: list[tuple[str, GroupPlan]]) -> dict[str, dict[str, list[Any]]]:
    """Per model, the recipes and batches a plan's groups use (batch 1 too: the latency floor), every stage."""
    by_model: dict[str, tuple[set[str], set[int]]] = {}
    for model, g in groups:
        recipes, batches = by_model.setdefault(model, (set(), set()))
        recipes.update(g.recipes.values())
        batches.update({1, g.batch})
    return {m: {"recipes": sorted(r), "batches": sorted(b)} for m, (r, b) in sorted(by_model.items())}


def probe_command(problem: Problem, family: str, cells: dict[str, dict[str, list[Any]]]) -> str:
    """The agent command that measures those cells on a host with the family's GPU, reporting to the planner."""
    parts: list[str] = []
    for model, want in cells.items():
        cmd = ["agent", "probe", "--model", model]
        for r in want["recipes"]:
            cmd += ["--recipe", r]
        for b in want["batches"]:
            cmd += ["--batch", str(b)]
        spec = problem.models.get(model)
        sizes = {w.resolution[model] for w in problem.workloads if model in w.resolution}
        for h, w in sorted(sizes):
            default = spec is not None and (h, w) == (spec.height, spec.width)
            size = [] if default else ["--height", str(h), "--width", str(w)]
            parts.append(shlex.join([*cmd, *size, "--gpu-family", family, "--report"]))
    return " && ".join(parts)


def how_to_measure(problem: Problem, family: str) -> tuple[bool, str]:
    """(whether the agent can run on F, how F would be measured)."""
    fam = problem.families[family]
    vendor = fam.spec.vendor if fam.spec is not None else "other"
    if vendor == "nvidia":
        return True, "on a host with this GPU, run the command (the agent reads NVML and reports to the planner)"
    return False, (
        f"the agent reads NVML (NVIDIA only) and cannot run on {family} ({vendor}): time the cells listed (every "
        "stage) with your own harness on such a host, write them as a measurements CSV (docs/measurements.md) "
        "and run the command"
    )


def _measure(problem: Problem, family: str, can_run: bool, groups: list[tuple[str, GroupPlan]]) -> dict[str, Any]:
    cells = cells_to_measure(groups)
    command = probe_command(problem, family, cells) if can_run else "planner measurements import FILE.csv"
    return {"cells": cells, "command": command}


def _solve_on(problem: Problem, perf: Any, options: Any, keep: set[str], objective: bool) -> Plan:
    """`problem` on the families in `keep`, on `perf`; without the p95 objectives when `objective` is off."""
    workloads = problem.workloads if objective else [replace(w, p95_latency_s=None) for w in problem.workloads]
    trial = replace(
        problem,
        families={f: fam for f, fam in problem.families.items() if f in keep},
        perf=perf,
        options=options,
        workloads=list(workloads),
    )
    return solve(trial)


def opportunities(problem: Problem, plan: Plan, *, tick: Tick | None = None) -> list[dict[str, Any]]:
    """Unmeasured fleet families ranked by what they could save on `plan` (module docstring)."""
    base = plan.total_cost_per_hour
    candidates = unmeasured_families(problem)
    if base is None or not candidates:
        return []
    estimates = problem.perf.with_settings(estimates=True)
    used = {g.family for w in plan.workloads for g in w.groups}
    headroom = {w.name: w.headroom for w in problem.workloads}
    has_objective = any(w.p95_latency_s is not None for w in problem.workloads)
    rows: list[dict[str, Any]] = []
    options = replace(problem.options, baselines=False, sensitivity=False, simulate_p95=False, progress=None)
    for fid in candidates:
        # F alone; where it cannot carry every stage, F with the plan's families; where even that misses the p95
        # objective, F alone without it (priced, but ranked after every family that meets the objective).
        tries = [({fid}, True), (used | {fid}, True)] + ([({fid}, False)] if has_objective else [])
        answer = alone = plan
        meets = True
        for keep, objective in tries:
            answer = _solve_on(problem, estimates, options, keep, objective)
            if keep == {fid} and objective:
                alone = answer
            on_f = [(w.model, g) for w in answer.workloads for g in w.groups if g.family == fid]
            if answer.feasible and on_f:
                meets = objective
                break
        can_run, how = how_to_measure(problem, fid)
        row: dict[str, Any] = {
            "family": fid,
            "price": problem.families[fid].price_dict(),
            "agent_can_measure": can_run,
            "how": how,
            "meets_objective": meets,
        }
        on_f = [(w.model, g) for w in answer.workloads for g in w.groups if g.family == fid] if answer.feasible else []
        why_alone = "; ".join(i.message for i in alone.infeasible) or "with estimates allowed it is not used"
        if not on_f or answer.total_cost_per_hour is None:
            row.update(
                cost_per_hour=None,
                saving_per_hour=None,
                cost_range=None,
                saving_range=None,
                uncertainty=None,
                **_measure(problem, fid, can_run, [(w.model, g) for w in plan.workloads for g in w.groups]),
                reason=f"no plan on {fid} even with estimates allowed ({why_alone})",
            )
        else:
            low, high, u = _range(answer, fid, headroom)
            cost = answer.total_cost_per_hour
            p95 = max(w.predicted_p95_s for w in answer.workloads)
            row.update(
                cost_per_hour=round(cost, 4),
                saving_per_hour=round(base - cost, 4) if meets else None,
                cost_range=[round(low, 4), round(high, 4)],
                saving_range=[round(base - high, 4), round(base - low, 4)] if meets else None,
                uncertainty=round(u, 4),
                gpus=dict(sorted(answer.gpus.items())),
                evidence=sorted({g.evidence for _, g in on_f}),
                **_measure(problem, fid, can_run, on_f),
                reason=""
                if meets
                else f"misses the p95 objective on its estimates ({why_alone}); the cost shown is without the "
                f"objective, at a p95 of {p95:.1f} s",
            )
        rows.append(row)
        if tick is not None:
            tick()
    rows.sort(
        key=lambda r: (
            not r["meets_objective"] or r["cost_per_hour"] is None,
            r["cost_per_hour"] is None,
            -(r["saving_per_hour"] or 0.0),
            r["cost_per_hour"] or 0.0,
            r["family"],
        )
    )
    return rows
