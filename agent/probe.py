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
at a hard limit and a cell cut off there is lost (benchmarks/results/h200-campaign/README.md has the call that
lost one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

from agent.memory import free_gpu, set_gpu_cap
from agent.probe_cell import CACHE_TRAJECTORY_STEPS, BaseCost, CellProbe, describe, first_line
from agent.probe_options import ProbeOptions, sizes
from agent.probe_quality import Drift, RealQuality
from agent.target import Target
from planner.catalog import Recipe, known_model, recipes
from planner.catalog.quality import quality_reference
from planner.measurements.contract import MeasurementRow
from stagekit.pipelines import StageUnsupported
from stagekit.recipes import PreparedStage, prepare
from stagekit.serving import attach_served

__all__ = ["CACHE_TRAJECTORY_STEPS", "ProbeOptions", "Sweep", "SweepState", "predicted_cell_s", "sizes"]

CellKey = tuple[str, str, str, str, int, int, int]


@dataclass
class SweepState:
    """What the sweep has done: rows (new ones), cells skipped as already done, why it stopped if it did."""

    rows: list[MeasurementRow] = field(default_factory=list)
    skipped: int = 0
    stopped: str | None = None
    started: float = field(default_factory=time.monotonic)


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
        sized = {"height": self.height, "width": self.width}
        self.quality = (
            RealQuality(self.spec, opts, target, **sized) if opts.quality and self.weights == "real" else None
        )
        measures_drift = opts.quality and self.weights == "synthetic" and opts.synthetic_drift
        self.drift = Drift(self.spec, opts, target, self._prepare, sizes=self.sizes) if measures_drift else None
        self.cell_probe = CellProbe(
            target=target,
            timer=opts.timer,
            default_steps=self.spec.default_steps,
            memory_cap_gib=opts.memory_cap_gib,
            seed=opts.seed,
        )
        self.state = SweepState(started=clock())
        self.stages = list(opts.stages or self.spec.stage_names)
        self.recipes = ordered_recipes(opts.recipes)

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.height, self.width, self.text_tokens

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
            if self.quality is not None:
                self._probe_quality(self.quality)
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
            if self.drift is not None:
                self.drift.close()
            free_gpu(self.target.device)
        return self.state

    def _probe_quality(self, quality: RealQuality) -> None:
        """Real weights: score every (stage, recipe) with cells to do through the serving pipeline, once."""
        todo = [
            r.id
            for r in self.recipes
            if any(s in r.stages and any(self.key(s, r.id, b) not in self.done for b in self.batches_for(r))
                   for s in self.stages)
        ]  # fmt: skip
        if todo:
            quality.run(todo, self.stages, self._say)

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message, 0)

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

    def _build(self, stage: str, recipe: Recipe) -> PreparedStage | tuple[str, str]:
        """The stage in the recipe's form with the serving stage attached (what the cells time), or why not."""
        try:
            prepared = self._prepare(stage, recipe, options=self.opts.recipe_options)
            attach_served(prepared, self.spec, self.opts.weights_dir, height=self.height, width=self.width)
            return prepared
        except StageUnsupported as exc:
            return "unsupported", str(exc)
        except torch.OutOfMemoryError as exc:
            return "oom", f"building the stage: {first_line(exc)}"
        except Exception as exc:
            return "failed", describe(exc)

    def _run_group(self, stage: str, recipe: Recipe, batches: list[int]) -> None:
        built = self._build(stage, recipe)
        if isinstance(built, tuple):
            # Outside the except block: the exception's traceback (and the half-built module) is gone now.
            free_gpu(self.target.device)
            for b in batches:
                self._emit(self._row(stage, recipe, b, status=built[0], error=built[1]))
            return
        prepared: PreparedStage | None = built
        try:
            assert prepared is not None
            self._run_cells(stage, recipe, prepared, batches)
        finally:
            del prepared
            free_gpu(self.target.device)

    def _run_cells(self, stage: str, recipe: Recipe, prepared: PreparedStage, batches: list[int]) -> None:
        """The group's cells in increasing batch order, until the budget or a cell its larger batches cannot pass."""
        if self.drift is not None:
            drift = self.drift.values(stage, recipe, prepared)
        else:
            drift = self.quality.values(stage, recipe) if self.quality is not None else {}
        base_cost: BaseCost | None = None
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

    def _cell(
        self,
        stage: str,
        recipe: Recipe,
        prepared: PreparedStage,
        batch: int,
        base_cost: BaseCost | None,
        drift: dict[str, Any],
    ) -> tuple[MeasurementRow, BaseCost | None, bool]:
        """Measure one cell; returns (row, cost of the group's first batch, whether larger batches can't run)."""
        outcome = self.cell_probe.measure(recipe, prepared, batch, base_cost)
        if outcome.fatal:
            return self._row(stage, recipe, batch, **outcome.values), outcome.base_cost, True
        try:
            row = self._row(stage, recipe, batch, **outcome.values, **drift)
        except ValueError as exc:  # a measurement the contract refuses must not end the sweep
            row = self._row(stage, recipe, batch, status="failed", error=f"invalid measurement: {first_line(exc)}")
        return row, outcome.base_cost, False
