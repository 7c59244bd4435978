"""A stable-window timer: warm up, then time windows of calls until the last windows agree.

Each call is bracketed by CUDA events recorded on the stream (no host sync between calls, so the GPU queue
stays as full as in serving); the host syncs once per window to read them. A cell is stable when the spread
of the last `stable_windows` window means, (max - min) / median, is under `spread_threshold`; the timer then
reports the median and p95 per call over those windows. Windows are sized so those windows hold at least
`min_p95_calls` calls: a 95th percentile of fewer is only the largest sample, so `Timing.p95_measured` is false
then and the probe stores no p95 (docs/agent.md, "A probe cell"). Unstable cells still end (at
`max_windows`, or past `max_cell_s` once `min_windows` are done) and report their spread; the probe does not mark
them ok.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TimerOptions:
    """Knobs of one timed cell (defaults fit a GPU; tests pass small ones)."""

    warmup_calls: int = 3
    warmup_s: float = 1.0
    calls_per_window: int = 5
    min_window_s: float = 0.25
    min_windows: int = 3
    stable_windows: int = 3
    max_windows: int = 12
    spread_threshold: float = 0.05
    max_cell_s: float = 60.0
    min_p95_calls: int = 20
    """Timed calls the stable windows hold at least (windows are sized for it): the fewest for a p95."""


MIN_P95_CALLS = 20
"""The fewest timed calls whose 95th percentile the probe stores (below it `latency_p95_ms` stays empty)."""
# One warm-up call, two one-call windows, no stability demanded: a smoke run of the real code path on tiny
# models on the CPU (tests, `benchmarks/campaign.py --tiny`), not a measurement.
SMOKE_TIMER = TimerOptions(
    warmup_calls=1,
    warmup_s=0.0,
    calls_per_window=1,
    min_window_s=0.0,
    min_windows=2,
    stable_windows=2,
    max_windows=2,
    spread_threshold=10.0,
    max_cell_s=5.0,
    min_p95_calls=0,
)


@dataclass(frozen=True)
class Timing:
    """Latency per call over the stable windows (milliseconds), and how the measurement went."""

    median_ms: float
    p95_ms: float
    mean_ms: float
    spread: float
    windows: int
    calls: int
    all_calls: int
    first_call_s: float
    stable: bool
    measured_s: float

    @property
    def p95_measured(self) -> bool:
        """Whether enough calls were timed for `p95_ms` to be a 95th percentile rather than the slowest call."""
        return self.calls >= MIN_P95_CALLS


class _Clock:
    """CUDA events on a GPU, perf_counter on the CPU: per-call durations in milliseconds."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def run_window(self, fn: Callable[[int], object], calls: int) -> list[float]:
        if self.cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]  # type: ignore[no-untyped-call]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]  # type: ignore[no-untyped-call]
            for i in range(calls):
                starts[i].record()
                fn(i)
                ends[i].record()
            torch.cuda.synchronize(self.device)
            return [float(s.elapsed_time(e)) for s, e in zip(starts, ends, strict=True)]
        out: list[float] = []
        for i in range(calls):
            t0 = time.perf_counter()
            fn(i)
            out.append((time.perf_counter() - t0) * 1000.0)
        return out


def measure(
    fn: Callable[[int], object],
    device: torch.device,
    options: TimerOptions,
    *,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
) -> Timing:
    """Time `fn(i)` (i = call index in its window). Callbacks bracket each timed window (power sampling).

    The first call's duration is returned separately (`first_call_s`): with torch.compile it is the compile.
    """
    clock = _Clock(device)
    clock.sync()
    t0 = time.perf_counter()
    fn(0)
    clock.sync()
    first_call_s = time.perf_counter() - t0
    # Warm-up: at least warmup_calls, and until warmup_s has passed (clocks and caches settle).
    warm_start = time.perf_counter()
    done = 1
    # No call-count cap: a GPU idles at a few hundred MHz and needs real work, not 50 short calls, to clock up.
    while done < options.warmup_calls or time.perf_counter() - warm_start < options.warmup_s:
        fn(done)
        done += 1
    clock.sync()
    # Size windows from the warm calls (the first call may include compilation, so it is used only alone).
    warm_calls = done - 1
    per_call = (time.perf_counter() - warm_start) / warm_calls if warm_calls > 0 else first_call_s
    per_call_estimate = max(per_call, 1e-6)
    calls = max(
        options.calls_per_window,
        math.ceil(options.min_window_s / per_call_estimate),
        math.ceil(options.min_p95_calls / max(options.stable_windows, 1)),
    )
    calls = min(calls, 1000)

    windows: list[list[float]] = []
    start = time.perf_counter()
    stable = False
    while True:
        if on_window_start is not None:
            on_window_start()
        windows.append(clock.run_window(fn, calls))
        if on_window_end is not None:
            on_window_end()
        n = len(windows)
        if n >= max(options.min_windows, options.stable_windows):
            means = [statistics.fmean(w) for w in windows[-options.stable_windows :]]
            spread = (max(means) - min(means)) / statistics.median(means)
            if spread <= options.spread_threshold:
                stable = True
                break
        if n >= options.max_windows or (n >= options.min_windows and time.perf_counter() - start > options.max_cell_s):
            break
    tail = windows[-options.stable_windows :]
    means = [statistics.fmean(w) for w in tail]
    spread = (max(means) - min(means)) / statistics.median(means) if len(means) > 1 else 0.0
    samples = [x for w in tail for x in w]
    median = statistics.median(samples)
    return Timing(
        median_ms=median,
        p95_ms=max(float(np.percentile(samples, 95.0)), median),  # linear interpolation
        mean_ms=statistics.fmean(samples),
        spread=spread,
        windows=len(windows),
        calls=len(samples),
        all_calls=sum(len(w) for w in windows),
        first_call_s=first_call_s,
        stable=stable,
        measured_s=time.perf_counter() - start,
    )
