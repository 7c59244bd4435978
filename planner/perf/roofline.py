"""Roofline arithmetic behind the transfer of a measured cell to another GPU family.

Everything here is a pure function of catalog data and one measured cell; `planner.perf.model` decides which
cell to transfer and labels the result.

FLOPs of one call (TFLOP, 1e12)
    F = row.tflops_per_call when the measurement carries it (the agent counts the call it ran); otherwise
    F = StageSpec.tflops_per_call x batch x (2 if the model uses CFG and the stage is the denoiser)
        x resolution factor, where the resolution factor relative to the model's default (h0, w0) is
      - text encoder: 1 (the prompt length does not change with the image);
      - VAE decoder and U-Net denoisers (sd, sdxl): pixels / pixels0 (convolutions and linears ~ pixels;
        the U-Net's attention share is small and is ignored);
      - DiT denoisers (flux, qwen-image, z-image): with tokens T = (h/16)(w/16) + text_tokens,
        (1 - a) T/T0 + a (T/T0)^2 with a = 0.2, the attention matmul share at 1024^2 (facts §6a).

Bytes moved by one call
    B = row.achieved_tbps x latency when the measurement carries it; otherwise
    B = weights + activations, with weights = parameters x bytes per parameter of the recipe (fp32 4,
    fp16/bf16 2, fp8/int8 1, weight-only quantization 1) and activations = F / 600 FLOP per byte for
    16-bit activations (x2 for fp32). 600 FLOP/B is the order of a 3x3 conv or a linear of width ~1-3k
    reading and writing its 16-bit input and output once; norms and elementwise passes are not counted
    here and show up as the overhead part below.

Ceilings of a family (achievable, not datasheet)
    P_f(p) = calibrated matmul TFLOP/s at precision p when the agent measured it, else the catalog's dense
    peak x 0.80 (cuBLAS large-GEMM efficiency; the H100 baseline measured 786 of 989). BW_f = calibrated copy
    TB/s, else catalog bandwidth x 0.88 (the baseline's copy 2.96 of 3.35). A precision a family lacks (T4
    bf16, A100 fp8) has no ceiling, and nothing is estimated for it.

Split and transfer
    On the measured family S, with t the measured median per call:
      compute c = F / P_S(p), memory m = B / BW_S.
      If c + m >= t the kernels overlap: both are scaled by t / (c + m) and the overhead o = 0;
      otherwise o = t - c - m: time neither roofline explains (kernel launches, under-occupied small
      kernels, norms and elementwise passes, synchronisation).
    On the target family T:  t_T = c x P_S/P_T + m x BW_S/BW_T + o x k_o, with k_o = 1 by default
    (launch and latency floors are set by the clock and the host, similar across data-centre GPUs);
    `overhead_scaling="bandwidth"` scales it like memory instead (the plain two-part split).
    The estimate's relative uncertainty is u = max(0.08, 0.24 d) with d = max(|ln P_T/P_S|, |ln BW_T/BW_S|),
    the distance between the two families (0.28 from H100 to A100; 0.50 from H100 to A10; 0.086 to the H200),
    both constants fitted to the cross-family errors benchmarks/transfer_validation.py measures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from planner.catalog.schema import GpuFamily, ModelSpec, Recipe

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
}
ACTIVATION_FLOP_PER_BYTE = 600.0
"""FLOPs per byte of 16-bit activation traffic (see the module docstring)."""
DEFAULT_GEMM_EFFICIENCY = 0.80
DEFAULT_BANDWIDTH_EFFICIENCY = 0.88
DIT_ATTENTION_SHARE = 0.20
DIT_ARCHITECTURES = frozenset({"flux", "qwen-image", "z-image"})
PIXELS_PER_TOKEN = 16 * 16
TRANSFER_DISTANCE_UNCERTAINTY = 0.24
"""A transfer's relative uncertainty per unit of roofline distance (`family_distance`), fitted to measured errors
rather than set by hand: the largest |predicted / actual - 1| / distance over the cross-family ratios that
benchmarks/transfer_validation.py checks (every same-source pair of published per-GPU figures in
../shared/reference/diffusion-facts.md, and each measured family against its transfer from the H100), rounded up
to 0.01. Fit on the shipped data (2026-12-08): 0.231, set by the SDXL A100 / H100 PyTorch baseline (+26.6% at
distance 1.154)."""
TRANSFER_MIN_UNCERTAINTY = 0.08
"""The least uncertainty of any transfer, also fitted: the largest |error| of the nearest checked transfer (the
measured H200 from the H100, distance 0.358: 6.9% and 7.4%), rounded up to 0.01. No transfer is trusted more than
the nearest one checked, so an estimate from a family of the same rooflines still costs headroom.
tests/perf/test_transfer_validation_script.py holds both constants to the fit."""

OverheadScaling = Literal["fixed", "bandwidth", "compute"]


@dataclass(frozen=True)
class Ceilings:
    """Achievable compute per precision (TFLOP/s) and bandwidth (TB/s) of one family."""

    family: str
    tflops: Mapping[str, float]
    tbps: float
    calibrated: bool = False

    def compute(self, precision: str) -> float | None:
        value = self.tflops.get(precision)
        if value is None and precision == "fp32":
            value = self.tflops.get("tf32")
        return value


@dataclass(frozen=True)
class Calibration:
    """What the agent's `calibrate` measured on one family: matmul TFLOP/s per precision and copy TB/s."""

    tflops: Mapping[str, float] = field(default_factory=dict)
    tbps: float | None = None


def ceilings_for(
    family: GpuFamily,
    calibration: Calibration | None = None,
    *,
    gemm_efficiency: float = DEFAULT_GEMM_EFFICIENCY,
    bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY,
) -> Ceilings:
    """A family's achievable ceilings: calibrated where measured, catalog peak x default efficiency elsewhere.

    A calibrated precision also sets the efficiency used for the family's other precisions, so a card that
    runs bf16 GEMMs at 70% of peak is not assumed to run fp8 at 80%.
    """
    peaks: dict[str, float] = {p: float(v) for p, v in family.tflops.items()}
    if "fp32" not in peaks and "tf32" in peaks:
        peaks["fp32"] = peaks["tf32"]
    eff = gemm_efficiency
    measured: dict[str, float] = {}
    if calibration is not None:
        measured = {p: float(v) for p, v in calibration.tflops.items() if p in peaks and v > 0}
        ratios = [measured[p] / peaks[p] for p in measured]
        if ratios:
            eff = sum(ratios) / len(ratios)
    tflops = {p: measured.get(p, v * eff) for p, v in peaks.items()}
    bw_cal = calibration.tbps if calibration is not None and calibration.tbps else None
    tbps = bw_cal if bw_cal is not None else family.memory_bandwidth_tbps * bandwidth_efficiency
    return Ceilings(family=family.id, tflops=tflops, tbps=tbps, calibrated=bool(measured) or bw_cal is not None)


_PREFIXES: tuple[tuple[str, str], ...] = (
    ("fp32", "fp32"),
    ("tf32", "tf32"),
    ("fp16", "fp16"),
    ("bf16", "bf16"),
    ("fp8", "fp8"),
    ("int8", "int8"),
)


def compute_precision(recipe_id: str, recipe: Recipe | None) -> str | None:
    """The precision a recipe's matmuls run at: weight-only int8 computes in 16-bit; unknown ids by prefix."""
    if recipe is not None:
        if recipe.quantization == "int8-weight-only":
            return "bf16" if recipe.precision in ("int8", "bf16") else recipe.precision
        return recipe.precision
    for prefix, precision in _PREFIXES:
        if recipe_id.startswith(prefix):
            return precision
    return None


def bytes_per_param(recipe_id: str, recipe: Recipe | None) -> float | None:
    """Bytes one weight takes under a recipe (quantized recipes store one byte)."""
    if recipe is not None and recipe.quantization != "none":
        return 1.0
    precision = recipe.precision if recipe is not None else compute_precision(recipe_id, None)
    return BYTES_PER_PARAM.get(precision) if precision is not None else None


def stage_params(model: ModelSpec, stage: str) -> int | None:
    """Parameters of a stage's components; None when any count is unknown."""
    try:
        spec = model.stage(stage)
    except KeyError:
        return None
    total = 0
    for comp in spec.components:
        if comp.params is None:
            return None
        total += comp.params
    return total


def weight_gib(model: ModelSpec | None, stage: str, recipe_id: str, recipe: Recipe | None) -> float | None:
    """Resident weights of one stage under a recipe, GiB; None when the catalog lacks the counts."""
    if model is None:
        return None
    params = stage_params(model, stage)
    per = bytes_per_param(recipe_id, recipe)
    if params is None or per is None:
        return None
    return params * per / 2**30


def resolution_factor(model: ModelSpec, stage: str, height: int, width: int) -> float:
    """FLOPs at (height, width) relative to the model's default resolution (module docstring)."""
    if stage == "text_encoder":
        return 1.0
    pixels = height * width
    pixels0 = model.height * model.width
    if stage == "denoiser" and model.architecture in DIT_ARCHITECTURES:
        tokens = pixels / PIXELS_PER_TOKEN + model.text_tokens
        tokens0 = pixels0 / PIXELS_PER_TOKEN + model.text_tokens
        ratio = tokens / tokens0
        return (1 - DIT_ATTENTION_SHARE) * ratio + DIT_ATTENTION_SHARE * ratio * ratio
    return pixels / pixels0


def flops_per_call(model: ModelSpec | None, stage: str, batch: int, height: int, width: int) -> float | None:
    """TFLOP of one call of a stage at a batch and resolution, CFG doubling applied; None if unknown."""
    if model is None:
        return None
    try:
        spec = model.stage(stage)
    except KeyError:
        return None
    if spec.tflops_per_call is None:
        return None
    cfg = 2.0 if (model.cfg and stage == "denoiser") else 1.0
    return spec.tflops_per_call * batch * cfg * resolution_factor(model, stage, height, width)


def activation_bytes(tflops: float, precision: str) -> float:
    """Activation traffic of one call in bytes (module docstring: F / 600 FLOP per byte, x2 for fp32)."""
    scale = 2.0 if precision in ("fp32", "tf32") else 1.0
    return tflops * 1e12 / ACTIVATION_FLOP_PER_BYTE * scale


@dataclass(frozen=True)
class Split:
    """A measured call time cut into the part each ceiling explains, in milliseconds."""

    compute_ms: float
    memory_ms: float
    overhead_ms: float

    @property
    def total_ms(self) -> float:
        return self.compute_ms + self.memory_ms + self.overhead_ms


def split_time(
    latency_ms: float, tflops: float, bytes_moved: float, ceilings: Ceilings, precision: str
) -> Split | None:
    """Cut a measured call time into compute, memory and overhead parts; None when a ceiling is missing."""
    peak = ceilings.compute(precision)
    if peak is None or peak <= 0 or ceilings.tbps <= 0:
        return None
    compute = tflops / peak * 1e3
    memory = bytes_moved / (ceilings.tbps * 1e12) * 1e3
    ideal = compute + memory
    if ideal <= 0:
        return Split(0.0, 0.0, latency_ms)
    if ideal >= latency_ms:
        scale = latency_ms / ideal
        return Split(compute * scale, memory * scale, 0.0)
    return Split(compute, memory, latency_ms - ideal)


def transfer_ms(
    split: Split,
    source: Ceilings,
    target: Ceilings,
    precision: str,
    *,
    overhead_scaling: OverheadScaling = "fixed",
) -> float | None:
    """Scale each part of a split by the ratio of the two families' ceilings; None if the target lacks p."""
    p_src = source.compute(precision)
    p_dst = target.compute(precision)
    if p_src is None or p_dst is None or p_dst <= 0:
        return None
    k_compute = p_src / p_dst
    k_memory = source.tbps / target.tbps
    k_overhead = {"fixed": 1.0, "bandwidth": k_memory, "compute": k_compute}[overhead_scaling]
    return split.compute_ms * k_compute + split.memory_ms * k_memory + split.overhead_ms * k_overhead


def family_distance(source: Ceilings, target: Ceilings, precision: str) -> float | None:
    """How far apart two families are for a precision: the larger log ratio of compute or bandwidth."""
    p_src = source.compute(precision)
    p_dst = target.compute(precision)
    if p_src is None or p_dst is None:
        return None
    return max(abs(math.log(p_dst / p_src)), abs(math.log(target.tbps / source.tbps)))


def transfer_uncertainty(distance: float) -> float:
    """Relative uncertainty of a transferred latency: grows with the distance between the families."""
    return max(TRANSFER_MIN_UNCERTAINTY, TRANSFER_DISTANCE_UNCERTAINTY * distance)
