"""Micro-probes of a GPU's ceilings, compared with its family's catalog figures.

Why: the planner transfers measurements between GPUs of a family and classes cells compute- or memory-bound
against these ceilings; a card that is throttled, power-capped or degraded would poison both. Each probe is
a plain, well-understood kernel: a dense bf16 (and fp8 where the GPU has it) matmul, a device-to-device
copy, a pinned host-to-device copy. A ratio below `flag_ratio` of the catalog figure flags the GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, Field

from agent.timing import TimerOptions, measure
from stagekit import quant


class CalibrationResult(BaseModel):
    """Measured ceilings of one device (units in the names) and how they compare with the catalog."""

    device: str
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    gpu_family: str | None = None
    bf16_tflops: float | None = None
    fp8_tflops: float | None = None
    memory_tbps: float | None = None
    h2d_gbps: float | None = None
    ratios: dict[str, float] = Field(default_factory=dict)
    flagged: bool = False
    flag_reason: str | None = None
    power_limit_w: float | None = None
    clocks_event_reasons: int | None = None
    matmul_size: int = 0
    seconds: float = 0.0

    def to_api(self) -> dict[str, Any]:
        """The planner's calibration entry (docs/api.md, ProbeRunIn.calibrations)."""
        return {
            "gpu_uuid": self.gpu_uuid,
            "bf16_tflops": self.bf16_tflops,
            "fp8_tflops": self.fp8_tflops,
            "memory_tbps": self.memory_tbps,
            "h2d_gbps": self.h2d_gbps,
            "ratios": self.ratios,
            "flagged": self.flagged,
            "flag_reason": self.flag_reason,
        }


@dataclass(frozen=True)
class CalibrationOptions:
    """Sizes of the probes: large on a GPU (saturate it), small on a CPU (development only)."""

    matmul_size: int = 8192
    matmul_dtype: torch.dtype = torch.bfloat16
    copy_mib: int = 1024
    h2d_mib: int = 256
    timer: TimerOptions = field(
        default_factory=lambda: TimerOptions(
            warmup_calls=3, warmup_s=1.5, calls_per_window=10, min_window_s=0.2, max_windows=8
        )
    )

    @classmethod
    def for_device(cls, device: torch.device) -> CalibrationOptions:
        if device.type == "cuda":
            return cls()
        # CPUs have no fast bf16 matmul (torch's fallback takes minutes): the CPU figure is the fp32 rate.
        return cls(
            matmul_size=256,
            matmul_dtype=torch.float32,
            copy_mib=32,
            h2d_mib=0,
            timer=TimerOptions(warmup_calls=1, warmup_s=0.0, calls_per_window=3, min_window_s=0.01, max_windows=4),
        )


def matmul_tflops(device: torch.device, n: int, dtype: torch.dtype, timer: TimerOptions) -> float:
    """Dense n x n x n matmul throughput (2 n^3 FLOPs per call)."""
    a = torch.randn(n, n, device=device, dtype=torch.float32).to(dtype)
    b = torch.randn(n, n, device=device, dtype=torch.float32).to(dtype)
    # `a @ b` (a fresh output) is the cuBLAS path models take through F.linear; `out=` took a slower kernel.
    t = measure(lambda _i: a @ b, device, timer)
    return 2.0 * n**3 / (t.median_ms / 1000.0) / 1e12


def fp8_matmul_tflops(device: torch.device, n: int, timer: TimerOptions) -> float:
    """Dense e4m3 matmul with tensor-wise scales through torch._scaled_mm (bf16 output)."""
    a = torch.randn(n, n, device=device).to(quant.FP8)
    b = torch.randn(n, n, device=device).to(quant.FP8).t()  # column-major, as _scaled_mm wants
    one = torch.ones((), device=device, dtype=torch.float32)
    t = measure(lambda _i: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), device, timer)
    return 2.0 * n**3 / (t.median_ms / 1000.0) / 1e12


def copy_tbps(device: torch.device, mib: int, timer: TimerOptions) -> float:
    """Device memory bandwidth from a large copy (reads + writes: 2 x size bytes per call)."""
    n = mib * 2**20 // 2
    src = torch.empty(n, device=device, dtype=torch.bfloat16).fill_(1.0)
    dst = torch.empty_like(src)
    t = measure(lambda _i: dst.copy_(src), device, timer)
    return 2.0 * n * 2 / (t.median_ms / 1000.0) / 1e12


def h2d_gbps(device: torch.device, mib: int, timer: TimerOptions) -> float:
    """Host-to-device bandwidth from a pinned buffer (what loading weights and inputs sees)."""
    n = mib * 2**20
    host = torch.empty(n, dtype=torch.uint8).pin_memory()
    dev = torch.empty(n, dtype=torch.uint8, device=device)
    t = measure(lambda _i: dev.copy_(host, non_blocking=True), device, timer)
    return n / (t.median_ms / 1000.0) / 1e9


def compare(
    result: CalibrationResult,
    *,
    peak_bf16: float | None,
    peak_fp8: float | None,
    peak_tbps: float | None,
    tdp_w: float | None,
    flag_ratio: float,
) -> CalibrationResult:
    """Fill ratios against the catalog and flag a GPU far below its family (never flag without a family)."""
    ratios: dict[str, float] = {}
    if result.bf16_tflops is not None and peak_bf16:
        ratios["bf16"] = result.bf16_tflops / peak_bf16
    if result.fp8_tflops is not None and peak_fp8:
        ratios["fp8"] = result.fp8_tflops / peak_fp8
    if result.memory_tbps is not None and peak_tbps:
        ratios["memory"] = result.memory_tbps / peak_tbps
    reasons = [
        f"{k} at {v:.0%} of the catalog figure (threshold {flag_ratio:.0%})"
        for k, v in ratios.items()
        if v < flag_ratio
    ]
    if result.power_limit_w is not None and tdp_w and result.power_limit_w < 0.9 * tdp_w:
        reasons.append(f"power limit {result.power_limit_w:.0f} W is below 90% of the family TDP {tdp_w:.0f} W")
    if reasons and result.clocks_event_reasons:
        reasons.append(f"NVML clock event reasons 0x{result.clocks_event_reasons:x}")
    return result.model_copy(
        update={"ratios": ratios, "flagged": bool(reasons), "flag_reason": "; ".join(reasons) or None}
    )


def calibrate(
    device: torch.device,
    *,
    family: Any = None,
    gpu_uuid: str | None = None,
    gpu_name: str | None = None,
    power_limit_w: float | None = None,
    clocks_event_reasons: int | None = None,
    flag_ratio: float = 0.6,
    options: CalibrationOptions | None = None,
) -> CalibrationResult:
    """Run the probes on one device. `family` is the catalog GpuFamily (None: unknown, nothing compared)."""
    opts = options or CalibrationOptions.for_device(device)
    t0 = time.perf_counter()
    result = CalibrationResult(
        device=str(device),
        gpu_uuid=gpu_uuid,
        gpu_name=gpu_name,
        gpu_family=family.id if family is not None else None,
        power_limit_w=power_limit_w,
        clocks_event_reasons=clocks_event_reasons,
        matmul_size=opts.matmul_size,
    )
    update: dict[str, Any] = {
        "bf16_tflops": matmul_tflops(device, opts.matmul_size, opts.matmul_dtype, opts.timer),
        "memory_tbps": copy_tbps(device, opts.copy_mib, opts.timer),
    }
    if quant.fp8_supported(device)[0]:
        update["fp8_tflops"] = fp8_matmul_tflops(device, opts.matmul_size, opts.timer)
    if device.type == "cuda" and opts.h2d_mib > 0:
        update["h2d_gbps"] = h2d_gbps(device, opts.h2d_mib, opts.timer)
    update["seconds"] = time.perf_counter() - t0
    result = result.model_copy(update=update)
    if family is None:
        return result
    return compare(
        result,
        peak_bf16=family.peak_tflops("bf16"),
        peak_fp8=family.peak_tflops("fp8"),
        peak_tbps=family.memory_bandwidth_tbps,
        tdp_w=family.tdp_w,
        flag_ratio=flag_ratio,
    )
