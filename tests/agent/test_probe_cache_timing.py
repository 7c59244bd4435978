"""How a step-cache cell is timed: windows are whole trajectories, warm-up is short, skips count only when timed."""

from __future__ import annotations

import torch
from torch import nn

from agent.probe_cell import CACHE_TRAJECTORY_STEPS, SkipCounter, cache_timer
from agent.timing import TimerOptions

GPU_TIMER = TimerOptions(warmup_calls=2, warmup_s=0.5, calls_per_window=1, min_window_s=0.3, min_windows=3)


def test_a_window_is_one_trajectory_capped_at_the_trajectory_limit() -> None:
    assert cache_timer(GPU_TIMER, 8).calls_per_window == 8
    assert cache_timer(GPU_TIMER, 50).calls_per_window == CACHE_TRAJECTORY_STEPS
    # A window is never stretched past one trajectory by the plain timer's minimum window time.
    assert cache_timer(GPU_TIMER, 8).min_window_s == 0.0


def test_warm_up_is_the_plain_timers_not_a_whole_trajectory() -> None:
    # A trajectory of warm-up cost a third of a Qwen-Image batch-16 cell (30 x 5.8 s) for nothing it measures.
    t = cache_timer(GPU_TIMER, 50)
    assert t.warmup_calls == GPU_TIMER.warmup_calls
    assert t.warmup_s == GPU_TIMER.warmup_s
    assert cache_timer(TimerOptions(warmup_calls=9), 4).warmup_calls == 4


def test_two_trajectories_are_enough_to_call_the_cell_stable() -> None:
    t = cache_timer(GPU_TIMER, 28)
    assert t.min_windows == 2
    assert t.stable_windows == 2
    assert t.spread_threshold == GPU_TIMER.spread_threshold


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _CachedModel(nn.Module):
    """Runs its last block only when told to, as a first-block cache does when it reuses the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList([_Block(), _Block()])
        self.compute_last = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transformer_blocks[0](x)
        return self.transformer_blocks[1](x) if self.compute_last else x


def test_the_skip_rate_counts_only_timed_steps() -> None:
    model = _CachedModel()
    counter = SkipCounter(model)
    x = torch.zeros(1, 4)
    model.compute_last = True
    for _ in range(5):  # warm-up: a trajectory's first steps, which a cache never skips
        model(x)
    assert counter.skip_rate is None
    counter.counting = True
    for i in range(4):
        model.compute_last = i % 2 == 0
        model(x)
    assert counter.skip_rate == 0.5
    counter.close()
    model(x)
    assert counter.calls == 4
