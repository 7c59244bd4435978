"""The batching policy the workers run and the solver's simulation assumes: one home, read by both.

The scheduler's workers (scheduler/batching.py, scheduler/worker/) pad a short batch of a compiled stage up to
the next warmed size, and the solver's p95 simulation (planner.solver.simulate) replays the same padding; both
read the functions and the defaults here, so a plan simulates what the workers run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, get_args

CompiledBatches = Literal["pow2", "plan", "off"]
"""Which batch sizes a compiled (static-shape) stage runs at; see `shape_batches`."""

DEFAULT_COMPILED_BATCHES: Final[CompiledBatches] = "pow2"
"""The padding workers run and the simulation assumes when no scenario sets one."""
DEFAULT_BATCH_WAIT_S: Final[float] = 0.05
"""The longest a batch waits to fill up, when no scenario sets it."""


@dataclass(frozen=True)
class BatchingPolicy:
    """How a fleet's workers form batches: the one value the solver's simulation assumes and the workers run.

    A scenario's `batching:` section sets it; the plan solved from that scenario carries it (the plan JSON's
    `batching`, present when set) and the workers serving that plan read it from the routing table. A worker's
    own `SCHEDULER_COMPILED_BATCHES` / `SCHEDULER_BATCH_WAIT_S` overrides it (and says the plan assumed otherwise).
    """

    compiled_batches: CompiledBatches = DEFAULT_COMPILED_BATCHES
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchingPolicy:
        """The policy a plan JSON carries; unknown or bad values fall back to the defaults, key by key."""
        compiled = data.get("compiled_batches", DEFAULT_COMPILED_BATCHES)
        wait = data.get("batch_wait_s", DEFAULT_BATCH_WAIT_S)
        return cls(
            compiled_batches=compiled if compiled in get_args(CompiledBatches) else DEFAULT_COMPILED_BATCHES,
            batch_wait_s=float(wait) if isinstance(wait, int | float) and wait >= 0 else DEFAULT_BATCH_WAIT_S,
        )


def shape_batches(limit: int, policy: CompiledBatches) -> tuple[int, ...]:
    """The batch sizes a static-shape stage is compiled for, smallest first; () for no padding.

    A compiled stage (torch.compile with dynamic=False, CUDA graphs) holds one graph per input shape, and a batch
    of a size it has not seen compiles a new one in the middle of serving: tens of seconds on a GPU, while the
    jobs of that batch and every job behind it wait. So the worker compiles a fixed set of sizes before it takes
    jobs and pads a short batch up to the next one (the vLLM and TensorRT convention):

        pow2: 1, 2, 4, ... below `limit`, and `limit` itself (log2(limit) + 1 compiles; a padded batch costs at
              most twice its own work, and only at light load, when the GPU has time to spare);
        plan: `limit` only (one compile; every short batch costs a full one);
        off:  no padding: each new size compiles when it is first formed.
    """
    if policy == "off" or limit < 1:
        return ()
    if policy == "plan":
        return (limit,)
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != limit:
        sizes.append(limit)
    return tuple(sizes)


def padded_size(n: int, sizes: Sequence[int]) -> int:
    """The smallest of `sizes` that holds `n` items; `n` itself when none does (or there are none)."""
    return min((s for s in sizes if s >= n), default=n)
