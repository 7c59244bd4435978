"""How long a replica of a pool takes to become ready: weights load plus compilation of every batch size it runs.

    startup(o) = sum_s weights_s / WEIGHTS_LOAD_GBPS + sum_s sum_{n in sizes(b)} compile_s(family, s, recipe_s, n)

`sizes(b)` are the batch shapes a worker of the pool warms: the scheduler pads a short batch up to the next
power of two (`compiled_batches: pow2`, SchedulerSettings' default), so a pool at batch b compiles 1, 2, 4, ...
up to b (and b itself). `compile_s` is what the agent measured for the first call of that shape (the
measurement's `compile_s`); a shape without its own measurement takes the pool batch's. A recipe that is not
compiled has no `compile_s` and adds nothing. The weights are read at WEIGHTS_LOAD_GBPS, an assumption (a local
NVMe read of safetensors), not a measurement: the agent does not time the load yet, and the plan says so where it
shows the figure.

A workload's `max_startup_s` (scenario key; `--max-startup`) leaves out every option slower to start, for fleets
that autoscale and need a replica in time; the solver names the group it blocks when nothing is left.
"""

from __future__ import annotations

from collections.abc import Sequence

from planner.perf.model import CellEstimate, PerfModel

WEIGHTS_LOAD_GBPS = 2.0
"""GB/s a worker reads weights at (assumed, see the module docstring)."""


def warmed_batches(batch: int) -> list[int]:
    """The batch shapes a pool at `batch` compiles: powers of two below it, and the batch itself."""
    sizes = {batch}
    n = 1
    while n < batch:
        sizes.add(n)
        n *= 2
    return sorted(sizes)


def compile_seconds(perf: PerfModel, cell: CellEstimate, batch: int) -> float:
    """Compile time of one stage of a pool at `batch`, over every shape it warms (module docstring)."""
    if cell.compile_s is None:
        return 0.0
    total = 0.0
    for n in warmed_batches(batch):
        at = (
            cell
            if n == cell.batch
            else perf.latency(cell.family, cell.model, cell.stage, cell.recipe, n, cell.height, cell.width)
        )
        known = at.compile_s if at is not None else None
        total += known if known is not None else cell.compile_s
    return total


def startup_seconds(perf: PerfModel, cells: Sequence[CellEstimate], batch: int) -> float:
    """Seconds from a replica's start to its first served batch (module docstring)."""
    load = 0.0
    for cell in cells:
        weights = perf.weight_gib(cell.model, cell.stage, cell.recipe) or 0.0
        load += weights * 2**30 / (WEIGHTS_LOAD_GBPS * 1e9)
    return load + sum(compile_seconds(perf, cell, batch) for cell in cells)
