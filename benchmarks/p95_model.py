"""How far the solver's analytic p95 is from the scheduler's batching policy, and on which side.

    PYTHONPATH=. python benchmarks/p95_model.py [--e2e RUN_DIR ...] [--no-grid]

1. Replay of each GPU end-to-end run (default: benchmarks/results/e2e-h100-2026-11-26-warmup/ and
   e2e-h100-2026-11-27-simulated/): its probe's service curve, the plan's pool (one H100, SDXL batch 8 padded
   to 1/2/4/8), the planned rate; the simulated p95 (planner.solver.simulate, 20,000 jobs) beside the plan's
   analytic p95 and the p95 the worker achieved.
2. A grid over replicas, batch, load (the rate over the pool's full-batch capacity) and the service curve's
   fixed share f (a batch of n takes S(b) (f + (1 - f) n / b); the shipped H100 data's whole-pipeline groups
   have f = 0.003-0.27): the analytic p95 (planner.solver.latency.pool_p95_s, no estimate uncertainty) over
   the simulated one, for the scheduler's greedy policy (plain, and padded to powers of two as a compiled
   pool runs) and for the batch-timeout policy the analytic model assumes. Below 1 the analytic figure
   promises a p95 that policy does not deliver.
The baseline of each ratio is the simulation in the same run; the machine is named in the output.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from planner.core.batching import DEFAULT_BATCH_WAIT_S, shape_batches
from planner.solver.latency import pool_p95_s
from planner.solver.simulate import PoolSimulation, linear_curve, simulate_pool

REPO = Path(__file__).resolve().parents[1]
E2E_RUNS = (
    REPO / "benchmarks" / "results" / "e2e-h100-2026-11-26-warmup",
    REPO / "benchmarks" / "results" / "e2e-h100-2026-11-27-simulated",
)
WAIT_S: float = DEFAULT_BATCH_WAIT_S  # the workers' batch wait (0.05 s) when the plan names none
JOBS = 20_000


def e2e_replay(run: Path) -> None:
    plan = json.loads((run / "e2e-plan.json").read_text())
    group = plan["workloads"][0]["groups"][0]
    recipes, steps = group["recipes"], next(c["calls"] for c in group["cells"] if c["stage"] == "denoiser")
    rows = list(csv.DictReader((run / "e2e-probe.csv").open()))
    per_batch: dict[int, float] = {}
    for r in rows:
        if r["status"] == "ok" and recipes.get(r["stage"]) == r["recipe"]:
            calls = steps if r["stage"] == "denoiser" else 1
            per_batch[int(r["batch"])] = per_batch.get(int(r["batch"]), 0.0) + calls * float(r["latency_ms"]) / 1e3
    curve = linear_curve(sorted(per_batch.items()))
    measured = json.loads((run / "e2e.json").read_text())["plan"]
    rate, batch = measured["rate"], group["batch"]
    # The run's own submission times: recorded by e2e_gpu.py since 2026-11-27; this run's are its seeded
    # schedule (random.Random(7), one submission at each cumulative expovariate(rate) offset).
    arrivals = measured.get("rate_phase_submitted_s")
    if arrivals is None:
        rng, at, arrivals = random.Random(7), 0.0, []
        for _ in range(measured["rate_phase_jobs"]):
            arrivals.append(at)
            at += rng.expovariate(rate)
    sizes = shape_batches(batch, "pow2")  # the run's compiled_batches
    pool = partial(simulate_pool, rate=rate, servers=group["replicas"], batch=batch, service_s=curve, wait_s=WAIT_S)
    sim = pool(jobs=JOBS, sizes=sizes)
    replay = pool(sizes=sizes, arrivals=arrivals, warmup_jobs=0)
    short = np.array([pool(sizes=sizes, jobs=len(arrivals), warmup_jobs=0, seed=k).p95_s for k in range(2000)])
    padded_to = "/".join(map(str, sizes))
    print(f"\ne2e replay of {run.name} (SDXL, one H100, batch {batch} padded to {padded_to}, {rate} images/s, "
          f"wait {WAIT_S} s):")  # fmt: skip
    points = ", ".join(f"b{b} {s:.3f}" for b, s in sorted(per_batch.items()))
    print(f"  service curve (s per batch, from the run's probe): {points}")
    print(f"  analytic p95 (the plan)     {measured['predicted_p95_s']:7.2f} s")
    print(f"  simulated p95 ({JOBS} jobs) {sim.p95_s:7.2f} s   p50 {sim.p50_s:.2f}  mean batch {sim.mean_batch:.2f}")
    planned_sim = plan["workloads"][0].get("simulated_p95_s")  # the plan's own (solver.simulate), since 2026-11-27
    if planned_sim is not None:
        print(f"  the plan's simulated_p95_s    {planned_sim:7.2f} s   (its perf model's curve, not the probe's alone)")
    jobs = measured["rate_phase_jobs"]
    print(f"  achieved p95 ({jobs} jobs)     {measured['p95_s']:7.2f} s   p50 {measured['p50_s']:.2f}")
    print(f"  replayed p95 ({jobs} jobs: the run's own arrivals) {replay.p95_s:7.2f} s   p50 {replay.p50_s:.2f}")
    lo, mid, hi = np.percentile(short, [5, 50, 95])
    print(f"  p95 of {jobs}-job Poisson runs (2000 seeds): 5% {lo:.2f} s, median {mid:.2f} s, 95% {hi:.2f} s")
    analytic, achieved = measured["predicted_p95_s"], measured["p95_s"]
    print(
        f"  analytic/simulated={analytic / sim.p95_s:.3f} achieved/simulated={achieved / sim.p95_s:.3f} "
        f"achieved/replayed={achieved / replay.p95_s:.3f}"
    )


@dataclass(frozen=True)
class GridCell:
    servers: int
    batch: int
    fixed: float
    load: float
    analytic_s: float
    greedy: PoolSimulation
    padded: PoolSimulation
    timeout: PoolSimulation


POLICIES = (
    ("greedy", "greedy (the scheduler's policy)"),
    ("padded", "greedy, padded to powers of two (a compiled pool)"),
    ("timeout", "batch timeout (the model's policy)"),
)


def grid() -> None:
    full_s = 1.0
    cells: list[GridCell] = []
    for servers in (1, 2, 8):
        for batch in (1, 4, 8, 16):
            pow2 = shape_batches(batch, "pow2")
            for fixed in (0.05, 0.15, 0.3, 0.5):

                def curve(n: int, batch: int = batch, fixed: float = fixed) -> float:
                    return full_s * (fixed + (1 - fixed) * n / batch)

                for load in (0.3, 0.5, 0.7, 0.85):
                    rate = load * servers * batch / full_s
                    pool = partial(simulate_pool, rate=rate, servers=servers, batch=batch, service_s=curve, jobs=JOBS)
                    analytic = pool_p95_s(
                        rate, np.array([batch]), np.array([full_s]), np.array([full_s]), np.array([servers])
                    )
                    cells.append(
                        GridCell(
                            servers,
                            batch,
                            fixed,
                            load,
                            float(analytic[0]),
                            greedy=pool(wait_s=WAIT_S),
                            padded=pool(wait_s=WAIT_S, sizes=pow2),
                            # the policy the analytic model assumes: wait up to the plan's batch timeout
                            timeout=pool(wait_s=(batch - 1) / rate),
                        )
                    )
    print(
        "\n| replicas | batch | fixed share | load | analytic p95 s | greedy p95 s (mean batch) | analytic/greedy | "
        "padded p95 s | analytic/padded | timeout p95 s | analytic/timeout |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        print(
            f"| {c.servers} | {c.batch} | {c.fixed:.2f} | {c.load:.2f} | {c.analytic_s:.3f} | "
            f"{c.greedy.p95_s:.3f} ({c.greedy.mean_batch:.2f}) | {c.analytic_s / c.greedy.p95_s:.3f} | "
            f"{c.padded.p95_s:.3f} | {c.analytic_s / c.padded.p95_s:.3f} | "
            f"{c.timeout.p95_s:.3f} | {c.analytic_s / c.timeout.p95_s:.3f} |"
        )
    for attr, name in POLICIES:
        ratios = np.array([c.analytic_s / getattr(c, attr).p95_s for c in cells])
        below = [c for c in cells if c.analytic_s < getattr(c, attr).p95_s]
        print(
            f"\nanalytic/simulated, {name}, over {len(cells)} cells: min {ratios.min():.3f} median "
            f"{np.median(ratios):.3f} max {ratios.max():.3f}; {len(below)} cell(s) with the analytic p95 below"
        )
        for c in below:
            print(
                f"  below: replicas {c.servers} batch {c.batch} fixed {c.fixed} load {c.load}: "
                f"{c.analytic_s:.3f} < {getattr(c, attr).p95_s:.3f}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--e2e", type=Path, nargs="*", default=list(E2E_RUNS), help="e2e_gpu.py output folders")
    ap.add_argument("--no-grid", action="store_true", help="only the replays")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    for run in args.e2e:
        e2e_replay(run)
    if not args.no_grid:
        grid()
    print(f"\n{time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
