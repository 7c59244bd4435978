"""Recipe edges the GPU campaign found: a pinned SDPA backend during FLOP counting, channels_last on Conv3d.

Both failed cells on the H200 (docs/benchmarks.md); these run the same code paths on the CPU.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from agent.flops import count_cost
from agent.probe import ProbeOptions, Sweep
from agent.recipes import _CallContext
from agent.target import Target, resolve_target
from agent.timing import SMOKE_TIMER


def test_a_recipe_pinned_backend_does_not_block_the_math_retry_of_a_flop_count() -> None:
    """On CUDA, torch's FLOP formula for flash/cuDNN SDPA asserts on grouped-query shapes; count_cost retries on
    the math backend. The recipe's own pin (entered inside the counted call) must not win over that retry."""
    q, k, v = torch.randn(1, 4, 32, 16), torch.randn(1, 2, 32, 16), torch.randn(1, 2, 32, 16)
    pinned = _CallContext("flash", [])

    def call() -> torch.Tensor:
        with pinned:
            if torch.backends.cuda.flash_sdp_enabled() or not torch.backends.cuda.math_sdp_enabled():
                # What the CUDA flash formula does with 4 query heads over 2 KV heads.
                raise AssertionError("sdpa_flop_count: query/key/value shapes are incompatible")
            return functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    cost = count_cost(call)
    # QK^T and PV: 2 matmuls of (4 heads x 32 x 32 x 16) multiply-adds, 2 FLOPs each.
    assert cost.flops == 2 * 2 * 4 * 32 * 32 * 16
    # The pin is back in force for the timed calls.
    with pinned:
        assert torch.backends.cuda.flash_sdp_enabled()
        assert not torch.backends.cuda.math_sdp_enabled()


def test_channels_last_on_a_conv3d_vae_is_unsupported_with_the_reason() -> None:
    target: Target = resolve_target(force_cpu=True)
    opts = ProbeOptions(
        model="qwen-image",
        recipes=("bf16-channels-last",),
        batches=(1,),
        stages=("vae_decoder",),
        tiny=True,
        height=32,
        width=32,
        timer=SMOKE_TIMER,
        quality=False,
    )
    rows = Sweep(opts, target).run().rows
    assert [(r.stage, r.recipe, r.status) for r in rows] == [("vae_decoder", "bf16-channels-last", "unsupported")]
    assert "Conv3d" in (rows[0].error or "")
