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
- `sm_clock_mhz` (optional): mean SM clock NVML read at the end of each timed window; `throttle_reasons`: the
  clock-event reasons NVML gave at those reads besides the GPU being idle, `+`-joined (`none` when there were
  none), e.g. `sw_power_cap+hw_slowdown`; `cpu_model`: the host CPU (launch-bound cells measure it too). The
  store keeps them in the provenance JSON like `compile_s`.
- An `ok` cell has a stable median (spread of the last windows within the timer's threshold); a cell that never
  settled is `failed` with `unstable: ...` in `error`, its numbers kept for a reader to see. `latency_p95_ms`
  is empty where the timed calls were too few for a 95th percentile (`agent.timing.MIN_P95_CALLS`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

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

FiniteNonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FinitePos = Annotated[float, Field(gt=0, allow_inf_nan=False)]


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
    latency_ms: FinitePos | None = None
    latency_p95_ms: FinitePos | None = None
    peak_mem_gib: FiniteNonNeg | None = None
    power_w: FiniteNonNeg | None = None
    weights: Weights
    source: Source

    status: Status = "ok"
    error: str | None = Field(default=None, max_length=2000)
    latency_spread: FiniteNonNeg | None = None
    windows: int | None = Field(default=None, ge=0)
    calls: int | None = Field(default=None, ge=0)
    energy_j_per_image: FiniteNonNeg | None = None
    gpu_util: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = None
    achieved_tflops: FiniteNonNeg | None = None
    achieved_tbps: FiniteNonNeg | None = None
    tflops_per_call: FiniteNonNeg | None = None
    bound: Bound | None = None
    psnr_image: Annotated[float, Field(allow_inf_nan=True)] | None = None
    ssim_image: Annotated[float, Field(ge=-1, le=1)] | None = None
    psnr_latent: Annotated[float, Field(allow_inf_nan=True)] | None = None
    quality_weights: Weights | None = None
    gpu_memory_gib: FinitePos | None = None
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
    compile_s: FiniteNonNeg | None = None
    cache_skip_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    sm_clock_mhz: Annotated[float, Field(ge=0, le=100000, allow_inf_nan=False)] | None = None
    throttle_reasons: str | None = Field(default=None, max_length=200, pattern=r"^[a-z0-9_+]*$")
    cpu_model: str | None = Field(default=None, max_length=200)

    @field_validator("batch", "height", "width", "windows", "calls", mode="before")
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

    @field_validator("psnr_image", "psnr_latent")
    @classmethod
    def _psnr(cls, value: float | None) -> float | None:
        # Identical outputs give an infinite PSNR; NaN is never a result.
        if value is not None and math.isnan(value):
            raise ValueError("must be a number, got NaN")
        return value

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
