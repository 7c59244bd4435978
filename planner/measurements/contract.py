"""The measurements CSV contract (DESIGN.md, contract 1) as a typed row.

One row is one cell: (gpu_family, model, stage, recipe, batch, height, width). The first thirteen columns are
the contract; the optional ones after them carry what the agent also measures. A reader ignores columns it does
not know, so files written by newer agents still import.

Choices written down here (the contract is silent on them):
- `status` (optional column, default `ok`): `ok`, `oom`, `failed` or `unsupported`. A cell that is not `ok`
  has no latency and carries its reason in `error`; the planner never uses it for throughput, but keeps it so
  a sweep does not retry what cannot run.
- `latency_p95_ms` may be empty (an imported figure with only a median); when present it is >= `latency_ms`.
- `batch` counts images. A CFG model's denoiser call runs 2 x batch latents; the measurement already includes it.
- The denoiser's `latency_ms` is one call (one step); the other stages' is one call per image batch.
- `compile_s` (optional): seconds the first call of a compiled cell took (compilation for that shape).
- `cache_skip_rate` (optional): for a step-cache recipe (data-dependent), the fraction of denoiser calls the
  cache skipped over the timed trajectories; `latency_ms` of such a cell is the mean per call, not the median.
  The store keeps both in the measurement's provenance JSON (no column of their own).

Non-finite and out-of-range numbers: one rule, here, for both ingestion paths (the API's `MeasurementIn` is this
row; `planner measurements import` reads rows with it), so a probe's output is stored the same either way:
- every number is finite and within its bounds below (latency at most 1e8 ms, memory at most 65536 GiB, ...);
  NaN or an infinity in any column is refused with the column named, the whole run or file with it;
- the one exception is PSNR, which is infinite when a recipe's output equals the reference's: such a PSNR
  (`inf`, `Infinity`, or anything above PSNR_CAP) is stored as PSNR_CAP, 1000 dB, which reads "identical"
  (float32 images that differ at all stay far below it: one unit in the last place of a [0, 1] image is about
  140 dB). JSON has no infinity, so an agent sends 1000; a CSV may hold `inf` or 1000: both store 1000.
  NaN, -inf and values below -PSNR_CAP are refused.
- every float is held at the CSV's precision (`float_text`: 6 significant places, or 6 decimals between 1e-3
  and 1e6), whichever path it came by: a row sent as JSON and the same row read back from the agent's CSV are
  stored as the same numbers (far finer than any timing's run-to-run spread).
- `sm_clock_mhz` (optional): mean SM clock NVML read at the end of each timed window; `throttle_reasons`: the
  clock-event reasons NVML gave at those reads besides the GPU being idle, `+`-joined (`none` when there were
  none), e.g. `sw_power_cap+hw_slowdown`; `cpu_model`: the host CPU (launch-bound cells measure it too). The
  store keeps them in the provenance JSON like `compile_s`.
- An `ok` cell has a stable median (spread of the last windows within the timer's threshold); a cell that never
  settled is `failed` with `unstable: ...` in `error`, its numbers kept for a reader to see. `latency_p95_ms`
  is empty where the timed calls were too few for a 95th percentile (`agent.timing.MIN_P95_CALLS`).
"""

from __future__ import annotations

import contextlib
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner.catalog.schema import ID_PATTERN, STAGES

CONTRACT_COLUMNS: tuple[str, ...] = (
    "gpu_family",
    "model",
    "stage",
    "recipe",
    "batch",
    "height",
    "width",
    "latency_ms",
    "latency_p95_ms",
    "peak_mem_gib",
    "power_w",
    "weights",
    "source",
)
"""The thirteen contract columns, in contract order. A file must carry all of them."""

OPTIONAL_COLUMNS: tuple[str, ...] = (
    "status",
    "error",
    "latency_spread",
    "windows",
    "calls",
    "energy_j_per_image",
    "gpu_util",
    "achieved_tflops",
    "achieved_tbps",
    "tflops_per_call",
    "bound",
    "psnr_image",
    "ssim_image",
    "psnr_latent",
    "quality_weights",
    "gpu_memory_gib",
    "gpu_name",
    "driver",
    "cuda",
    "torch",
    "diffusers",
    "torchao",
    "agent_version",
    "host",
    "measured_at",
    "probe_run",
    "compile_s",
    "cache_skip_rate",
    "psnr_image_min",
    "ssim_image_min",
    "ssim_image_std",
    "lpips_image",
    "quality_reference",
    "quality_prompts",
    "quality_prompt_set",
    "sm_clock_mhz",
    "throttle_reasons",
    "cpu_model",
)
"""Columns the project reads and writes after the contract's; anything else is ignored on import."""

ALL_COLUMNS: tuple[str, ...] = CONTRACT_COLUMNS + OPTIONAL_COLUMNS

Status = Literal["ok", "oom", "failed", "unsupported"]
Weights = Literal["real", "synthetic"]
Source = Literal["measured", "estimated"]
Bound = Literal["compute", "memory", "overhead"]

PSNR_CAP = 1000.0
"""dB stored for identical outputs (an infinite PSNR) and for anything above it: see the module docstring."""
MAX_COUNT = 2**31 - 1


def _bounded(lo: float, hi: float, *, open_low: bool = False) -> Any:
    if open_low:
        return Field(gt=lo, le=hi, allow_inf_nan=False)
    return Field(ge=lo, le=hi, allow_inf_nan=False)


FiniteNonNeg = Annotated[float, _bounded(0, 1e9)]
Ms = Annotated[float, _bounded(0, 1e8, open_low=True)]
Gib = Annotated[float, _bounded(0, 65536)]
Psnr = Annotated[float, _bounded(-PSNR_CAP, PSNR_CAP)]


def float_text(value: float) -> str:
    """A float as the measurements CSV writes it; `float(float_text(x))` is the value every path stores."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{round(value, 6)}"


def cap_psnr(value: object) -> object:
    """An infinite PSNR (identical outputs), or one above PSNR_CAP, as PSNR_CAP; anything else unchanged.

    The one place the rule lives: the row's validator calls it, so the API and the CSV import agree, and the
    agent calls it before sending JSON (which has no infinity).
    """
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and value.strip().lower().lstrip("+") in ("inf", "infinity"):
        number = math.inf
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is not None and not math.isnan(number) and number > PSNR_CAP:
        return PSNR_CAP
    return value


class MeasurementRow(BaseModel):
    """One validated cell of the measurements CSV."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    gpu_family: str = Field(pattern=ID_PATTERN, max_length=64)
    model: str = Field(pattern=ID_PATTERN, max_length=64)
    stage: Literal["text_encoder", "denoiser", "vae_decoder"]
    recipe: str = Field(pattern=ID_PATTERN, max_length=64)
    batch: int = Field(ge=1, le=4096)
    height: int = Field(ge=8, le=16384)
    width: int = Field(ge=8, le=16384)
    latency_ms: Ms | None = None
    latency_p95_ms: Ms | None = None
    peak_mem_gib: Gib | None = None
    power_w: Annotated[float, _bounded(0, 100000)] | None = None
    weights: Weights
    source: Source

    status: Status = "ok"
    error: str | None = Field(default=None, max_length=2000)
    latency_spread: Annotated[float, _bounded(0, 1e6)] | None = None
    windows: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    calls: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    energy_j_per_image: FiniteNonNeg | None = None
    gpu_util: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = None
    achieved_tflops: Annotated[float, _bounded(0, 1e6)] | None = None
    achieved_tbps: Annotated[float, _bounded(0, 1e4)] | None = None
    tflops_per_call: FiniteNonNeg | None = None
    bound: Bound | None = None
    psnr_image: Psnr | None = None
    ssim_image: Annotated[float, _bounded(-1, 1)] | None = None
    psnr_latent: Psnr | None = None
    quality_weights: Weights | None = None
    gpu_memory_gib: Annotated[float, _bounded(0, 65536, open_low=True)] | None = None
    gpu_name: str | None = None
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    diffusers: str | None = None
    torchao: str | None = None
    agent_version: str | None = None
    host: str | None = None
    measured_at: datetime | None = None
    probe_run: str | None = None
    compile_s: Annotated[float, _bounded(0, 1e6)] | None = None
    cache_skip_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    # The real-weights quality probe (agent/quality_probe.py): psnr_image/ssim_image are over its prompt set
    # (PSNR of the pooled error, mean SSIM); these say the worst prompt, the spread, LPIPS where measured, the
    # recipe the images were compared with, and how many prompts of which set.
    psnr_image_min: Psnr | None = None
    ssim_image_min: Annotated[float, _bounded(-1, 1)] | None = None
    ssim_image_std: Annotated[float, _bounded(0, 2)] | None = None
    lpips_image: Annotated[float, _bounded(0, 10)] | None = None
    quality_reference: str | None = Field(default=None, pattern=ID_PATTERN, max_length=64)
    quality_prompts: int | None = Field(default=None, ge=1, le=100000)
    quality_prompt_set: str | None = Field(default=None, pattern=ID_PATTERN, max_length=64)
    sm_clock_mhz: Annotated[float, Field(ge=0, le=100000, allow_inf_nan=False)] | None = None
    throttle_reasons: str | None = Field(default=None, max_length=200, pattern=r"^[a-z0-9_+]*$")
    cpu_model: str | None = Field(default=None, max_length=200)

    @field_validator("batch", "height", "width", "windows", "calls", "quality_prompts", mode="before")
    @classmethod
    def _integer_text(cls, value: object) -> object:
        # "4.0" or "4.5" in a CSV is not a batch size: refuse anything but an integer literal.
        if isinstance(value, str):
            text = value.strip()
            if not text.lstrip("+-").isdigit():
                raise ValueError(f"must be a whole number, got {value!r}")
            return int(text)
        if isinstance(value, float):
            raise ValueError(f"must be a whole number, got {value!r}")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _csv_precision(cls, value: object) -> object:
        # One precision for both ingestion paths (module docstring).
        if isinstance(value, float) and math.isfinite(value):
            return float(float_text(value))
        return value

    @field_validator("psnr_image", "psnr_latent", "psnr_image_min", mode="before")
    @classmethod
    def _psnr(cls, value: object) -> object:
        # Identical outputs give an infinite PSNR: stored as PSNR_CAP (module docstring); NaN is refused.
        return cap_psnr(value)

    @model_validator(mode="after")
    def _consistent(self) -> MeasurementRow:
        if self.stage not in STAGES:  # pragma: no cover - Literal already refuses
            raise ValueError(f"stage must be one of {STAGES}")
        if self.status == "ok":
            if self.latency_ms is None:
                raise ValueError("latency_ms: required when status is ok (a cell that did not run sets status)")
            if self.latency_p95_ms is not None and self.latency_p95_ms < self.latency_ms * (1 - 1e-9):
                raise ValueError(
                    f"latency_p95_ms: {self.latency_p95_ms} is below the median latency_ms {self.latency_ms}"
                )
        return self

    @property
    def cell(self) -> tuple[str, str, str, str, int, int, int]:
        """The cell key: one measurement per cell per probe run."""
        return (self.gpu_family, self.model, self.stage, self.recipe, self.batch, self.height, self.width)
