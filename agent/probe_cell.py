"""One probe cell: a prepared stage timed at one batch size, with its cost, memory, power and bound.

The timed call is the serving stage's (`stagekit.serving.attach_served`: what a worker runs, on real or random
weights), except in a step-cache cell, whose windows are whole denoising trajectories of module steps
(`cache_timer`). FLOPs and bytes are counted on the eager module at the group's first batch and scaled for the
others; on a CPU the footprint pass (live-tensor tracking under the memory cap) shares the counting call.
A cell that fails is classified: `oom`, `unsupported` (this device cannot run it, with why) or `failed` (with
the error and where).
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agent.discover import cpu_model
from agent.memory import GIB, cpu_footprint, free_gpu
from agent.nvml import PowerSampler, clock_event_names
from agent.target import Target
from agent.timing import TimerOptions, Timing, measure
from planner.catalog import Recipe
from stagekit.flops import Cost, classify, count_cost
from stagekit.pipelines import StageUnsupported
from stagekit.recipes import PreparedStage, reset_cache

CACHE_TRAJECTORY_STEPS = 30
BaseCost = tuple[int, Cost]
"""The cost counted at a group's first batch: (batch, cost)."""


def cache_timer(timer: TimerOptions, default_steps: int) -> TimerOptions:
    """Timer for a step-cache cell: one window is one denoising trajectory, since skips depend on the step.

    At most CACHE_TRAJECTORY_STEPS steps per trajectory (a 50-step CFG Qwen-Image trajectory at batch 16 would
    take five minutes per window). Warm-up is the plain timer's (a few steps and `warmup_s`), not a whole
    trajectory: it only settles clocks and kernels, and each window resets the cache at its first step.
    """
    steps = min(default_steps, CACHE_TRAJECTORY_STEPS)
    return TimerOptions(
        warmup_calls=min(timer.warmup_calls, steps),
        warmup_s=timer.warmup_s,
        calls_per_window=steps,
        min_window_s=0.0,
        min_windows=min(timer.min_windows, 2),
        stable_windows=min(timer.stable_windows, 2),
        max_windows=timer.max_windows,
        spread_threshold=timer.spread_threshold,
        max_cell_s=timer.max_cell_s,
    )


class SkipCounter:
    """Counts denoiser calls and the calls in which the cache let the last block run (computed)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.computed = 0
        self.counting = False
        self._handles: list[Any] = []
        last = _last_block(module)
        if last is None:
            return
        child = next((c for c in last.children()), None)
        if child is None:
            return
        self._handles.append(module.register_forward_pre_hook(self._on_call))
        self._handles.append(child.register_forward_pre_hook(self._on_compute))

    def _on_call(self, *_: Any) -> None:
        self.calls += self.counting

    def _on_compute(self, *_: Any) -> None:
        self.computed += self.counting

    @property
    def skip_rate(self) -> float | None:
        if self.calls == 0 or not self._handles:
            return None
        return max(0.0, min(1.0, 1.0 - self.computed / self.calls))

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _last_block(module: nn.Module) -> nn.Module | None:
    last: nn.Module | None = None
    for name in ("transformer_blocks", "single_transformer_blocks", "blocks", "layers"):
        blocks = getattr(module, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            last = blocks[-1]
    return last


@dataclass(frozen=True)
class CellOutcome:
    """A measured cell: its row values (measurements, or status and error), the group's base cost, and whether
    the group's larger batches cannot run either (an `oom` or a failure)."""

    values: dict[str, Any]
    base_cost: BaseCost | None
    fatal: bool


@dataclass(frozen=True)
class Measured:
    """What the timed part of a cell gave."""

    cost: Cost
    timing: Timing
    power: dict[str, float | None]
    skip_rate: float | None
    peak_bytes: int | None
    compile_s: float | None


class CellProbe:
    """Measures cells on one target with one timer (the sweep's), one prepared stage and batch at a time."""

    def __init__(
        self, *, target: Target, timer: TimerOptions, default_steps: int, memory_cap_gib: float | None, seed: int
    ) -> None:
        self.target = target
        self.timer = timer
        self.default_steps = default_steps
        self.memory_cap_gib = memory_cap_gib
        self.seed = seed

    def measure(self, recipe: Recipe, prepared: PreparedStage, batch: int, base_cost: BaseCost | None) -> CellOutcome:
        """One cell: inputs at `batch`, cost, compile (first call), timed windows; a failure is recorded, not raised."""
        failure: tuple[str, str] | None = None
        try:
            prepared.runner.prepare(batch, seed=self.seed)
            cost, base_cost, peak_bytes = self._cost(prepared, batch, base_cost)
            measured = self._timed(prepared, batch, cost, peak_bytes)
        except Exception as exc:
            failure = failure_of(exc)
        if failure is not None:
            prepared.runner.inputs = {}
            free_gpu(self.target.device)  # after the except block, so the traceback no longer pins activations
            return CellOutcome({"status": failure[0], "error": failure[1]}, base_cost, fatal=True)
        return CellOutcome(self._values(recipe, prepared, batch, measured), base_cost, fatal=False)

    def _cost(
        self, prepared: PreparedStage, batch: int, base_cost: BaseCost | None
    ) -> tuple[Cost, BaseCost, int | None]:
        """FLOPs and bytes on the eager module (counting through compiled code is not reliable); later batches of
        a group scale the first batch's count (FLOPs are linear in the batch). On the CPU the footprint pass shares
        the counting call. Returns (cost, the group's base cost, the CPU footprint's peak)."""
        device = self.target.device
        footprint: dict[str, int] = {}
        plain = plain_call(prepared)

        def counted() -> object:
            if device.type == "cuda":
                return plain()
            cap = int(self.memory_cap_gib * GIB) if self.memory_cap_gib else None
            footprint["peak"] = cpu_footprint(
                plain, modules=prepared.modules.values(), inputs=prepared.runner.input_tensors, cap_bytes=cap
            )
            return None

        if base_cost is None:
            cost = count_cost(counted)
            base_cost = (batch, cost)
        else:
            cost = scale_cost(base_cost, batch, prepared.modules.values())
            if device.type != "cuda":
                counted()
        return cost, base_cost, footprint.get("peak")

    def _timed(self, prepared: PreparedStage, batch: int, cost: Cost, peak_bytes: int | None) -> Measured:
        """Compile if pending (its first call is timed as `compile_s`), then the timed windows and peak memory."""
        device = self.target.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        if prepared.compile_pending is not None and not prepared.compiled:
            prepared.apply_compile()
        timing, power, skip_rate = self._time(prepared)
        compile_s = timing.first_call_s if prepared.compiled else None
        if device.type == "cuda":
            peak_bytes = int(torch.cuda.max_memory_allocated(device))
        return Measured(
            cost=cost, timing=timing, power=power, skip_rate=skip_rate, peak_bytes=peak_bytes, compile_s=compile_s
        )

    def _time(self, prepared: PreparedStage) -> tuple[Timing, dict[str, float | None], float | None]:
        """Timed windows with NVML power sampling; a step-cache cell times whole denoising trajectories."""
        runner = prepared.runner
        timer = self.timer
        counter: SkipCounter | None = None
        if prepared.uses_cache:
            timer = cache_timer(timer, self.default_steps)
            steps = timer.calls_per_window
            latents = runner.inputs["latents"]
            counter = SkipCounter(prepared.cache_modules[0])

            def fn(i: int) -> object:
                if i == 0:
                    for m in prepared.cache_modules:
                        reset_cache(m)
                return runner.step(latents, 1.0 - (i % steps) / steps)
        else:

            def fn(i: int) -> object:
                return runner.call()

        t = self.target
        sampler = PowerSampler(t.nvml, t.handle) if t.nvml is not None and t.handle is not None else None

        def window_start() -> None:
            if counter is not None:
                counter.counting = True  # warm-up steps are a trajectory's first steps: they would bias the rate
            if sampler is not None:
                sampler.resume()

        end = sampler.pause if sampler is not None else None
        with sampler if sampler is not None else contextlib.nullcontext():
            timing = measure(fn, t.device, timer, on_window_start=window_start, on_window_end=end)
        skip = None
        if counter is not None:
            skip = counter.skip_rate
            counter.close()
        return timing, power_summary(sampler), skip

    def _values(self, recipe: Recipe, prepared: PreparedStage, batch: int, m: Measured) -> dict[str, Any]:
        """The row's measured columns; a median that never settled is kept, with why, but not `ok`."""
        timing, power = m.timing, m.power
        latency = timing.mean_ms if prepared.uses_cache else timing.median_ms
        tflops = m.cost.flops / (latency / 1000.0) / 1e12 if latency > 0 else None
        tbps = m.cost.bytes / (latency / 1000.0) / 1e12 if latency > 0 else None
        reasons = power.get("clocks_event_reasons")
        return {
            "status": "ok" if timing.stable else "failed",
            "latency_ms": latency,
            "latency_p95_ms": max(timing.p95_ms, latency) if timing.p95_measured else None,
            "latency_spread": timing.spread,
            "windows": timing.windows,
            "calls": timing.calls,
            "peak_mem_gib": m.peak_bytes / GIB if m.peak_bytes is not None else None,
            "power_w": power.get("power_w"),
            "energy_j_per_image": energy_per_image(power.get("energy_j"), timing.all_calls, batch),
            "gpu_util": power.get("util"),
            "achieved_tflops": tflops,
            "achieved_tbps": tbps,
            "tflops_per_call": m.cost.tflop,
            "bound": classify(tflops, tbps, self.target.peak_tflops(recipe.precision), self.target.peak_tbps()),
            "compile_s": m.compile_s,
            "cache_skip_rate": m.skip_rate,
            "sm_clock_mhz": power.get("sm_clock_mhz"),
            "throttle_reasons": clock_event_names(int(reasons)) if reasons is not None else None,
            "cpu_model": cpu_model(),
            "error": None if timing.stable else f"unstable: spread {timing.spread:.1%} after {timing.windows} windows",
        }


def plain_call(prepared: PreparedStage) -> Callable[[], object]:
    """One timed call of the stage from a fresh step cache (the counting and footprint pass)."""

    def call() -> object:
        for m in prepared.cache_modules:
            reset_cache(m)
        return prepared.runner.call()

    return call


def power_summary(sampler: PowerSampler | None) -> dict[str, float | None]:
    if sampler is None:
        return {}
    summary = sampler.summary()
    return {
        "power_w": summary.mean_power_w,
        "energy_j": summary.energy_j,
        "util": summary.mean_utilization_pct,
        "sm_clock_mhz": summary.mean_sm_clock_mhz,
        "clocks_event_reasons": summary.clocks_event_reasons,
    }


def energy_per_image(energy_j: float | None, calls: int, batch: int) -> float | None:
    """Energy per image over the timed windows; None for a counter that wrapped or reset during them."""
    if energy_j is None or not calls:
        return None
    per_image = energy_j / (calls * batch)
    return per_image if math.isfinite(per_image) and per_image >= 0 else None


def scale_cost(base: BaseCost, batch: int, modules: Iterable[nn.Module]) -> Cost:
    b0, cost = base
    weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    weights = min(weights, cost.bytes)
    return Cost(int(cost.flops * batch / b0), int(weights + (cost.bytes - weights) * batch / b0))


def failure_of(exc: BaseException) -> tuple[str, str]:
    """(status, error) of a cell or stage build that raised."""
    if isinstance(exc, torch.OutOfMemoryError):
        return "oom", first_line(exc)
    if isinstance(exc, StageUnsupported):
        return "unsupported", str(exc)
    if isinstance(exc, torch._dynamo.exc.FailOnRecompileLimitHit):
        limit = torch._dynamo.config.recompile_limit
        return "failed", (
            f"torch.compile reached its recompile limit ({limit}) and would have run this cell eagerly: "
            f"{first_line(exc)}; raise RecipeOptions.recompile_limit"
        )
    return ("unsupported" if is_kernel_refusal(exc) else "failed", describe(exc))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {first_line(exc)}{where}"[:1000]


def is_kernel_refusal(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in ("No viable backend", "No available kernel", "not implemented for", "not supported"))
