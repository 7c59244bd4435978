"""benchmarks/e2e_gpu.py's capacity estimate from a standing queue's completion times.

On the H100 (2026-11-26 20:12) the queue of 24 ran as batches of 5, 8, 8 and 3: counting the plan's batch (8)
as the first batch put five images finished at the window's start inside it and read 1.24 images/s from a
worker that served 0.94-0.97 per busy second. The first batch is now read from the times.
"""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark

e2e = load_benchmark("e2e_gpu")


def _completions(sizes: list[int], batch_s: float, spread_s: float = 0.15) -> list[float]:
    """Each batch's items finish together, spread by their result writes."""
    out: list[float] = []
    for b, n in enumerate(sizes):
        out += [(b + 1) * batch_s + spread_s * i / max(n - 1, 1) for i in range(n)]
    return out


def test_a_short_first_batch_is_not_counted_in_the_window() -> None:
    times = _completions([5, 8, 8, 3], batch_s=8.0)
    rate = e2e.served_rate(times, batches=3)
    served_after_first = 8 + 8 + 3
    assert rate == pytest.approx(served_after_first / (times[-1] - times[4]))
    assert rate < 8 / 8.0 * 1.05  # no more than one batch of 8 per 8 s
    assert rate > 0.75


def test_batch_one_queue() -> None:
    times = [2.9 * i for i in range(1, 7)]
    assert e2e.served_rate(times, batches=6) == pytest.approx(1 / 2.9)


def test_one_cluster_is_refused() -> None:
    with pytest.raises(SystemExit, match="raise --saturation-batches"):
        e2e.served_rate([1.0, 1.01, 1.02], batches=1)
