"""The probe sweep: stages x recipes x batches of one model, each cell timed, costed and checked for drift.

Cells are grouped by (stage, recipe): the stage is built once in the recipe's form and swept over the batch
sizes in increasing order (a compiled module is reused, recompiling per shape; `compile_s` records it).
A compiled group starts and ends with torch._dynamo.reset() (code objects such as diffusers' transformer block
are shared across models, and their compiled entries would pile up toward dynamo's recompile limit) and runs
with `fail_on_recompile_limit_hit`: past the limit dynamo would otherwise run the function eagerly and the
cell would time eager code under a compiled recipe's name. Such a cell is `failed`, with why.
A cell that runs out of memory is recorded `oom` and the larger batches of its group `oom` without running;
a cell that cannot run here is `unsupported` with the reason; any other error is `failed` with the error.
The sweep then goes on. It stops cleanly at its time budget, and a rerun with the same output resumes:
cells already present are skipped. The budget is a deadline, not only a start limit: a cell is not started when
the group's previous cell says it would end past the budget (`predicted_cell_s`), because a device call is killed
at a hard limit and a cell cut off there is lost (a 2026-11-26 H200 call started Qwen-Image's step-cache cell at
batch 8 with 150 s of budget left; it needed about 300 s).
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agent import quality
from agent.discover import cpu_model
from agent.memory import GIB, cpu_footprint, free_gpu, set_gpu_cap
from agent.nvml import PowerSampler, clock_event_names
from agent.quality_probe import QualityProbe, QualityProbeOptions, QualityProbeResult
from agent.quality_prompts import PROMPTS
from agent.target import Target
from agent.timing import TimerOptions, Timing, measure
from planner.catalog import ModelSpec, Recipe, known_model, recipes
from planner.catalog.quality import quality_reference
from planner.measurements.contract import MeasurementRow
from stagekit.flops import Cost, classify, count_cost
from stagekit.pipelines import (
    StageRunner,
    StageSetup,
    StageUnsupported,
    build_stage,
    tiny_shapes,
)
from stagekit.recipes import PreparedStage, RecipeOptions, prepare, reset_cache
from stagekit.serving import attach_served

CellKey = tuple[str, str, str, str, int, int, int]
CACHE_TRAJECTORY_STEPS = 30


@dataclass(frozen=True)
class ProbeOptions:
    """One sweep. Sizes default to the model's own (or its tiny run's with `tiny`)."""

    model: str
    recipes: tuple[str, ...]
    batches: tuple[int, ...] = (1,)
    stages: tuple[str, ...] | None = None
    height: int | None = None
    width: int | None = None
    tiny: bool = False
    weights_dir: Path | None = None
    timer: TimerOptions = field(default_factory=TimerOptions)
    budget_s: float | None = None
    memory_cap_gib: float | None = None
    quality: bool = True
    synthetic_drift: bool = False
    quality_steps: int | None = None
    quality_prompts: int | None = None
    max_batch_by_recipe: dict[str, int] = field(default_factory=dict)
    recipe_options: RecipeOptions = field(default_factory=RecipeOptions)
    seed: int = 0


@dataclass
class SweepState:
    """What the sweep has done: rows (new ones), cells skipped as already done, why it stopped if it did."""

    rows: list[MeasurementRow] = field(default_factory=list)
    skipped: int = 0
    stopped: str | None = None
    started: float = field(default_factory=time.monotonic)


def sizes(spec: ModelSpec, opts: ProbeOptions) -> tuple[int, int, int]:
    """(height, width, text_tokens) of the sweep."""
    if opts.tiny:
        h, w, t = tiny_shapes(spec)
    else:
        h, w, t = spec.height, spec.width, spec.text_tokens
    return opts.height or h, opts.width or w, t


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


def ordered_recipes(ids: Iterable[str]) -> list[Recipe]:
    """Catalog recipes in sweep order: a stage's quality reference (its highest-precision plain recipe, fp32)
    first, since other recipes' drift is measured against it."""
    catalog = recipes()
    unknown = [r for r in ids if r not in catalog]
    if unknown:
        raise KeyError(f"unknown recipe(s) {unknown}; known: {', '.join(catalog)}")
    chosen = [catalog[r] for r in dict.fromkeys(ids)]
    refs = {ref.id for s in ("text_encoder", "denoiser", "vae_decoder") if (ref := quality_reference(s, catalog))}
    return sorted(chosen, key=lambda r: r.id not in refs)


class _SkipCounter:
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


def predicted_cell_s(batch: int, *, last_batch: int, last_wall_s: float, last_compile_s: float | None) -> float:
    """Wall time of a group's next cell at `batch`, from its previous cell at `last_batch`.

    A cell is its compile (paid again per batch size: shapes are static) plus warm-up and timed windows. The
    compile does not grow with the batch; the rest grows at most in proportion to it (a step-cache cell times
    whole trajectories, which do; a window-timed cell is capped by `TimerOptions.max_cell_s` and grows less), so
    the estimate errs long: the sweep may stop a little early, never run a cell into a hard limit it foresaw.
    """
    compile_s = min(max(last_compile_s or 0.0, 0.0), last_wall_s)
    return compile_s + (last_wall_s - compile_s) * max(batch / last_batch, 1.0)


class Sweep:
    """Runs the cells of ProbeOptions on a Target, calling `on_row` after each (for incremental output)."""

    def __init__(
        self,
        opts: ProbeOptions,
        target: Target,
        *,
        probe_run: str | None = None,
        done: set[CellKey] | None = None,
        on_row: Callable[[MeasurementRow], None] | None = None,
        progress: Callable[[str, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.opts = opts
        self.clock = clock
        self.should_stop = should_stop
        self.target = target
        self.spec = known_model(opts.model)
        self.probe_run = probe_run or str(uuid.uuid4())
        self.done = done if done is not None else set()
        self.on_row = on_row
        self.progress = progress
        self.height, self.width, self.text_tokens = sizes(self.spec, opts)
        self.weights = "real" if opts.weights_dir is not None else "synthetic"
        # Real weights: the quality probe (whole pipeline, prompt set, fp32 reference). Synthetic weights: the
        # timing is faithful, image quality is not (DESIGN.md): numeric drift only when asked, labelled synthetic.
        self.measures_quality = opts.quality and self.weights == "real"
        self.measures_drift = opts.quality and self.weights == "synthetic" and opts.synthetic_drift
        self.quality: QualityProbeResult | None = None
        self.state = SweepState(started=clock())
        self._reference: dict[str, dict[str, torch.Tensor]] = {}
        self._ref_vae: StageRunner | None = None
        self.stages = list(opts.stages or self.spec.stage_names)
        self.recipes = ordered_recipes(opts.recipes)

    # -- planning -------------------------------------------------------------------------------------------
    def key(self, stage: str, recipe: str, batch: int) -> CellKey:
        return (self.target.family_id, self.spec.id, stage, recipe, batch, self.height, self.width)

    def batches_for(self, recipe: Recipe) -> list[int]:
        cap = self.opts.max_batch_by_recipe.get(recipe.id)
        return sorted(b for b in set(self.opts.batches) if cap is None or b <= cap)

    def cells(self) -> list[CellKey]:
        return [
            self.key(s, r.id, b)
            for s in self.stages
            for r in self.recipes
            for b in self.batches_for(r)
            if s in r.stages
        ]

    def total(self) -> int:
        return len([c for c in self.cells() if c not in self.done])

    # -- rows -----------------------------------------------------------------------------------------------
    def _row(self, stage: str, recipe: Recipe, batch: int, **values: Any) -> MeasurementRow:
        base: dict[str, Any] = {
            "gpu_family": self.target.family_id,
            "model": self.spec.id,
            "stage": stage,
            "recipe": recipe.id,
            "batch": batch,
            "height": self.height,
            "width": self.width,
            "weights": self.weights,
            "source": "measured",
            "gpu_memory_gib": self.target.memory_gib,
            "measured_at": datetime.now(UTC),
            "probe_run": self.probe_run,
            **self.target.provenance(),
        }
        if recipe.quantization == "none" or self.opts.recipe_options.quant_backend != "torchao":
            # The column names what quantized the cell, not what happens to be installed: a cell quantized by
            # the agent's own layers must not read as torchao's (docs/agent.md, "fp8 and int8").
            base["torchao"] = None
        base.update(values)
        if isinstance(base.get("error"), str):
            base["error"] = base["error"][:2000]
        return MeasurementRow.model_validate(base)

    def _emit(self, row: MeasurementRow) -> None:
        self.state.rows.append(row)
        self.done.add(row.cell)
        if self.on_row is not None:
            self.on_row(row)
        if self.progress is not None:
            self.progress(f"{row.stage} {row.recipe} b{row.batch}: {row.status}", 1)

    def _out_of_budget(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.state.stopped = "asked to stop"
            return True
        if self.opts.budget_s is None:
            return False
        if self.clock() - self.state.started > self.opts.budget_s:
            self.state.stopped = f"time budget of {self.opts.budget_s:.0f} s reached"
            return True
        return False

    def _would_overrun(
        self, stage: str, recipe: Recipe, batch: int, last: tuple[int, float, float | None] | None
    ) -> bool:
        """Whether the next cell would end past the budget; `last` is the group's previous (batch, wall, compile)."""
        if self.opts.budget_s is None or last is None:
            return False
        left = self.opts.budget_s - (self.clock() - self.state.started)
        need = predicted_cell_s(batch, last_batch=last[0], last_wall_s=last[1], last_compile_s=last[2])
        if need <= left:
            return False
        self.state.stopped = (
            f"time budget: {stage} {recipe.id} batch {batch} would take about {need:.0f} s (batch {last[0]} took "
            f"{last[1]:.0f} s) and {max(left, 0.0):.0f} s of the {self.opts.budget_s:.0f} s budget are left; "
            "a rerun resumes from it"
        )
        return True

    # -- the sweep ------------------------------------------------------------------------------------------
    def run(self) -> SweepState:
        set_gpu_cap(self.target.device, self.opts.memory_cap_gib)
        try:
            if self.measures_quality:
                self._probe_quality()
            for stage in self.stages:
                for recipe in self.recipes:
                    if stage not in recipe.stages:
                        continue
                    todo = [b for b in self.batches_for(recipe) if self.key(stage, recipe.id, b) not in self.done]
                    self.state.skipped += len(self.batches_for(recipe)) - len(todo)
                    if not todo:
                        continue
                    if self._out_of_budget():
                        return self.state
                    self._group(stage, recipe, todo)
                    if self.state.stopped:
                        return self.state
        finally:
            self._ref_vae = None
            self._reference.clear()
            free_gpu(self.target.device)
        return self.state

    def _prepare(self, stage: str, recipe: Recipe, **extra: Any) -> PreparedStage:
        """The stage built for this probe's model, device, size and weights."""
        return prepare(
            self.spec,
            stage,
            recipe,
            device=self.target.device,
            tiny=self.opts.tiny,
            height=self.height,
            width=self.width,
            text_tokens=self.text_tokens,
            weights_dir=self.opts.weights_dir,
            **extra,
        )

    def _group(self, stage: str, recipe: Recipe, batches: list[int]) -> None:
        if recipe.compile == "none":
            self._run_group(stage, recipe, batches)
            return
        torch._dynamo.reset()
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                self._run_group(stage, recipe, batches)
        finally:
            torch._dynamo.reset()

    def _run_group(self, stage: str, recipe: Recipe, batches: list[int]) -> None:
        prepared: PreparedStage | None = None
        failure: tuple[str, str] | None = None
        try:
            prepared = self._prepare(stage, recipe, options=self.opts.recipe_options)
            if self.opts.weights_dir is not None:  # real weights: time the serving stage itself
                attach_served(prepared, self.spec, self.opts.weights_dir, height=self.height, width=self.width)
        except StageUnsupported as exc:
            failure = ("unsupported", str(exc))
        except torch.OutOfMemoryError as exc:
            failure = ("oom", f"building the stage: {_first_line(exc)}")
        except Exception as exc:
            failure = ("failed", _describe(exc))
        if failure is not None or prepared is None:
            # Outside the except block: the exception's traceback (and the half-built module) is gone now.
            free_gpu(self.target.device)
            status, error = failure or ("failed", "the stage was not built")
            for b in batches:
                self._emit(self._row(stage, recipe, b, status=status, error=error))
            return
        try:
            drift = self._quality(stage, recipe, prepared) if self.measures_drift else self._real_quality(stage, recipe)
            base_cost: tuple[int, Cost] | None = None
            last: tuple[int, float, float | None] | None = None
            for i, batch in enumerate(batches):
                if self._out_of_budget() or self._would_overrun(stage, recipe, batch, last):
                    return
                started = self.clock()
                row, base_cost, fatal = self._cell(stage, recipe, prepared, batch, base_cost, drift)
                last = (batch, self.clock() - started, row.compile_s)
                self._emit(row)
                if fatal:
                    status = row.status
                    why = f"not run: batch {batch} already ended {status}" if status == "oom" else row.error
                    for b in batches[i + 1 :]:
                        self._emit(self._row(stage, recipe, b, status=status, error=why))
                    return
        finally:
            del prepared
            free_gpu(self.target.device)

    def _cell(
        self,
        stage: str,
        recipe: Recipe,
        prepared: PreparedStage,
        batch: int,
        base_cost: tuple[int, Cost] | None,
        drift: dict[str, Any],
    ) -> tuple[MeasurementRow, tuple[int, Cost] | None, bool]:
        """Measure one cell; returns (row, cost of the group's first batch, whether larger batches can't run)."""
        runner = prepared.runner
        device = self.target.device
        failure: tuple[str, str] | None = None
        try:
            runner.prepare(batch, seed=self.opts.seed)
            # FLOPs and bytes on the eager module (counting through compiled code is not reliable); later
            # batches of a compiled group scale the first batch's count (FLOPs are linear in the batch).
            # On the CPU the footprint pass (live-tensor tracking, memory cap) shares the counting call.
            footprint: dict[str, int] = {}
            plain = self._plain_call(prepared)

            def counted() -> object:
                if device.type == "cuda":
                    return plain()
                cap = int(self.opts.memory_cap_gib * GIB) if self.opts.memory_cap_gib else None
                footprint["peak"] = cpu_footprint(
                    plain, modules=prepared.modules.values(), inputs=runner.input_tensors, cap_bytes=cap
                )
                return None

            if base_cost is None:
                cost = count_cost(counted)
                base_cost = (batch, cost)
            else:
                cost = _scale_cost(base_cost, batch, prepared.modules.values())
                if device.type != "cuda":
                    counted()
            peak_bytes: int | None = footprint.get("peak")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            compile_s: float | None = None
            if prepared.compile_pending is not None and not prepared.compiled:
                prepared.apply_compile()
            timing, power, skip_rate = self._time(prepared, batch)
            if prepared.compiled:
                compile_s = timing.first_call_s
            if device.type == "cuda":
                peak_bytes = int(torch.cuda.max_memory_allocated(device))
        except torch.OutOfMemoryError as exc:
            failure = ("oom", _first_line(exc))
        except StageUnsupported as exc:
            failure = ("unsupported", str(exc))
        except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
            limit = torch._dynamo.config.recompile_limit
            failure = (
                "failed",
                f"torch.compile reached its recompile limit ({limit}) and would have run this cell eagerly: "
                f"{_first_line(exc)}; raise RecipeOptions.recompile_limit",
            )
        except Exception as exc:
            failure = ("unsupported" if _is_kernel_refusal(exc) else "failed", _describe(exc))
        if failure is not None:
            runner.inputs = {}
            free_gpu(device)  # after the except block, so the traceback no longer pins activations
            return self._row(stage, recipe, batch, status=failure[0], error=failure[1]), base_cost, True
        latency = timing.mean_ms if prepared.uses_cache else timing.median_ms
        achieved_tflops = cost.flops / (latency / 1000.0) / 1e12 if latency > 0 else None
        achieved_tbps = cost.bytes / (latency / 1000.0) / 1e12 if latency > 0 else None
        bound = classify(
            achieved_tflops, achieved_tbps, self.target.peak_tflops(recipe.precision), self.target.peak_tbps()
        )
        energy = power.get("energy_j")
        per_image = energy / (timing.all_calls * batch) if energy is not None and timing.all_calls else None
        if per_image is not None and not (math.isfinite(per_image) and per_image >= 0):
            per_image = None  # an energy counter that wrapped or reset during the windows
        reasons = power.get("clocks_event_reasons")
        values: dict[str, Any] = {
            # A median that never settled is no measurement to plan on: kept, with why, but not ok.
            "status": "ok" if timing.stable else "failed",
            "latency_ms": latency,
            "latency_p95_ms": max(timing.p95_ms, latency) if timing.p95_measured else None,
            "latency_spread": timing.spread,
            "windows": timing.windows,
            "calls": timing.calls,
            "peak_mem_gib": peak_bytes / GIB if peak_bytes is not None else None,
            "power_w": power.get("power_w"),
            "energy_j_per_image": per_image,
            "gpu_util": power.get("util"),
            "achieved_tflops": achieved_tflops,
            "achieved_tbps": achieved_tbps,
            "tflops_per_call": cost.tflop,
            "bound": bound,
            "compile_s": compile_s,
            "cache_skip_rate": skip_rate,
            "sm_clock_mhz": power.get("sm_clock_mhz"),
            "throttle_reasons": clock_event_names(int(reasons)) if reasons is not None else None,
            "cpu_model": cpu_model(),
            "error": None if timing.stable else f"unstable: spread {timing.spread:.1%} after {timing.windows} windows",
            **drift,
        }
        try:
            row = self._row(stage, recipe, batch, **values)
        except ValueError as exc:  # a measurement the contract refuses must not end the sweep
            row = self._row(stage, recipe, batch, status="failed", error=f"invalid measurement: {_first_line(exc)}")
        return row, base_cost, False

    def _plain_call(self, prepared: PreparedStage) -> Callable[[], object]:
        def call() -> object:
            for m in prepared.cache_modules:
                reset_cache(m)
            return prepared.runner.call()

        return call

    def _time(self, prepared: PreparedStage, batch: int) -> tuple[Timing, dict[str, float | None], float | None]:
        """Timed windows with NVML power sampling; a step-cache cell times whole denoising trajectories."""
        runner = prepared.runner
        timer = self.opts.timer
        counter: _SkipCounter | None = None
        if prepared.uses_cache:
            timer = cache_timer(timer, self.spec.default_steps)
            steps = timer.calls_per_window
            latents = runner.inputs["latents"]
            module = prepared.cache_modules[0]
            counter = _SkipCounter(module)

            def fn(i: int) -> object:
                if i == 0:
                    for m in prepared.cache_modules:
                        reset_cache(m)
                return runner.step(latents, 1.0 - (i % steps) / steps)
        else:

            def fn(i: int) -> object:
                return runner.call()

        sampler = (
            PowerSampler(self.target.nvml, self.target.handle)
            if self.target.nvml is not None and self.target.handle is not None
            else None
        )

        def window_start() -> None:
            if counter is not None:
                counter.counting = True  # warm-up steps are a trajectory's first steps: they would bias the rate
            if sampler is not None:
                sampler.resume()

        with sampler if sampler is not None else contextlib.nullcontext():
            timing = measure(
                fn,
                self.target.device,
                timer,
                on_window_start=window_start,
                on_window_end=sampler.pause if sampler is not None else None,
            )
        power: dict[str, float | None] = {}
        if sampler is not None:
            summary = sampler.summary()
            power = {
                "power_w": summary.mean_power_w,
                "energy_j": summary.energy_j,
                "util": summary.mean_utilization_pct,
                "sm_clock_mhz": summary.mean_sm_clock_mhz,
                "clocks_event_reasons": summary.clocks_event_reasons,
            }
        skip = None
        if counter is not None:
            skip = counter.skip_rate
            counter.close()
        return timing, power, skip

    # -- quality ----------------------------------------------------------------------------------------------
    def _probe_quality(self) -> None:
        """Real weights: score every (stage, recipe) with cells to do through the serving pipeline, once."""
        assert self.opts.weights_dir is not None
        todo = [
            r.id
            for r in self.recipes
            if any(s in r.stages and any(self.key(s, r.id, b) not in self.done for b in self.batches_for(r))
                   for s in self.stages)
        ]  # fmt: skip
        if not todo:
            return
        prompts = PROMPTS[: self.opts.quality_prompts] if self.opts.quality_prompts else PROMPTS
        opts = QualityProbeOptions(
            model=self.spec.id,
            folder=self.opts.weights_dir,
            recipes=tuple(todo),
            stages=tuple(self.stages),
            prompts=prompts,
            seed=self.opts.seed,
            steps=self.opts.quality_steps,
            height=self.height if not self.opts.tiny else None,
            width=self.width if not self.opts.tiny else None,
            tiny=self.opts.tiny,
            device=str(self.target.device),
            options=self.opts.recipe_options,
        )
        if self.progress is not None:
            self.progress(f"quality probe: {len(prompts)} prompts, recipes {', '.join(todo)}", 0)
        try:
            self.quality = QualityProbe(opts, progress=self._say).run()
        except Exception as exc:  # the timing goes on; the quality stays unknown, and the run says why
            self.quality = QualityProbeResult(lpips_status=f"quality probe failed: {_describe(exc)}")
        finally:
            free_gpu(self.target.device)

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message, 0)

    def _real_quality(self, stage: str, recipe: Recipe) -> dict[str, Any]:
        if self.quality is None:
            return {}
        got = self.quality.get(stage, recipe.id)
        return got.row_values() if got is not None else {}

    def _quality(self, stage: str, recipe: Recipe, prepared: PreparedStage) -> dict[str, Any]:
        """Drift of this recipe against the stage's quality reference (fp32) at batch 1, same seed and inputs.

        Runs before the group's timing, so a compiled recipe is scored eagerly here: per-stage drift is numeric
        drift of the recipe's arithmetic; the whole-pipeline quality of real weights (agent/quality_probe.py)
        scores compiled recipes after compilation.
        """
        outputs: dict[str, torch.Tensor] | None = None
        try:
            outputs = self._stage_outputs(stage, prepared)
        except Exception:  # drift is optional: a failure here must not lose the latency cells
            outputs = None
        if outputs is None:
            free_gpu(self.target.device)
            return {}
        reference = quality_reference(stage, recipes())
        if reference is not None and recipe.id == reference.id:
            self._reference[stage] = outputs
        ref = self._reference.get(stage)
        if ref is None:
            ref = self._reference_outputs(stage)
            if ref is None:
                return {}
        drift: dict[str, Any] = {"quality_weights": self.weights}
        with contextlib.suppress(ValueError):
            if "latent" in outputs and "latent" in ref:
                drift["psnr_latent"] = quality.psnr(outputs["latent"], ref["latent"])
        with contextlib.suppress(ValueError):
            if "image" in outputs and "image" in ref:
                lo, hi = ref["image"].min(), ref["image"].max()
                span = (hi - lo).clamp(min=1e-6)
                a = ((outputs["image"] - lo) / span).clamp(0, 1)
                b = ((ref["image"] - lo) / span).clamp(0, 1)
                drift["psnr_image"] = quality.psnr(a, b, data_range=1.0)
                drift["ssim_image"] = quality.ssim(a, b, data_range=1.0)
        if len(drift) == 1:
            return {}
        return drift

    def _reference_outputs(self, stage: str) -> dict[str, torch.Tensor] | None:
        ref_recipe = quality_reference(stage, recipes())
        if ref_recipe is None:
            return None
        try:
            ref = self._prepare(stage, ref_recipe)
            out = self._stage_outputs(stage, ref)
        except Exception:
            return None
        finally:
            free_gpu(self.target.device)
        self._reference[stage] = out
        return out

    def _decoder(self) -> StageRunner | None:
        """The reference VAE (fp32) that turns denoised latents into images for the image metrics."""
        if self._ref_vae is None and "vae_decoder" in self.spec.stage_names:
            built = build_stage(
                self.spec,
                "vae_decoder",
                tiny=self.opts.tiny,
                device=self.target.device,
                dtype=torch.float32,
                weights_dir=self.opts.weights_dir,
            )
            setup = StageSetup(
                self.spec,
                "vae_decoder",
                self.height,
                self.width,
                self.text_tokens,
                self.opts.tiny,
                self.target.device,
                torch.float32,
            )
            self._ref_vae = StageRunner(setup, built.modules)
        return self._ref_vae

    def _stage_outputs(self, stage: str, prepared: PreparedStage) -> dict[str, torch.Tensor]:
        runner = prepared.runner
        served, runner.served = runner.served, None  # drift compares the modules' outputs on the same inputs
        runner.prepare(1, seed=self.opts.seed + 1)
        try:
            if stage == "text_encoder":
                ctx = runner.call_context or contextlib.nullcontext()
                with ctx:
                    return {"latent": runner.conditioning().cpu()}
            if stage == "vae_decoder":
                return {"image": runner.call().float().cpu()}
            latents: torch.Tensor = runner.inputs["latents"]
            steps = max(1, self.opts.quality_steps or 4)
            for m in prepared.cache_modules:
                reset_cache(m)
            x = latents
            for i in range(steps):
                t0, t1 = 1.0 - i / steps, 1.0 - (i + 1) / steps
                v = runner.step(x, t0)
                x = (x.float() + (t1 - t0) * v.float()).to(latents.dtype)
            out: dict[str, torch.Tensor] = {"latent": x.float().cpu()}
            vae = self._decoder()
            if vae is not None:
                with torch.inference_mode():
                    out["image"] = vae.vae_decode(x.to(torch.float32)).float().cpu()
            return out
        finally:
            runner.inputs = {}
            runner.served = served


def _scale_cost(base: tuple[int, Cost], batch: int, modules: Iterable[nn.Module]) -> Cost:
    b0, cost = base
    weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    weights = min(weights, cost.bytes)
    return Cost(int(cost.flops * batch / b0), int(weights + (cost.bytes - weights) * batch / b0))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {_first_line(exc)}{where}"[:1000]


def _is_kernel_refusal(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in ("No viable backend", "No available kernel", "not implemented for", "not supported"))
