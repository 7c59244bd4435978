"""What planning on the analytic p95 bound costs, against planning on the scheduler's simulated batching.

    PYTHONPATH=. python benchmarks/p95_planning.py [--family h100-sxm-80gb] [--models sdxl,flux-dev]

The MILP holds a plan to the analytic p95 (planner.solver.latency), which is conservative against what the
workers achieve at low load (docs/benchmarks.md, the p95 model). Does that cost money where an objective binds, and
does it buy plans the workers' batching would miss? For every case (model, rate, p95 objective L) on one
measured family of the shipped reference data, this solves:
- the bound's plan: objective L, `simulated_p95_binds=False` (the bound alone decides);
- the plan: objective L as `planner recommend` solves it (bound and simulation both held to L: where the
  simulation misses L on the bound's plan, the bound is held to a tighter objective found by re-solving);
- the simulation's plan: the bound's plan asked for L' = f x L over a ladder of f (and for no objective at
  all), each plan's pools simulated (planner.solver.simulate: Poisson arrivals, the workers' greedy batching,
  compiled stages padded to powers of two); the cheapest whose simulated p95 meets L (ties: the lower
  simulated p95): what a solver planning on the simulation alone would buy, found by search.
It prints the plans, the bound's plan's simulated p95 over L (above 1: the bound promises what the workers'
batching does not deliver) and each plan's cost over the bound's plan's (below 1: the bound over-buys; above 1:
it under-buys). The baseline of each ratio is the bound's plan solved in the same run; the machine is named.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from planner.core.config import Settings
from planner.crud.measurements import stored_rows
from planner.crud.store import open_store
from planner.db.session import session_scope
from planner.planning import load_catalog, store_problem
from planner.recommend.quick import QuickRequest, quick_scenario
from planner.recommend.sweep import quick
from planner.solver import Plan, Problem, solve

FACTORS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, None)
"""L' / L; None asks for no objective (the cheapest plan at the rate)."""
CASES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # model: (rates in images/s, p95 objectives in s), objectives from near the fastest one-image latency up
    "sd15": ((1.0, 20.0, 100.0), (1.0, 2.0, 4.0)),
    "sdxl": ((1.0, 10.0, 100.0), (3.0, 5.0, 8.0, 15.0)),
    "flux-dev": ((1.0, 10.0, 100.0), (4.0, 6.0, 10.0, 20.0)),
    "z-image-turbo": ((1.0, 10.0, 100.0), (1.0, 2.0, 4.0)),
    "qwen-image": ((1.0, 10.0), (15.0, 25.0, 40.0)),
}


@dataclass(frozen=True)
class Solved:
    factor: float | None
    cost_per_hour: float
    bound_s: float
    simulated_s: float
    placement: str


def placement(plan: Plan) -> str:
    parts = []
    for w in plan.workloads:
        for g in w.groups:
            stages = "+".join({"text_encoder": "te", "denoiser": "dn", "vae_decoder": "vae"}[s] for s in g.stages)
            dn = g.recipes.get("denoiser", "")
            parts.append(f"[{stages}] {g.replicas}x b{g.batch}" + (f" {dn}" if dn else ""))
    return "; ".join(parts)


def solved(problem: Problem, objective: float | None, factor: float | None, *, binds: bool = False) -> Solved | None:
    w = problem.workloads[0]
    asked = None if factor is None or objective is None else objective * factor
    plan = solve(problem.with_workloads([replace(w, p95_latency_s=asked)]).with_options(simulated_p95_binds=binds))
    if not plan.feasible or plan.total_cost_per_hour is None:
        return None
    wp = plan.workloads[0]
    if wp.simulated_p95_s is None:  # a shared GPU: no simulation to plan on
        return None
    return Solved(factor, plan.total_cost_per_hour, wp.predicted_p95_s, wp.simulated_p95_s, placement(plan))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="h100-sxm-80gb", help="the measured family to plan on")
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated model ids")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"family: {args.family} (measured cells of planner/reference/measurements.csv); factors L'/L: {FACTORS}")
    started = time.perf_counter()
    ratios: list[float] = []
    held_ratios: list[float] = []
    misses: list[float] = []
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'planner.db'}"
        settings = Settings(database_url=url, seed_reference_data=True)
        engine = open_store(url, settings=settings)
        with session_scope(engine) as session:
            catalog = load_catalog(session)
            store_rows = stored_rows(session, status="ok")
            problems: dict[tuple[str, float], Problem] = {}
            for model in args.models.split(","):
                for rate in CASES[model][0]:
                    req = QuickRequest(models=[model], rate=rate, p95_latency_s=1.0, families=[args.family])
                    scenario = quick_scenario(req, catalog)
                    problems[(model, rate)] = quick(
                        store_problem(session, scenario, settings=settings, store_catalog=catalog, rows=store_rows)
                    )
        engine.dispose()
        total = sum(len(CASES[m][1]) for m, _ in problems)
        done = 0
        for (model, rate), problem in problems.items():
            for objective in CASES[model][1]:
                done += 1
                bound = solved(problem, objective, 1.0)
                held = solved(problem, objective, 1.0, binds=True)
                ladder = [s for f in FACTORS if (s := solved(problem, objective, f)) is not None]
                meets = [s for s in ladder if s.simulated_s <= objective * (1 + 1e-9)]
                best = min(meets, key=lambda s: (round(s.cost_per_hour, 6), s.simulated_s)) if meets else None
                print(
                    f"[{done}/{total}, {time.perf_counter() - started:.0f} s] {model} {rate:g}/s p95 {objective:g} s",
                    file=sys.stderr,
                )
                case = f"| {model} | {rate:g} | {objective:g} |"
                if bound is None or held is None:
                    rows.append(f"{case} infeasible (or shared) | | | | | | |")
                    continue
                miss = bound.simulated_s / objective
                misses.append(miss)
                held_ratio = held.cost_per_hour / bound.cost_per_hour
                held_ratios.append(held_ratio)
                same = held.placement == bound.placement and held_ratio == 1.0
                plan_cell = (
                    "the bound's"
                    if same
                    else f"${held.cost_per_hour:.2f} {held.placement} (sim {held.simulated_s:.2f})"
                )
                head = (
                    f"{case} ${bound.cost_per_hour:.2f} {bound.placement} (bound {bound.bound_s:.2f}, sim "
                    f"{bound.simulated_s:.2f}) | {miss:.3f} | {plan_cell} | {held_ratio:.3f} |"
                )
                if best is None:
                    rows.append(f"{head} none meets L under simulation | |")
                    continue
                ratio = best.cost_per_hour / bound.cost_per_hour
                ratios.append(ratio)
                asked = "none" if best.factor is None else f"{best.factor:g}"
                rows.append(
                    f"{head} ${best.cost_per_hour:.2f} {best.placement} (L'/L {asked}, bound {best.bound_s:.2f}, "
                    f"sim {best.simulated_s:.2f}) | {ratio:.3f} |"
                )
    print()
    print(
        "| model | rate /s | p95 objective s | the bound's plan: $/hour, pools (bound p95, simulated p95) "
        "| its simulated p95 / objective | the plan (bound and simulation held to L): $/hour, pools (simulated p95) "
        "| cost plan/bound | the simulation's plan: $/hour, pools (L'/L asked, bound, simulated) "
        "| cost simulation/bound |"
    )
    print("|---|---:|---:|---|---:|---|---:|---|---:|")
    for row in rows:
        print(row)
    print()
    for label, values in (("plan/bound", held_ratios), ("simulation/bound", ratios)):
        if values:
            print(
                f"cost {label} over {len(values)} cases: min {min(values):.3f} median {statistics.median(values):.3f} "
                f"max {max(values):.3f}; cheaper in {sum(r < 1 - 1e-9 for r in values)}, dearer in "
                f"{sum(r > 1 + 1e-9 for r in values)}, equal in {sum(abs(r - 1) <= 1e-9 for r in values)}"
            )
    if misses:
        over = sum(m > 1 + 1e-9 for m in misses)
        print(
            f"the bound's plan, simulated: p95/objective min {min(misses):.3f} median {statistics.median(misses):.3f} "
            f"max {max(misses):.3f}; over the objective in {over} of {len(misses)} cases"
        )
    print(f"wall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
