"""The stable-window timer and the cost counters."""

from __future__ import annotations

import dataclasses
import time

import torch

from agent.timing import SMOKE_TIMER, TimerOptions, measure
from stagekit.flops import classify, count_cost


def test_measure_a_steady_call_is_stable_and_close() -> None:
    opts = TimerOptions(
        warmup_calls=1,
        warmup_s=0.0,
        calls_per_window=3,
        min_window_s=0.0,
        min_windows=3,
        stable_windows=3,
        max_windows=8,
        spread_threshold=0.5,
        max_cell_s=5.0,
    )
    t = measure(lambda _i: time.sleep(0.004), torch.device("cpu"), opts)
    assert t.stable
    assert 3.5 <= t.median_ms <= 30.0
    assert t.p95_ms >= t.median_ms
    assert t.windows >= 3
    # Three calls a window asked, but the three stable windows must hold 20 calls for a p95: 7 each.
    assert t.calls == 21
    assert t.all_calls >= 21
    assert t.p95_measured


def test_too_few_timed_calls_give_no_p95() -> None:
    """Three one-call windows (39% of the first campaign's cells) have no 95th percentile: only a slowest call."""
    opts = TimerOptions(
        warmup_calls=1,
        warmup_s=0.0,
        calls_per_window=1,
        min_window_s=0.0,
        min_windows=3,
        stable_windows=3,
        max_windows=3,
        spread_threshold=10.0,
        max_cell_s=5.0,
        min_p95_calls=0,
    )
    t = measure(lambda _i: time.sleep(0.002), torch.device("cpu"), opts)
    assert t.calls == 3
    assert not t.p95_measured


def test_measure_stops_an_unstable_cell_at_max_windows() -> None:
    calls = {"n": 0}

    def noisy(_i: int) -> None:
        calls["n"] += 1
        time.sleep(0.001 if calls["n"] % 2 else 0.008)

    # The smoke timer's one-call windows, but demanding a 1% spread it cannot reach, over at most 4 windows.
    opts = dataclasses.replace(SMOKE_TIMER, max_windows=4, spread_threshold=0.01)
    t = measure(noisy, torch.device("cpu"), opts)
    assert not t.stable
    assert t.windows == 4
    assert t.spread > 0.01


def test_count_cost_of_a_matmul() -> None:
    a = torch.randn(64, 32)
    b = torch.randn(32, 16)
    cost = count_cost(lambda: a @ b)
    assert cost.flops == 2 * 64 * 32 * 16
    assert cost.bytes == (64 * 32 + 32 * 16 + 64 * 16) * 4


def test_count_cost_of_int8_matmul_is_registered() -> None:
    a = torch.randint(-8, 8, (32, 64), dtype=torch.int8)
    b = torch.randint(-8, 8, (64, 16), dtype=torch.int8)
    assert count_cost(lambda: torch._int_mm(a, b)).flops == 2 * 32 * 64 * 16


def test_classify() -> None:
    assert classify(800.0, 0.5, 989.0, 3.35) == "compute"
    assert classify(50.0, 2.9, 989.0, 3.35) == "memory"
    assert classify(5.0, 0.1, 989.0, 3.35) == "overhead"
    assert classify(5.0, 0.1, None, 3.35) is None
