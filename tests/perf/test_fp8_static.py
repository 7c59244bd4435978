"""benchmarks/fp8_static.py: fp8 layers with static activation scales (the SDXL scale-pass experiment)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stagekit import quant
from tests.helpers import load_benchmark


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


def test_calibrated_static_layers_compute_the_linear_and_clip_what_calibration_never_saw() -> None:
    fs = load_benchmark("fp8_static")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32)).to(torch.bfloat16)
    unused = nn.Linear(64, 64).to(torch.bfloat16)
    net.add_module("unused", unused)  # never called by forward
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = net[2](net[1](net[0](x)))
    quant.swap_linears(net, "fp8-rowwise", min_features=16)

    def calibrate() -> None:
        net[2](net[1](net[0](x)))

    assert fs.make_static(net, calibrate) == 2
    assert isinstance(net[0], fs.Fp8StaticLinear)
    assert isinstance(net[2], fs.Fp8StaticLinear)
    assert isinstance(net.unused, quant.Fp8RowwiseLinear)  # no calibration input: keeps run-time scales
    assert float(net[0].get_buffer("input_scale")) == pytest.approx(float(x.abs().amax()) / quant.FP8_MAX)
    with torch.no_grad():
        y = net[2](net[1](net[0](x)))
        assert y.shape == ref.shape
        assert y.dtype == torch.bfloat16
        assert 1e-4 < _rel_err(y, ref) < 0.08  # fp8 rounding, per-tensor scales
        # An input 10x larger than any the calibration saw is clipped at the fixed scale, not rescaled: the price
        # of a static scale, and why this is an experiment on speed only.
        big = net[0](x * 10)
        with torch.no_grad():
            exact_big = nn.functional.linear(x.float() * 10, net[0].weight.float(), net[0].bias.float())
        assert _rel_err(big, exact_big) > 0.5
