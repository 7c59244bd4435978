"""Recipe edges the GPU campaign found: a pinned SDPA backend during FLOP counting, channels_last on Conv3d,
torch.compile's recompile limit.

The first two failed cells on the H200; the third timed eager code under a compiled recipe's name on the H100
(docs/benchmarks.md). These run the same code paths on the CPU; compiles use dynamo's "eager" backend, which
traces, guards and recompiles exactly as inductor does, without generating code.
"""

from __future__ import annotations

import diffusers.models.attention as diffusers_attention
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch.nn import functional

from agent.probe import ProbeOptions, Sweep
from agent.target import Target, resolve_target
from agent.timing import SMOKE_TIMER
from stagekit.flops import count_cost
from stagekit.recipes import RecipeOptions, _CallContext


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


def _compiled_sd15(recompile_limit: int, *, size: int = 32) -> ProbeOptions:
    return ProbeOptions(
        model="sd15",
        recipes=("bf16-compile",),
        batches=(1, 2),
        stages=("denoiser",),
        tiny=True,
        height=size,
        width=size,
        timer=SMOKE_TIMER,
        quality=False,
        recipe_options=RecipeOptions(compile_backend="eager", recompile_limit=recompile_limit),
    )


def test_a_compiled_cell_past_the_recompile_limit_fails_instead_of_timing_eager_code() -> None:
    """The tiny UNet's transformer blocks run at two token counts: two static-shape entries of one function.
    With a limit of one, dynamo would run the second eagerly and the cell would time eager code as compiled."""
    rows = Sweep(_compiled_sd15(1), resolve_target(force_cpu=True)).run().rows
    assert [(r.batch, r.status) for r in rows] == [(1, "failed"), (2, "failed")]
    assert "recompile limit (1)" in (rows[0].error or "")
    assert "raise RecipeOptions.recompile_limit" in (rows[0].error or "")
    assert rows[0].latency_ms is None


def test_compiled_groups_leave_no_compiled_entries_for_the_next_model() -> None:
    """diffusers' BasicTransformerBlock.forward is one code object for SDXL and SD 1.5: entries left by one
    group would count toward the next group's limit (on the H100, SD 1.5 after SDXL ran eagerly at batch 8)."""
    block_forward = diffusers_attention.BasicTransformerBlock.forward.__code__
    target = resolve_target(force_cpu=True)
    first = Sweep(_compiled_sd15(2), target).run().rows
    assert [r.status for r in first] == ["ok", "ok"]
    assert first[0].compile_s is not None
    assert _debug_get_cache_entry_list(block_forward) == []
    # At 64 px the blocks see two more token counts: within its own limit of two, but not on top of the first's.
    second = Sweep(_compiled_sd15(2, size=64), target).run().rows
    assert [r.status for r in second] == ["ok", "ok"], [r.error for r in second]
