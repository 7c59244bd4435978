"""The stage interface between the code that runs stages (a worker's group runner) and the stages (no torch).

A `StageFn` takes a batch of item dicts and returns one dict per item (the inputs with its outputs merged in);
it synchronises the device before returning. It may carry `prepare(item) -> item` (CPU work such as tokenizing,
run in the job's own thread), `static_shapes` (a compiled stage: batches padded to warmed sizes) and
`example_items(n, height, width, steps)` (inputs of its own kind for a warm-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Item = dict[str, Any]


class StageFn(Protocol):
    def __call__(self, batch: Sequence[Item]) -> list[Item]: ...


def mark_weights(items: list[Item], weights: str) -> list[Item]:
    """Items with `weights` (real or synthetic) recorded: synthetic once any stage of the job ran on random weights
    (a split job's groups may run on different hosts), so the result says what made it."""
    for item in items:
        item["weights"] = "synthetic" if "synthetic" in (item.get("weights"), weights) else weights
    return items
