"""Our fp8 rowwise and int8 dynamic linear layers: numerics against bf16, and which layers the swap covers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stagekit import quant


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.detach().float() - ref.detach().float()).norm() / ref.detach().float().norm())


@pytest.fixture
def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(256, 128, bias=True).to(torch.bfloat16)


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    # Rows of very different magnitude: a per-tensor scale would lose the small ones, per-row keeps them.
    base = torch.randn(2, 8, 256)
    base[0] *= 100.0
    return base.to(torch.bfloat16)


def test_fp8_emulated_matches_bf16_within_fp8_error(linear: nn.Linear, x: torch.Tensor) -> None:
    ref = linear(x)
    layer = quant.Fp8RowwiseLinear(linear, emulate=True)
    y = layer(x)
    assert y.shape == ref.shape
    assert y.dtype == torch.bfloat16
    err = _rel_err(y, ref)
    assert 1e-4 < err < 0.06, err  # e4m3 has 3 mantissa bits: a few percent, never zero
    # Per-row scaling: the small-magnitude rows are as accurate as the large ones.
    assert _rel_err(y[1], ref[1]) < 0.06


def test_fp8_kernel_path_agrees_with_emulation(linear: nn.Linear, x: torch.Tensor) -> None:
    """torch._scaled_mm runs on this CPU build; its call (layout, scale shapes) must match the emulation."""
    kernel = quant.Fp8RowwiseLinear(linear)(x)
    emulated = quant.Fp8RowwiseLinear(linear, emulate=True)(x)
    assert _rel_err(kernel, emulated) < 0.01


@pytest.mark.parametrize(("fast_accum", "fuse_bias"), [(True, False), (False, True), (True, True)])
def test_fp8_gemm_options_compute_the_same_layer(
    linear: nn.Linear, x: torch.Tensor, fast_accum: bool, fuse_bias: bool
) -> None:
    """Fast accumulation and the bias as the GEMM's epilogue change speed (benchmarks/fp8_linear.py), not what the
    layer computes: the bias must be added exactly once, whichever path adds it."""
    with torch.no_grad():
        linear.bias.fill_(20.0)  # as large as the outputs of the large rows: a bias added twice or lost shows
    exact = quant.Fp8RowwiseLinear(linear)(x)
    optioned = quant.Fp8RowwiseLinear(linear, fast_accum=fast_accum, fuse_bias=fuse_bias)(x)
    assert optioned.shape == exact.shape
    assert optioned.dtype == exact.dtype
    assert _rel_err(optioned, exact) < 0.01
    assert _rel_err(optioned - 20.0, exact) > 0.1


def test_the_probe_swaps_in_exact_accumulation_as_every_shipped_fp8_cell_was_measured() -> None:
    """The default swap (recipes fp8, fp8-compile) keeps exact accumulation and a separate bias, as their shipped
    cells on both GPUs were measured; the fast GEMM is the separate recipes' `fast_gemm` (test_lever_recipes.py)."""
    module = nn.Sequential(nn.Linear(256, 256))
    quant.swap_linears(module, "fp8-rowwise", emulate=True)
    layer = module[0]
    assert isinstance(layer, quant.Fp8RowwiseLinear)
    assert (layer.fast_accum, layer.fuse_bias) == (False, False)


def test_int8_emulated_and_kernel_match_bf16(linear: nn.Linear, x: torch.Tensor) -> None:
    ref = linear(x)
    emulated = quant.Int8DynamicLinear(linear, emulate=True)(x)
    kernel = quant.Int8DynamicLinear(linear)(x)  # torch._int_mm (CPU implementation)
    assert _rel_err(emulated, ref) < 0.03
    assert _rel_err(kernel, emulated) < 0.01


def test_quantized_weights_are_stored_in_8_bits(linear: nn.Linear) -> None:
    fp8 = quant.Fp8RowwiseLinear(linear)
    int8 = quant.Int8DynamicLinear(linear)
    assert fp8.get_buffer("weight_fp8").dtype == quant.FP8
    assert fp8.get_buffer("weight_scale").shape == (1, 128)
    assert int8.get_buffer("weight_int8").dtype == torch.int8


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(256, 512)
        self.odd = nn.Linear(250, 256)  # not a multiple of 16
        self.small = nn.Linear(32, 32)  # too small to pay for quantization
        self.inner = nn.Sequential(nn.Linear(512, 256), nn.GELU())
        self.norm = nn.LayerNorm(256)


def test_swap_covers_eligible_linears_only() -> None:
    block = _Block()
    report = quant.swap_linears(block, "int8-dynamic", min_features=128)
    assert sorted(report.swapped) == ["big", "inner.0"]
    assert set(report.skipped) == {"odd", "small"}
    assert "multiples of 16" in report.skipped["odd"]
    assert isinstance(block.big, quant.Int8DynamicLinear)
    assert isinstance(block.inner[0], quant.Int8DynamicLinear)
    assert type(block.odd) is nn.Linear
    assert type(block.small) is nn.Linear
    assert isinstance(block.norm, nn.LayerNorm)


def test_swap_on_a_real_diffusers_block_keeps_its_output() -> None:
    from diffusers.models.attention import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(256, mult=2).to(torch.bfloat16)
    x = torch.randn(1, 16, 256, dtype=torch.bfloat16)
    ref = ff(x)
    report = quant.swap_linears(ff, "fp8-rowwise", min_features=128, emulate=True)
    assert report.count == 2
    assert _rel_err(ff(x), ref) < 0.08


def test_fp8_is_unsupported_on_the_cpu() -> None:
    ok, why = quant.fp8_supported(torch.device("cpu"))
    assert not ok
    assert "compute capability 8.9" in why


@pytest.mark.parametrize("layer", [quant.Fp8RowwiseLinear, quant.Int8DynamicLinear])
def test_swapped_layer_still_answers_weight_like_a_linear(layer: type[nn.Module], linear: nn.Linear) -> None:
    """Model code reads `linear.weight.dtype` (Z-Image's timestep embedder): the H100 campaign's Z-Image fp8
    cells failed with "'Fp8RowwiseLinear' object has no attribute 'weight'" before layers exposed one."""
    q = layer(linear, emulate=True)  # type: ignore[call-arg]
    w = q.weight
    assert w.shape == linear.weight.shape
    assert w.dtype == linear.weight.dtype
    rel = (w.float() - linear.weight.float()).norm() / linear.weight.float().norm()
    assert rel < 0.05
