"""The recipes of the levers the denoiser step profiles found (docs/benchmarks.md): a denoiser compiled whole,
and fp8 GEMMs with fast accumulation and the bias in the GEMM (`Recipe.fast_gemm`).

They run the probe's own prepare() on the tiny sd15 UNet on the CPU; compiles use dynamo's "eager" backend, which
decides what is compiled exactly as inductor does, without generating code.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from planner.catalog import known_model, recipes
from planner.catalog.schema import Recipe
from stagekit import quant
from stagekit.pipelines import tiny_shapes
from stagekit.recipes import PreparedStage, RecipeOptions, prepare


def _prepared(recipe_id: str) -> PreparedStage:
    spec = known_model("sd15")
    height, width, tokens = tiny_shapes(spec)
    return prepare(
        spec,
        "denoiser",
        recipes()[recipe_id],
        device=torch.device("cpu"),
        tiny=True,
        height=height,
        width=width,
        text_tokens=tokens,
        options=RecipeOptions(compile_backend="eager", quant_min_features=16),
    )


def _fp8_layers(prepared: PreparedStage) -> list[quant.Fp8RowwiseLinear]:
    return [m for mod in prepared.modules.values() for m in mod.modules() if isinstance(m, quant.Fp8RowwiseLinear)]


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Compiled entries of this test must not count against a later test's recompile limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_whole_compiles_the_whole_unet_where_bf16_compile_leaves_its_resnets_eager() -> None:
    regional = _prepared("bf16-compile")
    regional.apply_compile()
    assert any("regional compile of ['BasicTransformerBlock']" in n for n in regional.notes), regional.notes
    whole = _prepared("bf16-compile-whole")
    whole.apply_compile()
    assert any("whole-module compile of UNet2DConditionModel" in n for n in whole.notes), whole.notes
    whole.runner.prepare(2)
    out = whole.runner.call()
    assert out.shape[:2] == (2, 4)  # a batch of 2 of sd15's 4-channel latents, through the compiled UNet
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize(("recipe_id", "fast"), [("fp8-compile", False), ("fp8-fast-compile", True)])
def test_fast_gemm_recipes_build_fast_fp8_layers_and_the_shipped_fp8_recipe_does_not(
    recipe_id: str, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fp8 recipes are refused on a CPU before any module is built; the layers themselves run here (torch._scaled_mm
    # has a CPU kernel), so let the check pass to see what prepare() builds.
    monkeypatch.setattr(quant, "fp8_supported", lambda device: (True, ""))
    prepared = _prepared(recipe_id)
    layers = _fp8_layers(prepared)
    assert layers
    assert {(layer.fast_accum, layer.fuse_bias) for layer in layers} == {(fast, fast)}
    assert [("fast accumulation" in n) for n in prepared.notes if "Linear layers fp8" in n] == [fast]
    prepared.runner.prepare(1)
    assert torch.isfinite(prepared.runner.call().float()).all()


def test_fast_gemm_is_refused_on_a_recipe_that_is_not_fp8_with_the_fix() -> None:
    with pytest.raises(ValidationError, match=r"fast_gemm is an option of the fp8 GEMMs.*set quantization to fp8"):
        Recipe(id="int8-fast", stages=["denoiser"], precision="int8", quantization="int8-dynamic", fast_gemm=True)
    with pytest.raises(ValueError, match="fast_gemm is an fp8 option"):
        quant.swap_linears(nn.Sequential(nn.Linear(64, 64)), "int8-dynamic", min_features=16, fast_gemm=True)


def test_the_lever_recipes_keep_their_names_meaning() -> None:
    """What the shipped cells of each lever recipe were measured with: changing one means measuring again."""
    table = recipes()
    got = {
        rid: (r.precision, r.quantization, r.fast_gemm, r.compile, r.compile_scope, tuple(r.stages))
        for rid, r in table.items()
        if rid in ("bf16-compile", "fp8-compile", "bf16-compile-whole", "fp8-fast-compile", "fp8-fast-compile-whole")
    }
    assert got == {
        "bf16-compile": ("bf16", "none", False, "default", "regional", ("text_encoder", "denoiser", "vae_decoder")),
        "fp8-compile": ("fp8", "fp8-rowwise", False, "default", "regional", ("text_encoder", "denoiser")),
        "bf16-compile-whole": ("bf16", "none", False, "default", "whole", ("denoiser",)),
        "fp8-fast-compile": ("fp8", "fp8-rowwise", True, "default", "regional", ("text_encoder", "denoiser")),
        "fp8-fast-compile-whole": ("fp8", "fp8-rowwise", True, "default", "whole", ("denoiser",)),
    }
