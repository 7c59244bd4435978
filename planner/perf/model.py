"""The performance model: latency and memory of any (family, model, stage, recipe, batch, resolution) cell.

Where a value comes from, in order of preference:
1. measured: a measurement row of the cell with status `ok`. Several rows of one cell: a row of
   `override_rows` (a scenario's own `measurements:` file, DESIGN.md contract 2: "used for this run") beats
   every row of `rows` (the store's), whatever its source or date, because it is what the user asked this run
   to plan from, and a contract-only CSV has no `measured_at` to win on; then, within each of the two sets,
   `source=measured` beats `estimated`. Among a scenario file's rows the newest `measured_at` wins, then real
   weights. The store's rows are one per source (each host's newest, and the newest import:
   `planner.crud.measurements.measurements_query`) and are combined, not replaced: the median row stands for
   the cell (the slower middle of an even count), so one host's lie does not move a plan, and the sources'
   relative spread (max - min) / (2 x median) is the cell's uncertainty (0 for one source); an imported row
   labelled `estimated` keeps its label and gets `imported_uncertainty` (0.30) on top. Quality is not
   overridden: it keeps the worst value over both sets (the conservative side).
2. interpolated: the same family measured at a smaller and a larger batch of the same (model, stage, recipe,
   resolution). Latency, p95 and memory are linear in batch between the two nearest measured batches (the
   latency curve is concave at small batches, so this over-estimates, the safe side). Uncertainty
   0.05 per doubling between the two batches. No extrapolation beyond the measured range.
3. transferred: the same cell (or an interpolated one) measured on the nearest other family with catalog
   ceilings, moved by the roofline split of `planner.perf.roofline` (see there for the math). A target
   family lacking the recipe's precision (T4 bf16, A100 fp8) gets nothing; a family that is not in the
   catalog (a fleet-only family) neither gives nor receives transfers. Peak memory is transferred as-is
   (weights and activations do not depend on the card); power scales with the two TDPs.
   Uncertainty: `transfer_uncertainty(distance)` plus the source's own.
   Across vendors (an NVIDIA measurement to an AMD family) the roofline split says nothing about the other
   software stack (attention kernels, compiler backends, fp8 formats: the agent's fp8 layers are e4m3fn via
   cuBLASLt, MI300X's native format is e4m3fnuz), and no published cross-vendor diffusion latency is in the
   reference data to calibrate it: such a transfer gets `cross_vendor_uncertainty` (0.5) on top, and a recipe
   whose kernels exist on one vendor's stack only is not transferred across vendors at all
   (`vendor_specific`, decided per recipe field):
   - `attention: cudnn`: cuDNN is NVIDIA's library; ROCm has no cuDNN backend for SDPA. Blocked.
   - `quantization` other than `none`, or an fp8/int8 precision: torchao's fp8 GEMMs go through cuBLASLt
     (e4m3fn; MI300X's native fp8 is e4m3fnuz) and its int8 kernels through NVIDIA-tuned Triton/cuBLAS paths.
     Blocked. `fast_gemm` is cuBLASLt's fast accumulation: blocked (it implies fp8 anyway).
   - `attention: flash` / `efficient`: PyTorch's ROCm build has both SDPA backends (AOTriton), so the recipe
     runs there; its speed is another implementation's, which the cross-vendor uncertainty covers. Allowed.
   - compile modes and `cuda_graphs`: inductor emits Triton on both vendors and HIP graphs stand in for CUDA
     graphs. Allowed, with the same uncertainty.
   Measure the family to plan on it with confidence.
4. scaled: asked at an image size no cell of (model, stage) was measured at, a denoiser or VAE cell is scaled
   from the nearest measured size of the same family (`scaled_cell`): the model's default size when measured,
   else the size nearest in pixels. The measured call is cut by the family's ceilings into compute, memory and
   overhead (`planner.perf.roofline.split_time`); compute scales with the FLOPs ratio f of
   `resolution_factor` (pixels for convolutions and U-Nets; tokens plus a tokens-squared attention share for
   DiTs), activation traffic with the pixel ratio p, weights traffic and overhead not at all:
       t' = c f + m (W + A p) / (W + A) + o,        peak' = weights + (peak - weights) p.
   A family without ceilings scales the whole call by f. A U-Net's attention (tokens squared) is left in the
   pixel-linear part, as the facts file's §6a scaling note has it: by the analytic count 4 L^2 d per
   self-attention over SDXL's transformer blocks (10 at 4096 tokens x 640, 60 at 1024 x 1280) it is about 0.75
   of 6.76 TFLOP (11%) at 1024^2; counting it as tokens squared would lower 768^2 by under 5% (inside its
   ±11% below).
   Uncertainty: the source's plus `SCALE_UNCERTAINTY_BASE + SCALE_UNCERTAINTY_PER_LOG |ln f|` (0.05 + 0.10
   |ln f|: a chosen margin, not fitted; no two sizes of one model were measured to fit it on). Evidence:
   `scaled from HxW`.
   A size-independent stage (`SIZE_INDEPENDENT_STAGES`: the text encoder, whose input is the prompt's tokens and
   whose cost `resolution_factor` already takes as 1) asked at a size it was not measured at uses its cells at
   the model's default size, else at the largest measured size, unscaled, and says so in the basis.

Evidence first (`PerfSettings.estimates`): measured, interpolated and scaled cells are what a plan rests on by
default; transferred cells and imported estimates (rows labelled `estimated`) are used only when the user
allows estimates (`allow_estimates: true` in a scenario, `--allow-estimates`). Every cell carries its
`evidence` label (`measured`, `interpolated`, `scaled from HxW`, `imported estimate`, `transferred from F`);
`EVIDENCE_RANK` orders them from the surest, so a group shows its least sure cell's label.
A data-dependent recipe (step caches) measured on synthetic weights is not used at all unless
`allow_synthetic_data_dependent`: the cache decides from activations, and random weights mislead it.

Quality (`quality`) is a property of (model, stage, recipe, resolution), not of the card: the worst value over
all rows of that cell group, from real weights only unless asked otherwise; the reference recipe is exact.

Dicts of typed rows, not a pandas frame (pandas does the report tables, benchmarks/reference_report.py): the
solver asks for one cell at a time, thousands of times per plan (one cell by a MultiIndex `.loc` took about
1,000 times a dict lookup here: 530 us against 0.5 us, timeit on a 2,000-row frame); a cell stands for a chosen
row with its provenance (the median source's, the slower middle), not a column aggregate; and interpolation is
a two-point lerp per query, between the nearest measured batches.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from planner.catalog.quality import PublishedQuality, published_quality, quality_reference
from planner.catalog.schema import GpuFamily, ModelSpec, Recipe
from planner.measurements.contract import MeasurementRow
from planner.perf.roofline import (
    Calibration,
    Ceilings,
    OverheadScaling,
    activation_bytes,
    ceilings_for,
    compute_precision,
    family_distance,
    flops_per_call,
    resolution_factor,
    split_time,
    transfer_ms,
    transfer_uncertainty,
    weight_gib,
)

Source = Literal["measured", "estimated"]
Method = Literal["measured", "imported-estimate", "interpolated", "scaled", "transferred"]
QualityMetric = Literal["psnr_image", "ssim_image", "psnr_latent"]
QualitySource = Literal["measured", "published", "synthetic", "reference", "unknown"]


@dataclass(frozen=True)
class QualityEvidence:
    """A recipe's quality on one metric and where it came from (issue 26): `measured` on real weights, then
    `published` (a cited figure), then `synthetic` drift only when asked, `reference` for the stage's quality
    reference (exact by definition), else `unknown` (value None). `detail` says what it rests on, or for an
    unknown what there is instead (figures in other metrics, synthetic drift not counted)."""

    value: float | None
    source: QualitySource
    detail: str


CellKey = tuple[str, str, str, str, int, int, int]
"""(gpu_family, model, stage, recipe, batch, height, width): the key of a measurement cell."""
ConfigKey = tuple[str, str, str, int, int]
"""(model, stage, recipe, height, width): a cell without its family and batch."""

SIZE_INDEPENDENT_STAGES = frozenset({"text_encoder"})
"""Stages whose cost does not depend on the image size (module docstring, "Image size")."""
INTERPOLATION_UNCERTAINTY_PER_DOUBLING = 0.05
SCALE_UNCERTAINTY_BASE = 0.05
SCALE_UNCERTAINTY_PER_LOG = 0.10
EVIDENCE_RANK: dict[str, int] = {
    "measured": 0,
    "interpolated": 1,
    "scaled": 2,
    "imported-estimate": 3,
    "transferred": 4,
}
"""How sure each method is, surest first: a group is labelled by its least sure cell."""
ESTIMATE_METHODS = frozenset({"imported-estimate", "transferred"})
"""Methods a plan uses only when the user allows estimates (module docstring, "Evidence first")."""
IMPORTED_ESTIMATE_UNCERTAINTY = 0.30
TRANSFER_TIE_BAND = 0.02
"""Transfer sources whose `family_distance` is within this (2% in log) of the nearest count as as near."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CellEstimate:
    """One cell's latency and memory, with where they came from and how sure the model is."""

    family: str
    model: str
    stage: str
    recipe: str
    batch: int
    height: int
    width: int
    latency_ms: float
    latency_p95_ms: float
    peak_mem_gib: float | None
    power_w: float | None
    source: Source
    method: Method
    uncertainty: float
    basis: str
    evidence: str = ""
    """`measured`, `interpolated`, `scaled from HxW`, `imported estimate` or `transferred from FAMILY`."""
    compile_s: float | None = None
    """Seconds the first call of this shape took (compilation), as measured; None when not compiled."""
    spread: float | None = None
    """Relative spread of the timed windows' medians (the measurement's `latency_spread`)."""

    @property
    def measured(self) -> bool:
        return self.source == "measured"

    @property
    def label(self) -> str:
        """The evidence label (falls back to the method for cells built without one)."""
        return self.evidence or self.method


@dataclass(frozen=True)
class PerfSettings:
    """Knobs of the estimate; the defaults are the documented model."""

    overhead_scaling: OverheadScaling = "fixed"
    interpolate: bool = True
    transfer: bool = True
    allow_synthetic_data_dependent: bool = False
    imported_uncertainty: float = IMPORTED_ESTIMATE_UNCERTAINTY
    cross_vendor_uncertainty: float = 0.5
    interpolation_uncertainty: float = INTERPOLATION_UNCERTAINTY_PER_DOUBLING
    estimates: bool = True
    """Use transferred cells and imported estimates. The planner's scenarios turn this off unless the user
    allows estimates (module docstring, "Evidence first"); the model alone keeps every rule on."""
    scale_resolution: bool = True
    """Scale denoiser and VAE cells from a measured image size to an unmeasured one (module docstring, 4.)."""


def _max_known(a: float | None, b: float | None) -> float | None:
    known = [x for x in (a, b) if x is not None]
    return max(known) if known else None


def vendor_specific(recipe: Recipe | None, precision: str | None) -> str | None:
    """Why a recipe's kernels exist on one GPU vendor's stack only (module docstring, 3.), or None.

    An unknown recipe (imported, not in the catalog) is judged by its precision alone.
    """
    if recipe is not None:
        if recipe.attention == "cudnn":
            return "cuDNN attention is NVIDIA-only"
        if recipe.quantization != "none":  # fast_gemm implies fp8 quantization (the catalog schema checks it)
            return f"{recipe.quantization} quantized kernels differ per vendor"
    if precision in ("fp8", "int8"):
        return f"{precision} kernels differ per vendor"
    return None


def _rank(row: MeasurementRow, *, override: bool = False) -> tuple[int, int, datetime, int]:
    """Order of preference among rows of one cell (module docstring, 1.): override set, source, date, weights.

    The override flag comes first so that a scenario file's row, which usually has no `measured_at`, is not
    beaten by an older stored row that has one.
    """
    stamp = row.measured_at or _EPOCH
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (1 if override else 0, 1 if row.source == "measured" else 0, stamp, 1 if row.weights == "real" else 0)


def combine(
    ranked: list[tuple[tuple[int, int, datetime, int], MeasurementRow]],
) -> tuple[MeasurementRow, tuple[float, int]]:
    """The row standing for a cell, and (relative spread, sources) of the rows it stands for (docstring, 1.).

    Rows of the best (override set, source) class compete. A scenario file's rows: the newest wins. The store's:
    the newest of each source (its `host`; the service writes a host's registered name there), then the median row
    across sources, the slower of the two middles when there
    is an even number (a cell is planned on what at least half the sources reached), with the relative spread
    (max - min) / (2 x median) as its uncertainty; one liar among three hosts moves nothing.
    """
    top = max(rank[:2] for rank, _ in ranked)
    pool = [(rank, row) for rank, row in ranked if rank[:2] == top]
    if top[0] == 1:
        return max(pool, key=lambda item: item[0])[1], (0.0, 1)
    newest: dict[str, tuple[tuple[int, int, datetime, int], MeasurementRow]] = {}
    for rank, row in pool:  # one row per source: its newest (the store's query already did this; rows may not)
        key = row.host or ""
        if key not in newest or rank > newest[key][0]:
            newest[key] = (rank, row)
    if len(newest) == 1:
        return next(iter(newest.values()))[1], (0.0, 1)
    ordered = sorted(newest.values(), key=lambda item: (item[1].latency_ms or 0.0, item[0]))
    chosen = ordered[len(ordered) // 2][1]
    lats = [row.latency_ms or 0.0 for _, row in ordered]
    median = chosen.latency_ms or 1.0
    return chosen, ((max(lats) - min(lats)) / (2 * median), len(ordered))


class PerfModel:
    """Measured cells plus the rules that fill the gaps (module docstring)."""

    def __init__(
        self,
        rows: Iterable[MeasurementRow],
        *,
        families: Mapping[str, GpuFamily],
        models: Mapping[str, ModelSpec],
        recipes: Mapping[str, Recipe],
        calibration: Mapping[str, Calibration] | None = None,
        settings: PerfSettings | None = None,
        override_rows: Iterable[MeasurementRow] = (),
        published: Iterable[PublishedQuality] | None = None,
    ) -> None:
        """`rows` are the store's; `override_rows` (a scenario's measurements file) win their cells over them.
        `published`: quality figures with their sources (default: the catalog's quality_published.yaml)."""
        self.published = tuple(published_quality() if published is None else published)
        rows = list(rows)
        override_rows = list(override_rows)
        self._inputs = (rows, override_rows, dict(calibration or {}))
        self.families = dict(families)
        self.models = dict(models)
        self.recipes = dict(recipes)
        self.settings = settings or PerfSettings()
        calibration = calibration or {}
        self.ceilings: dict[str, Ceilings] = {
            fid: ceilings_for(fam, calibration.get(fid)) for fid, fam in self.families.items()
        }
        self._quality_rows: dict[ConfigKey, list[MeasurementRow]] = defaultdict(list)
        candidates: dict[CellKey, list[tuple[tuple[int, int, datetime, int], MeasurementRow]]] = defaultdict(list)
        tagged = [(row, False) for row in rows] + [(row, True) for row in override_rows]
        for row, override in tagged:
            if row.status != "ok" or row.latency_ms is None:
                continue
            config: ConfigKey = (row.model, row.stage, row.recipe, row.height, row.width)
            self._quality_rows[config].append(row)
            if self._unusable(row):
                continue
            candidates[row.cell].append((_rank(row, override=override), row))
        self._cells: dict[CellKey, MeasurementRow] = {}
        self._spread: dict[CellKey, tuple[float, int]] = {}
        for cell, ranked in candidates.items():
            self._cells[cell], self._spread[cell] = combine(ranked)
        self._by_config: dict[ConfigKey, dict[str, dict[int, MeasurementRow]]] = defaultdict(lambda: defaultdict(dict))
        for key, row in self._cells.items():
            fam, model, stage, recipe, batch, h, w = key
            self._by_config[(model, stage, recipe, h, w)][fam][batch] = row
        self._memo: dict[CellKey, CellEstimate | None] = {}
        self._row_memo: dict[CellKey, CellEstimate] = {}
        self._distance: dict[tuple[str, str, str], float | None] = {}
        self._weights: dict[tuple[str, str, str], float | None] = {}
        self._sizes: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._recipes: dict[tuple[str, str, int, int], set[str]] = defaultdict(set)
        for model, stage, recipe, h, w in self._by_config:
            self._recipes[(model, stage, h, w)].add(recipe)

    def with_settings(self, **changes: object) -> PerfModel:
        """The same inputs under other settings (e.g. `estimates=True` to price what was not measured)."""
        rows, override_rows, calibration = self._inputs
        return PerfModel(
            rows,
            families=self.families,
            models=self.models,
            recipes=self.recipes,
            calibration=calibration,
            settings=replace(self.settings, **changes),  # type: ignore[arg-type]
            override_rows=override_rows,
        )

    def measured_families_of(self, model: str) -> set[str]:
        """Families with at least one usable measured cell of a model (any stage, recipe, size)."""
        return {row.gpu_family for row in self._cells.values() if row.model == model and row.source == "measured"}

    # ---- what is known ------------------------------------------------------------------------------
    def _unusable(self, row: MeasurementRow) -> bool:
        if row.source == "estimated" and not self.settings.estimates:
            return True
        recipe = self.recipes.get(row.recipe)
        return (
            recipe is not None
            and recipe.data_dependent
            and row.weights == "synthetic"
            and not self.settings.allow_synthetic_data_dependent
        )

    @property
    def rows(self) -> list[MeasurementRow]:
        """The row chosen for each measured cell."""
        return list(self._cells.values())

    def sizes_for(self, model: str, stage: str) -> list[tuple[int, int]]:
        """(height, width) with at least one usable cell of the stage, largest first."""
        key = (model, stage)
        if key not in self._sizes:
            self._sizes[key] = sorted(
                {(h, w) for m, s, h, w in self._recipes if m == model and s == stage}, reverse=True
            )
        return list(self._sizes[key])

    def _size(self, model: str, stage: str, height: int, width: int) -> tuple[int, int]:
        """The size whose cells serve a request: its own, else a measured one (module docstring, 4.)."""
        if (model, stage, height, width) in self._recipes:
            return height, width
        independent = stage in SIZE_INDEPENDENT_STAGES
        if not independent and not self.settings.scale_resolution:
            return height, width
        sizes = self.sizes_for(model, stage)
        spec = self.models.get(model)
        if spec is not None and (spec.height, spec.width) in sizes:
            return spec.height, spec.width
        if not sizes:
            return height, width
        if independent:
            return sizes[0]
        return min(sizes, key=lambda s: (abs(math.log(s[0] * s[1] / (height * width))), -s[0] * s[1]))

    def measured_families(self, model: str, stage: str, recipe: str, height: int, width: int) -> list[str]:
        height, width = self._size(model, stage, height, width)
        return sorted(self._by_config.get((model, stage, recipe, height, width), {}))

    def recipes_for(self, model: str, stage: str, height: int, width: int) -> set[str]:
        """Recipes with at least one usable cell of (model, stage, resolution) on any family."""
        height, width = self._size(model, stage, height, width)
        return set(self._recipes.get((model, stage, height, width), set()))

    def batches_for(self, model: str, stage: str, recipe: str, height: int, width: int) -> list[int]:
        """Batches measured on any family for a configuration: where transfers and interpolation can land."""
        height, width = self._size(model, stage, height, width)
        per_family = self._by_config.get((model, stage, recipe, height, width), {})
        return sorted({b for batches in per_family.values() for b in batches})

    def precision_of(self, recipe: str) -> str | None:
        return compute_precision(recipe, self.recipes.get(recipe))

    def supports(self, family: str, recipe: str) -> bool:
        """Whether a catalog family has the recipe's precision (unknown families: only what was measured)."""
        ceil = self.ceilings.get(family)
        precision = self.precision_of(recipe)
        return ceil is not None and precision is not None and ceil.compute(precision) is not None

    def weight_gib(self, model: str, stage: str, recipe: str) -> float | None:
        """Resident weights of a stage under a recipe, from the catalog's parameter counts."""
        key = (model, stage, recipe)
        if key not in self._weights:
            self._weights[key] = weight_gib(self.models.get(model), stage, recipe, self.recipes.get(recipe))
        return self._weights[key]

    # ---- latency ------------------------------------------------------------------------------------
    def latency(
        self, family: str, model: str, stage: str, recipe: str, batch: int, height: int, width: int
    ) -> CellEstimate | None:
        """Latency of one call (median, p95; ms), memory and power of a cell; None when nothing backs it."""
        key: CellKey = (family, model, stage, recipe, batch, height, width)
        if key in self._memo:
            return self._memo[key]
        h, w = self._size(model, stage, height, width)
        if (h, w) != (height, width):  # the cell at a measured size: relabelled, or scaled (module docstring, 4.)
            at = self.latency(family, model, stage, recipe, batch, h, w)
            found = None
            if at is not None and stage in SIZE_INDEPENDENT_STAGES:
                basis = f"{at.basis} at {h}x{w} (a {stage}'s cost does not depend on the image size)"
                found = replace(at, height=height, width=width, basis=basis)
            elif at is not None:
                found = self.scaled_cell(at, height, width)
            self._memo[key] = found
            return found
        found = self._own(key)
        if found is None and self.settings.transfer and self.settings.estimates:
            found = self._transferred(key)
        self._memo[key] = found
        return found

    def memory_gib(
        self, family: str, model: str, stage: str, recipe: str, batch: int, height: int, width: int
    ) -> float | None:
        """Peak memory of a cell (weights + activations at the batch), GiB."""
        cell = self.latency(family, model, stage, recipe, batch, height, width)
        return None if cell is None else cell.peak_mem_gib

    def _own(self, key: CellKey) -> CellEstimate | None:
        """A cell from its own family's rows: the row itself, or an interpolation between two batches."""
        family, model, stage, recipe, batch, h, w = key
        row = self._cells.get(key)
        if row is not None:
            return self._from_row(row)
        if not self.settings.interpolate:
            return None
        batches = self._by_config.get((model, stage, recipe, h, w), {}).get(family)
        if not batches:
            return None
        lower = [b for b in batches if b < batch]
        upper = [b for b in batches if b > batch]
        if not lower or not upper:
            return None
        b0, b1 = max(lower), min(upper)
        r0, r1 = batches[b0], batches[b1]
        e0, e1 = self._from_row(r0), self._from_row(r1)
        frac = (batch - b0) / (b1 - b0)

        def lerp(a: float | None, b: float | None) -> float | None:
            if a is None or b is None:
                return None
            return a + (b - a) * frac

        lat = lerp(e0.latency_ms, e1.latency_ms)
        p95 = lerp(e0.latency_p95_ms, e1.latency_p95_ms)
        assert lat is not None
        assert p95 is not None
        u = max(e0.uncertainty, e1.uncertainty) + self.settings.interpolation_uncertainty * math.log2(b1 / b0)
        return CellEstimate(
            family=family,
            model=model,
            stage=stage,
            recipe=recipe,
            batch=batch,
            height=h,
            width=w,
            latency_ms=lat,
            latency_p95_ms=max(p95, lat),
            peak_mem_gib=lerp(e0.peak_mem_gib, e1.peak_mem_gib),
            power_w=lerp(e0.power_w, e1.power_w),
            source="estimated",
            method="interpolated",
            uncertainty=u,
            basis=f"interpolated on {family} between batch {b0} and {b1}",
            evidence="interpolated",
            compile_s=_max_known(e0.compile_s, e1.compile_s),
            spread=_max_known(e0.spread, e1.spread),
        )

    def _from_row(self, row: MeasurementRow) -> CellEstimate:
        hit = self._row_memo.get(row.cell)
        if hit is not None:
            return hit
        hit = self._row_memo[row.cell] = self._estimate_from_row(row)
        return hit

    def _estimate_from_row(self, row: MeasurementRow) -> CellEstimate:
        assert row.latency_ms is not None
        measured = row.source == "measured"
        spread, sources = self._spread.get(row.cell, (0.0, 1))
        basis = f"measured on {row.gpu_family}" if measured else f"imported estimate for {row.gpu_family}"
        if sources > 1:
            basis += f" (median of {sources} sources, spread {spread:.0%})"
        return CellEstimate(
            family=row.gpu_family,
            model=row.model,
            stage=row.stage,
            recipe=row.recipe,
            batch=row.batch,
            height=row.height,
            width=row.width,
            latency_ms=row.latency_ms,
            latency_p95_ms=row.latency_p95_ms if row.latency_p95_ms is not None else row.latency_ms,
            peak_mem_gib=row.peak_mem_gib,
            power_w=row.power_w,
            source="measured" if measured else "estimated",
            method="measured" if measured else "imported-estimate",
            uncertainty=spread if measured else self.settings.imported_uncertainty + spread,
            basis=basis,
            evidence="measured" if measured else "imported estimate",
            compile_s=row.compile_s,
            spread=row.latency_spread,
        )

    def _vendor(self, family: str) -> str | None:
        spec = self.families.get(family)
        return spec.vendor if spec is not None else None

    def _transfer_source(
        self, candidates: list[tuple[float, int, str, CellEstimate]], target: Ceilings, precision: str
    ) -> tuple[float, str, CellEstimate]:
        """The source of a transfer, by a rule that catalog peaks differing by a rounding cannot flip.

        Nearest by `family_distance` (the larger log ratio of compute or bandwidth), but every candidate within
        `TRANSFER_TIE_BAND` of the nearest counts as as near: among those, a measured cell beats an interpolated
        one, then the smaller of the two log ratios decides (the family that differs in one roofline only),
        then the family id. Two sources of equal compute (the H100 and the H200 seen from an A100) used to be
        told apart by a 0.05% difference of a catalog peak; they are now told apart by bandwidth."""
        nearest = min(c[0] for c in candidates)

        def secondary(src: str) -> float:
            source = self.ceilings[src]
            p_src, p_dst = source.compute(precision), target.compute(precision)
            compute = abs(math.log(p_dst / p_src)) if p_src and p_dst else math.inf
            return min(compute, abs(math.log(target.tbps / source.tbps)))

        near = [c for c in candidates if c[0] <= nearest + TRANSFER_TIE_BAND]
        distance, _, src_family, cell = min(near, key=lambda c: (c[1], secondary(c[2]), c[2]))
        return distance, src_family, cell

    def _transferred(self, key: CellKey) -> CellEstimate | None:
        family, model, stage, recipe, batch, h, w = key
        target = self.ceilings.get(family)
        precision = self.precision_of(recipe)
        if target is None or precision is None or target.compute(precision) is None:
            return None
        candidates: list[tuple[float, int, str, CellEstimate]] = []
        one_vendor = vendor_specific(self.recipes.get(recipe), precision) is not None
        for src_family in self._by_config.get((model, stage, recipe, h, w), {}):
            if src_family == family:
                continue
            if one_vendor and self._vendor(src_family) != self._vendor(family):
                continue
            dkey = (src_family, family, precision)
            if dkey not in self._distance:
                source = self.ceilings.get(src_family)
                self._distance[dkey] = None if source is None else family_distance(source, target, precision)
            distance = self._distance[dkey]
            if distance is None:
                continue
            own = self._own((src_family, model, stage, recipe, batch, h, w))
            if own is None or own.method == "imported-estimate":
                continue
            # Nearest family first (`_transfer_source` breaks near-ties).
            candidates.append((distance, 0 if own.measured else 1, src_family, own))
        if not candidates:
            return None
        distance, src_family, cell = self._transfer_source(candidates, target, precision)
        source = self.ceilings[src_family]
        row = self._cells.get((src_family, model, stage, recipe, batch, h, w))
        spec = self.models.get(model)
        tflops = row.tflops_per_call if row is not None and row.tflops_per_call else None
        if tflops is None:
            tflops = flops_per_call(spec, stage, batch, h, w)
        if tflops is None:
            return None
        if row is not None and row.achieved_tbps:
            bytes_moved = row.achieved_tbps * 1e12 * cell.latency_ms / 1e3
        else:
            weights = self.weight_gib(model, stage, recipe) or 0.0
            bytes_moved = weights * 2**30 + activation_bytes(tflops, precision)
        split = split_time(cell.latency_ms, tflops, bytes_moved, source, precision)
        if split is None:
            return None
        latency = transfer_ms(split, source, target, precision, overhead_scaling=self.settings.overhead_scaling)
        if latency is None:
            return None
        ratio = latency / cell.latency_ms
        power = None
        src_spec, dst_spec = self.families.get(src_family), self.families.get(family)
        if cell.power_w is not None and src_spec is not None and dst_spec is not None:
            power = cell.power_w * dst_spec.tdp_w / src_spec.tdp_w
        return CellEstimate(
            family=family,
            model=model,
            stage=stage,
            recipe=recipe,
            batch=batch,
            height=h,
            width=w,
            latency_ms=latency,
            latency_p95_ms=cell.latency_p95_ms * ratio,
            peak_mem_gib=cell.peak_mem_gib,
            power_w=power,
            source="estimated",
            method="transferred",
            uncertainty=cell.uncertainty
            + transfer_uncertainty(distance)
            + (self.settings.cross_vendor_uncertainty if self._vendor(src_family) != self._vendor(family) else 0.0),
            basis=f"transferred from {src_family} ({cell.method})",
            evidence=f"transferred from {src_family}",
            compile_s=cell.compile_s,
            spread=cell.spread,
        )

    def scaled_cell(self, cell: CellEstimate, height: int, width: int) -> CellEstimate | None:
        """A cell measured (or interpolated) at one image size, scaled to another (module docstring, 4.)."""
        spec = self.models.get(cell.model)
        if spec is None:
            return None
        f0 = resolution_factor(spec, cell.stage, cell.height, cell.width)
        f = resolution_factor(spec, cell.stage, height, width) / f0 if f0 > 0 else math.nan
        p = height * width / (cell.height * cell.width)
        if not (math.isfinite(f) and f > 0):
            return None
        latency = cell.latency_ms * f
        precision = self.precision_of(cell.recipe)
        weights_gib = self.weight_gib(cell.model, cell.stage, cell.recipe)
        ceil = self.ceilings.get(cell.family)
        tflops = flops_per_call(spec, cell.stage, cell.batch, cell.height, cell.width)
        if ceil is not None and precision is not None and tflops is not None:
            weight_bytes = (weights_gib or 0.0) * 2**30
            act = activation_bytes(tflops, precision)
            split = split_time(cell.latency_ms, tflops, weight_bytes + act, ceil, precision)
            if split is not None:
                moved = (weight_bytes + act * p) / (weight_bytes + act) if weight_bytes + act > 0 else p
                latency = split.compute_ms * f + split.memory_ms * moved + split.overhead_ms
        ratio = latency / cell.latency_ms
        peak = cell.peak_mem_gib
        if peak is not None:
            resident = min(weights_gib or 0.0, peak)
            peak = resident + (peak - resident) * p
        inner = "" if cell.method == "measured" else f" ({cell.label})"
        return replace(
            cell,
            height=height,
            width=width,
            latency_ms=latency,
            latency_p95_ms=cell.latency_p95_ms * ratio,
            peak_mem_gib=peak,
            source="estimated",
            method="scaled" if EVIDENCE_RANK[cell.method] <= EVIDENCE_RANK["scaled"] else cell.method,
            uncertainty=cell.uncertainty + SCALE_UNCERTAINTY_BASE + SCALE_UNCERTAINTY_PER_LOG * abs(math.log(f)),
            basis=f"scaled from {cell.height}x{cell.width} (FLOPs x{f:.3g}): {cell.basis}",
            evidence=f"scaled from {cell.height}x{cell.width}{inner}",
        )

    # ---- quality ------------------------------------------------------------------------------------
    def quality(
        self,
        model: str,
        stage: str,
        recipe: str,
        metric: QualityMetric,
        *,
        height: int,
        width: int,
        real_weights_only: bool = True,
    ) -> float | None:
        """The recipe's quality on `metric` (higher is better), None if unknown: `quality_evidence`'s value."""
        return self.quality_evidence(
            model, stage, recipe, metric, height=height, width=width, real_weights_only=real_weights_only
        ).value

    def quality_evidence(
        self,
        model: str,
        stage: str,
        recipe: str,
        metric: QualityMetric,
        *,
        height: int,
        width: int,
        real_weights_only: bool = True,
    ) -> QualityEvidence:
        """Quality of a recipe against the stage's quality reference, from the best source there is.

        Order: the worst real-weight measurement; else the worst published figure on this metric; else exact for
        the stage's quality reference (its highest-precision plain recipe, fp32: SSIM 1, PSNR infinite); else
        (only when `real_weights_only` is off: asked for) the worst synthetic-weight drift; else unknown.
        """
        height, width = self._size(model, stage, height, width)
        real: list[float] = []
        synthetic: list[float] = []
        for row in self._quality_rows.get((model, stage, recipe, height, width), []):
            value = getattr(row, metric)
            if value is not None:
                (real if (row.quality_weights or row.weights) == "real" else synthetic).append(float(value))
        if real:
            return QualityEvidence(min(real), "measured", f"worst of {len(real)} real-weight measurement(s)")
        figures = [f for f in self.published if (f.model, f.stage, f.recipe) == (model, stage, recipe)]
        same_metric = [f for f in figures if f.metric == metric]
        if same_metric:
            worst = min(same_metric, key=lambda f: f.value)
            return QualityEvidence(worst.value, "published", worst.describe())
        ref = quality_reference(stage, self.recipes)
        if ref is not None and ref.id == recipe:
            exact = 1.0 if metric == "ssim_image" else math.inf
            return QualityEvidence(exact, "reference", f"the stage's quality reference ({recipe}): exact")
        if synthetic and not real_weights_only:
            return QualityEvidence(
                min(synthetic), "synthetic", f"drift on random weights ({len(synthetic)} cell(s)), counted as asked"
            )
        instead = [f"published {f.describe()}" for f in figures]
        if synthetic:
            instead.append(f"{len(synthetic)} synthetic-weight drift cell(s), not counted (random weights)")
        return QualityEvidence(None, "unknown", "; ".join(instead) or "no real-weight measurement or published figure")
