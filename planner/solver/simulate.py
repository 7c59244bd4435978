"""The scheduler's batching policy on one pool, simulated: a check on the analytic p95 (`latency`).

The analytic p95 assumes each batch fills to b at the arrival rate or waits out tau = (b - 1) / lambda, then
queues as a full batch in an Allen-Cunneen GI/D/c queue. The scheduler's workers batch greedily instead
(`scheduler.batching.Batcher`): a free replica starts a batch as soon as b jobs wait or the oldest has waited
`wait_s` (`SchedulerSettings.batch_wait_s`, 0.05 s), and a compiled stage pads a short batch up to the next
warmed size (`compiled_batches`). Neither shortcut has a closed form that a MILP can use, so the solver keeps
the analytic bound and this module measures how far that bound is from the policy and on which side
(`benchmarks/p95_model.py`). It is a simulation of the policy, not of a fleet: one shared FIFO queue, Poisson
arrivals, service times as given, no hops, no worker restarts.

`simulate_workload` runs it for every dedicated pool of a solved plan, so a capacity review shows the policy's
p95 next to the bound the plan is held to (`SolverOptions.simulate_p95`). The scheduler splits a group's load
over its pools by throughput (crud/plans.py weights), so each pool is simulated on its own share of the rate
(Poisson thinned stays Poisson); a group's simulated p95 is its slowest pool's and a workload's the sum over its
groups, as for the analytic bound. A pool's batch of n images takes the performance model's latency of each
stage at n, padded as the worker pads (compiled stages run at `shape_batches` sizes); a stage with no cell at a
size runs at the plan's batch (the worst case). Shared-GPU groups are not simulated (None): their tenants'
interleaving is the analytic M/G/1 model's job.

Event loop: jobs are served in arrival order. The replica that frees first takes the queue's head batch; it
starts at max(free, min(head arrival + wait_s, arrival of the b-th job)) with every job that has arrived by
then (at most b), and is busy for `service_s(padded size)`. A job's latency is its batch's end less its
arrival.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from planner.core.batching import CompiledBatches, padded_size, shape_batches
from planner.solver.plan import GroupPlan, WorkloadPlan
from planner.solver.problem import Problem, Workload

ServiceCurve = Callable[[int], float]
"""Seconds one replica is busy with a batch of n images (n as run: after padding)."""


@dataclass(frozen=True)
class PoolSimulation:
    """Latency (s) of the simulated jobs, the mean batch as formed, and the replicas' busy share."""

    mean_s: float
    p50_s: float
    p95_s: float
    mean_batch: float
    utilization: float
    jobs: int


def simulate_pool(
    *,
    rate: float,
    servers: int,
    batch: int,
    service_s: ServiceCurve,
    wait_s: float,
    jobs: int = 20_000,
    warmup_jobs: int = 1_000,
    sizes: Sequence[int] = (),  # the warmed sizes a short batch pads up to (`scheduler.batching.shape_batches`)
    seed: int = 0,
    arrivals: Sequence[float] | None = None,
) -> PoolSimulation:
    """Poisson arrivals at `rate` images/s on `servers` replicas batching greedily up to `batch` (module doc).

    The first `warmup_jobs` jobs are left out of the percentiles (the queue starts empty). `arrivals` replays
    given arrival times (s, ascending) instead: a run's own, to compare job by job; `rate` and `jobs` then only
    name the run."""
    if rate <= 0 or servers < 1 or batch < 1 or jobs < 1:
        raise ValueError(f"need rate > 0, servers >= 1, batch >= 1, jobs >= 1 (got {rate}, {servers}, {batch}, {jobs})")
    if arrivals is not None:
        arrived = np.asarray(arrivals, dtype=np.float64)
        total = len(arrived)
    else:
        total = jobs + warmup_jobs
        arrived = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, total))
    times = arrived.tolist()  # bisect on a list: a batch's jobs are those arrived by its start
    took_of: list[float | None] = [None] * (batch + 1)  # service seconds per formed size (padding applied)
    finishes: list[float] = []  # per batch, in order; a job's latency is its batch's finish less its arrival
    ends: list[int] = []
    free = [0.0] * servers
    head = 0
    busy = 0.0
    inf = float("inf")
    while head < total:
        ready = free[0]  # the replica that frees first (a heap: its smallest entry)
        last = head + batch - 1
        full_at = times[last] if last < total else inf
        due = times[head] + wait_s
        start = due if due < full_at else full_at
        if ready > start:
            start = ready
        end_index = bisect_right(times, start, head, head + batch if last < total else total)
        n = end_index - head
        took = took_of[n]
        if took is None:
            took = took_of[n] = service_s(padded_size(n, sizes))
        finish = start + took
        finishes.append(finish)
        ends.append(end_index)
        heapq.heapreplace(free, finish)
        busy += took
        head = end_index
    counts = np.diff(np.asarray(ends), prepend=0)
    latency = np.repeat(np.asarray(finishes), counts) - arrived
    batches = len(finishes)
    measured = latency[warmup_jobs:]
    span = max(free) - times[0]
    return PoolSimulation(
        mean_s=float(measured.mean()),
        p50_s=float(np.percentile(measured, 50)),
        p95_s=float(np.percentile(measured, 95)),
        mean_batch=total / batches,
        utilization=busy / (servers * span) if span > 0 else 0.0,
        jobs=len(measured),
    )


def linear_curve(points: Sequence[tuple[int, float]]) -> ServiceCurve:
    """Service seconds linear between measured batches (as the performance model interpolates), flat outside."""
    xs = [float(b) for b, _ in sorted(points)]
    ys = [s for _, s in sorted(points)]

    def curve(n: int) -> float:
        return float(np.interp(n, xs, ys))

    return curve


def pool_curve(
    problem: Problem, w: Workload, model: str, group: GroupPlan, *, compiled_batches: CompiledBatches
) -> ServiceCurve:
    """A pool's service seconds for a batch of n images as formed (before padding).

    Each stage's median latency, inflated by its estimate's uncertainty (as the analytic queue term), times its
    calls (steps for the denoiser). A stage whose recipe compiles runs at n padded to the worker's warmed sizes
    (`scheduler.stages.GroupRunner.run` pads each static-shape stage alone), the others at n."""
    h, wd = w.resolution[model]
    steps = w.steps[model]
    compiled = {s: (r in problem.recipes and problem.recipes[r].compile != "none") for s, r in group.recipes.items()}
    sizes = shape_batches(group.batch, compiled_batches)
    full = group.service_time_s * (1 + group.uncertainty)
    memo: dict[int, float] = {}

    def curve(n: int) -> float:
        if n in memo:
            return memo[n]
        total = 0.0
        for stage, recipe in group.recipes.items():
            size = padded_size(n, sizes) if compiled[stage] else n
            cell = problem.perf.latency(group.family, model, stage, recipe, size, h, wd)
            if cell is None:
                memo[n] = full
                return full
            calls = steps if stage == "denoiser" else 1
            total += calls * cell.latency_ms * (1 + cell.uncertainty) / 1e3
        memo[n] = total
        return total

    return curve


PoolKey = tuple[object, ...]
"""What a pool's simulated p95 depends on (`pool_key`)."""


def pool_key(
    w: Workload,
    model: str,
    g: GroupPlan,
    rate: float,
    wait_s: float,
    compiled_batches: CompiledBatches,
    jobs: int,
    seed: int,
) -> PoolKey:
    """A pool's simulation inputs: its cells (family, model, recipes, size, steps), replicas, batch, its rate
    and the workers' settings; the same key is the same simulation, whichever workload or solve it is in."""
    h, wd = w.resolution[model]
    return (
        g.family,
        model,
        tuple(g.recipes.items()),
        h,
        wd,
        w.steps[model],
        g.batch,
        g.replicas,
        round(rate, 12),
        g.service_time_s,
        g.uncertainty,
        wait_s,
        compiled_batches,
        jobs,
        seed,
    )


def simulate_workload(
    problem: Problem,
    w: Workload,
    plan: WorkloadPlan,
    *,
    wait_s: float,
    compiled_batches: CompiledBatches,
    jobs: int = 20_000,
    seed: int = 0,
    cache: dict[PoolKey, float] | None = None,
) -> WorkloadPlan:
    """The plan's workload with each dedicated pool's simulated p95 and the workload's sum (module docstring).

    `cache` keeps each pool's p95 by everything the simulation depends on (`pool_key`), so re-solves that leave
    most pools as they were (the engine's hold, step 5) simulate only the pools they change."""
    groups: list[GroupPlan] = []
    by_stages: dict[tuple[str, ...], float] = {}
    shared = False
    for g in plan.groups:
        if g.shared_gpu is not None:
            groups.append(g)
            shared = True
            continue
        rate = g.utilization * g.throughput  # this pool's share of the group's rate
        key = pool_key(w, plan.model, g, rate, wait_s, compiled_batches, jobs, seed)
        p95 = cache.get(key) if cache is not None else None
        if p95 is None:
            p95 = simulate_pool(
                rate=rate,
                servers=g.replicas,
                batch=g.batch,
                service_s=pool_curve(problem, w, plan.model, g, compiled_batches=compiled_batches),
                wait_s=wait_s,
                jobs=jobs,
                seed=seed,
            ).p95_s
            if cache is not None:
                cache[key] = p95
        groups.append(replace(g, simulated_p95_s=p95))
        by_stages[g.stages] = max(by_stages.get(g.stages, 0.0), p95)
    total = sum(by_stages.values())
    return replace(plan, groups=tuple(groups), simulated_p95_s=None if shared else total)
