"""Dynamic fp8 (rowwise) and int8 quantized linear layers, swapped in for nn.Linear.

Why our own and not torchao: torchao 0.17 fp8 + torch.compile did not finish in 8 minutes on the fleet's torch
2.11 (../shared/reference/h100-baseline.json), so a probe cell would hang; torchao 0.18 finishes, but its
regional compile of Flux took 200-216 s against 17-25 s for these layers. Its step was 7-12% faster, which
fast accumulation plus a fused bias (`fast_accum`, `fuse_bias`) close (docs/benchmarks.md).
These layers are plain torch ops that compile like any other module. torchao stays available behind a flag
(`backend="torchao"`) when importable.

- fp8 rowwise: weight scaled per output channel once (e4m3), activation scaled per row at run time, then
  `torch._scaled_mm(a_fp8, w_fp8.t(), scale_a, scale_b, out_dtype=bf16)`.
- int8 dynamic: the same scaling with int8 and `torch._int_mm` (int32 accumulate), scales applied after.
`emulate=True` dequantizes and runs a float matmul instead: the same numerics without the kernels, for CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

QuantMode = Literal["fp8-rowwise", "int8-dynamic"]
FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)
INT8_MAX = 127.0
_EPS = 1e-12


def fp8_supported(device: torch.device) -> tuple[bool, str]:
    """fp8 tensor-core matmul needs CUDA compute capability 8.9+ (Ada, Hopper, Blackwell)."""
    if device.type != "cuda":
        return False, f"fp8 matmul needs an NVIDIA GPU of compute capability 8.9 or later; this is {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return False, f"fp8 matmul needs compute capability 8.9 or later; this GPU is {major}.{minor}"
    return True, ""


def _rowwise_scale(x: torch.Tensor, qmax: float) -> torch.Tensor:
    """Per-row scale (float32, shape rows x 1) so that each row's absolute max maps to qmax."""
    return x.abs().amax(dim=1, keepdim=True).float().clamp(min=_EPS) / qmax


class Fp8RowwiseLinear(nn.Module):
    """y = x W^T + b with W in e4m3 per output channel and x quantized per row at run time."""

    def __init__(
        self, linear: nn.Linear, *, emulate: bool = False, fast_accum: bool = False, fuse_bias: bool = False
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.emulate = emulate
        # cuBLASLt's fast fp8 accumulation (torchao's inference default): faster, fewer accumulator bits. On only
        # in recipes with `fast_gemm` (as fuse_bias): the `fp8`/`fp8-compile` cells ran without them.
        self.fast_accum = fast_accum
        # The bias as the GEMM's epilogue instead of a separate pass over the output (torchao does this).
        self.fuse_bias = fuse_bias
        w = linear.weight.detach()
        w_scale = _rowwise_scale(w, FP8_MAX)  # (out, 1)
        self.register_buffer("weight_fp8", (w.float() / w_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).contiguous())
        self.register_buffer("weight_scale", w_scale.reshape(1, -1).contiguous())  # (1, out): _scaled_mm's scale_b
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.out_dtype = w.dtype if w.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        a_scale = _rowwise_scale(x2, FP8_MAX)
        a_fp8 = (x2.float() / a_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        w_fp8 = self.get_buffer("weight_fp8")
        w_scale = self.get_buffer("weight_scale")
        fused = self.bias.to(self.out_dtype) if self.fuse_bias and self.bias is not None and not self.emulate else None
        if self.emulate:
            y = ((a_fp8.float() * a_scale) @ (w_fp8.float() * w_scale.t()).t()).to(self.out_dtype)
        else:
            y = torch._scaled_mm(
                a_fp8,
                w_fp8.t(),
                scale_a=a_scale,
                scale_b=w_scale,
                bias=fused,
                out_dtype=self.out_dtype,
                use_fast_accum=self.fast_accum,
            )
        if self.bias is not None and fused is None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight, dequantized on access: model code reads `linear.weight.dtype` (Z-Image's
        timestep embedder casts its input to it), so a swapped layer must still answer like an nn.Linear."""
        w_fp8 = self.get_buffer("weight_fp8")
        return (w_fp8.float() * self.get_buffer("weight_scale").t()).to(self.out_dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, emulate={self.emulate}, "
            f"fast_accum={self.fast_accum}, fuse_bias={self.fuse_bias}"
        )


class Int8DynamicLinear(nn.Module):
    """y = x W^T + b with W int8 per output channel, x int8 per row at run time, int32 accumulation."""

    def __init__(self, linear: nn.Linear, *, emulate: bool = False) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.emulate = emulate
        w = linear.weight.detach()
        w_scale = _rowwise_scale(w, INT8_MAX)
        w_q = torch.round(w.float() / w_scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        # _int_mm wants (K, N) column-major for speed: keep W^T as a transposed view of a row-major (N, K).
        self.register_buffer("weight_int8", w_q.contiguous())
        self.register_buffer("weight_scale", w_scale.reshape(1, -1).contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.out_dtype = w.dtype if w.dtype in (torch.bfloat16, torch.float16) else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        a_scale = _rowwise_scale(x2, INT8_MAX)
        a_q = torch.round(x2.float() / a_scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        w_q = self.get_buffer("weight_int8")
        w_scale = self.get_buffer("weight_scale")
        if self.emulate:
            acc = a_q.float() @ w_q.float().t()
        else:
            rows = a_q.shape[0]
            # CUDA's _int_mm wants more than 16 rows and a multiple of 8: pad small batches, then drop the pad.
            pad = 0 if rows > 16 and rows % 8 == 0 else (max(24, ((rows + 7) // 8) * 8) - rows)
            if pad and a_q.device.type == "cuda":
                a_q = torch.nn.functional.pad(a_q, (0, 0, 0, pad))
            acc = torch._int_mm(a_q, w_q.t())[:rows].float()
        y = (acc * a_scale * w_scale).to(self.out_dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight, dequantized on access (see Fp8RowwiseLinear.weight)."""
        w_q = self.get_buffer("weight_int8")
        return (w_q.float() * self.get_buffer("weight_scale").t()).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, emulate={self.emulate}"


@dataclass(frozen=True)
class SwapReport:
    """Which Linear layers were replaced and which were kept in high precision, and why."""

    swapped: list[str]
    skipped: dict[str, str]

    @property
    def count(self) -> int:
        return len(self.swapped)


def eligible(linear: nn.Linear, *, min_features: int) -> str | None:
    """None if the layer can be quantized, else why not (tiny layers cost more to quantize than they save)."""
    if linear.in_features % 16 or linear.out_features % 16:
        return f"dims {linear.in_features}x{linear.out_features} are not multiples of 16 (fp8/int8 kernels need it)"
    if min(linear.in_features, linear.out_features) < min_features:
        return f"smaller than {min_features} features"
    return None


def swap_linears(
    module: nn.Module, mode: QuantMode, *, min_features: int = 128, emulate: bool = False, fast_gemm: bool = False
) -> SwapReport:
    """Replace eligible nn.Linear children in place with quantized layers; return what was swapped.

    `fast_gemm` (fp8 only) turns on the layers' fast accumulation and the bias in the GEMM: the recipes that ask
    for it (`Recipe.fast_gemm`) are separate ids, so a shipped fp8 cell keeps meaning exact accumulation."""
    if fast_gemm and mode != "fp8-rowwise":
        raise ValueError(f"fast_gemm is an fp8 option; {mode} has no fast accumulation")

    def layer(linear: nn.Linear) -> nn.Module:
        if mode == "fp8-rowwise":
            return Fp8RowwiseLinear(linear, emulate=emulate, fast_accum=fast_gemm, fuse_bias=fast_gemm)
        return Int8DynamicLinear(linear, emulate=emulate)

    swapped: list[str] = []
    skipped: dict[str, str] = {}
    targets: list[tuple[nn.Module, str, str, nn.Linear]] = []
    for parent_name, parent in module.named_modules():
        for child_name, child in parent.named_children():
            if type(child) is nn.Linear:
                full = f"{parent_name}.{child_name}" if parent_name else child_name
                targets.append((parent, child_name, full, child))
    for parent, child_name, full, child in targets:
        why = eligible(child, min_features=min_features)
        if why is not None:
            skipped[full] = why
            continue
        setattr(parent, child_name, layer(child))
        swapped.append(full)
    return SwapReport(swapped, skipped)


def quantize_with_torchao(module: nn.Module, mode: QuantMode) -> SwapReport:  # pragma: no cover - GPU + torchao only
    """torchao's equivalent (only when asked for and importable): Float8 rowwise or Int8 dynamic activation."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
        quantize_,
    )

    config = (
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        if mode == "fp8-rowwise"
        else Int8DynamicActivationInt8WeightConfig()
    )
    names = [n for n, m in module.named_modules() if type(m) is nn.Linear]
    quantize_(module, config)
    return SwapReport(names, {})


def torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True
