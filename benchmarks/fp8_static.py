"""fp8 layers with static activation scales: an experiment on the SDXL aim, not a recipe.

The SDXL fp8 step profile (docs/benchmarks.md, "Where a denoiser step's time goes") spends a third of the step
computing each activation row's fp8 scale: a reduction over the row (absmax), then a second pass that divides,
clamps and casts. A scale fixed ahead of time needs no reduction: the cast is one pointwise op that inductor
fuses into the op producing the activation, so the pass disappears. The price is accuracy: one per-tensor scale
chosen from calibration inputs clips or wastes range on inputs unlike them, and synthetic weights say nothing
about real activations. So this measures only the speed such a recipe would have.

`make_static(module, calibrate)` records each agent fp8 layer's input absmax over `calibrate()` (one or more
eager calls), then replaces the layer with `Fp8StaticLinear`: per-tensor scales for the activation and the
weight (`torch._scaled_mm` tensorwise, cuBLASLt), fast accumulation, the bias in the GEMM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from stagekit.quant import FP8, FP8_MAX, Fp8RowwiseLinear

_EPS = 1e-12


class Fp8StaticLinear(nn.Module):
    """y = x W^T + b with x cast to e4m3 by a fixed scale (no reduction at run time) and W per tensor."""

    def __init__(self, layer: Fp8RowwiseLinear, input_amax: float) -> None:
        super().__init__()
        self.in_features = layer.in_features
        self.out_features = layer.out_features
        self.out_dtype = layer.out_dtype
        w = layer.weight.float()  # dequantized from the rowwise layer
        w_scale = w.abs().amax().clamp(min=_EPS) / FP8_MAX
        self.register_buffer("weight_fp8", (w / w_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).contiguous())
        self.register_buffer("weight_scale", w_scale.reshape(()).float())
        a_scale = torch.tensor(max(input_amax, _EPS) / FP8_MAX, dtype=torch.float32, device=w.device)
        self.register_buffer("input_scale", a_scale)
        self.register_buffer("input_inv_scale", 1.0 / a_scale)
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        a_fp8 = (x2.float() * self.get_buffer("input_inv_scale")).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        y = torch._scaled_mm(
            a_fp8,
            self.get_buffer("weight_fp8").t(),
            scale_a=self.get_buffer("input_scale"),
            scale_b=self.get_buffer("weight_scale"),
            bias=None if self.bias is None else self.bias.to(self.out_dtype),
            out_dtype=self.out_dtype,
            use_fast_accum=True,
        )
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized on access, as Fp8RowwiseLinear: model code reads `linear.weight.dtype`."""
        return (self.get_buffer("weight_fp8").float() * self.get_buffer("weight_scale")).to(self.out_dtype)


def make_static(module: nn.Module, calibrate: Callable[[], Any]) -> int:
    """Calibrate every Fp8RowwiseLinear in `module` on `calibrate()` and swap in Fp8StaticLinear; how many were
    swapped (a layer the calibration never called keeps its run-time scales)."""
    amax: dict[str, float] = {}
    hooks = []
    layers = {name: m for name, m in module.named_modules() if isinstance(m, Fp8RowwiseLinear)}
    for name, layer in layers.items():

        def record(_: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().amax()))

        hooks.append(layer.register_forward_pre_hook(record))
    try:
        with torch.inference_mode():
            calibrate()
    finally:
        for hook in hooks:
            hook.remove()
    for name, layer in layers.items():
        if name not in amax:  # not called in the calibration: it keeps its run-time scales
            continue
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, Fp8StaticLinear(layer, amax[name]))
    return len(amax)
