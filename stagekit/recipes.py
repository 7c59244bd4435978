"""Apply a catalog Recipe (data) to a stage: precision, VAE variant, tiling, fused QKV, channels_last,
quantization, attention backend, step cache and torch.compile, through diffusers, torch and our quant layers.

Each option either applies or raises StageUnsupported with the reason, so the sweep records the cell as
`unsupported` (fp8 on a GPU without fp8, a step cache on a UNet, ...) instead of measuring something else.
The order matters and is fixed: build in the recipe's dtype -> module variant (tiny / tiled VAE) -> fused
QKV -> channels_last -> quantization -> step cache -> compile (compile last, so it sees the final graph).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from planner.catalog import ModelSpec, Recipe
from stagekit import quant
from stagekit.flops import COUNTING_ATTENTION
from stagekit.pipelines import (
    DTYPES,
    BuiltStage,
    StageRunner,
    StageSetup,
    StageUnsupported,
    build_stage,
    tile_size,
)


@dataclass(frozen=True)
class RecipeOptions:
    """How recipes are applied on this run (not part of the recipe: properties of the tool and machine)."""

    quant_backend: str = "agent"  # "agent" (stagekit/quant.py) or "torchao" (only if importable)
    quant_min_features: int = 128
    compile_fullgraph: bool = False
    compile_backend: str = "inductor"  # "eager" traces and guards like inductor without codegen (CPU tests)
    recompile_limit: int = 64
    """torch._dynamo's per-function limit (default 8): compiled modules are static-shape, so every batch size
    (and every resolution a repeated block sees: a UNet's transformer blocks run at 3-4) is one more entry of the
    same code object, and past the limit dynamo silently runs that function eagerly."""


@dataclass
class PreparedStage:
    """A stage with a recipe applied: the runner to time, and what was done to get it."""

    runner: StageRunner
    recipe: Recipe
    notes: list[str] = field(default_factory=list)
    compile_pending: Callable[[], None] | None = None
    compiled: bool = False
    uses_cache: bool = False
    cache_modules: list[nn.Module] = field(default_factory=list)

    def apply_compile(self) -> None:
        """Compile now (deferred so FLOPs can be counted on the eager module first)."""
        if self.compile_pending is not None and not self.compiled:
            self.compile_pending()
            self.compiled = True

    @property
    def modules(self) -> dict[str, nn.Module]:
        return self.runner.modules


_SDPA = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}


def attention_context(attention: str) -> contextlib.AbstractContextManager[Any] | None:
    """A context that restricts scaled_dot_product_attention to one backend; None for the default choice."""
    if attention == "default":
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, _SDPA[attention])])


def _enable_tiling(vae: Any, setup: StageSetup) -> str:
    if not hasattr(vae, "enable_tiling"):
        raise StageUnsupported(f"{type(vae).__name__} has no tiled decode")
    edge = tile_size(vae, setup.height, setup.width)
    name = type(vae).__name__
    if name == "AutoencoderKLQwenImage":
        vae.enable_tiling(
            tile_sample_min_height=edge,
            tile_sample_min_width=edge,
            tile_sample_stride_height=edge * 3 // 4,
            tile_sample_stride_width=edge * 3 // 4,
        )
    else:
        vae.enable_tiling()
        if hasattr(vae, "tile_sample_min_size"):
            vae.tile_sample_min_size = edge
            vae.tile_latent_min_size = edge // setup.spec.vae_scale_factor
    return f"tiled decode, {edge} px tiles"


def _fuse_qkv(module: nn.Module) -> None:
    fuse = getattr(module, "fuse_qkv_projections", None)
    if fuse is None:
        raise StageUnsupported(f"{type(module).__name__} has no fuse_qkv_projections")
    try:
        fuse()
    except (ValueError, NotImplementedError) as exc:
        raise StageUnsupported(f"{type(module).__name__}: fuse_qkv_projections refused: {exc}") from exc


def _enable_first_block_cache(module: nn.Module, threshold: float) -> None:
    from diffusers.hooks import first_block_cache

    config = first_block_cache.FirstBlockCacheConfig(threshold=threshold)

    enable = getattr(module, "enable_cache", None)
    if enable is None:
        raise StageUnsupported(f"{type(module).__name__} has no diffusers cache hooks (CacheMixin)")
    try:
        enable(config)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise StageUnsupported(f"{type(module).__name__}: First-Block-Cache cannot apply: {exc}") from exc


def reset_cache(module: nn.Module) -> None:
    """Forget a step cache's state: a new trajectory (image) starts with a full compute."""
    reset = getattr(module, "_reset_stateful_cache", None)
    if reset is not None:
        reset()


def _compile_target(module: nn.Module, stage: str) -> nn.Module:
    # A VAE's call is decode(), not forward(): compile its decoder network (and post-quant conv if any).
    if stage == "vae_decoder" and hasattr(module, "decoder"):
        decoder: nn.Module = module.decoder  # type: ignore[assignment]
        return decoder
    return module


def compile_stage(prepared: PreparedStage, recipe: Recipe, options: RecipeOptions) -> list[str]:
    """torch.compile the stage's modules: regional (diffusers compile_repeated_blocks) where the model has
    repeated blocks and the recipe asks for it, the whole module otherwise; static shapes (dynamic=False)."""
    notes: list[str] = []
    mode = None if recipe.compile == "default" else recipe.compile
    fullgraph = options.compile_fullgraph or (recipe.compile_scope == "whole" and recipe.compile == "max-autotune")
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = options.recompile_limit
    backend = options.compile_backend
    for name, module in prepared.modules.items():
        repeated = getattr(module, "_repeated_blocks", None)
        if recipe.compile_scope == "regional" and repeated and hasattr(module, "compile_repeated_blocks"):
            regional: Any = module
            regional.compile_repeated_blocks(
                backend=backend, mode=mode, dynamic=False, fullgraph=options.compile_fullgraph
            )
            notes.append(f"{name}: regional compile of {list(repeated)} (mode {recipe.compile})")
        else:
            target = _compile_target(module, prepared.runner.setup.stage)
            target.compile(backend=backend, mode=mode, dynamic=False, fullgraph=fullgraph)
            notes.append(f"{name}: whole-module compile of {type(target).__name__} (mode {recipe.compile})")
    return notes


def check_recipe(recipe: Recipe, stage: str, device: torch.device) -> None:
    """Refuse early what cannot run here (no module is built for an unsupported cell)."""
    if stage not in recipe.stages:
        raise StageUnsupported(f"recipe {recipe.id!r} does not apply to stage {stage!r} (it lists {recipe.stages})")
    if recipe.quantization == "fp8-rowwise" or recipe.precision == "fp8":
        ok, why = quant.fp8_supported(device)
        if not ok:
            raise StageUnsupported(why)
    if recipe.quantization in ("fp8-tensorwise", "int8-weight-only"):
        raise StageUnsupported(f"quantization {recipe.quantization!r} is not implemented by the agent")
    if recipe.attention == "cudnn" and device.type != "cuda":
        raise StageUnsupported("the cuDNN attention backend needs an NVIDIA GPU")
    if recipe.attention == "efficient" and device.type != "cuda":
        raise StageUnsupported("the memory-efficient attention backend needs a GPU")
    if recipe.cache != "none" and stage != "denoiser":
        raise StageUnsupported("step caches apply to the denoiser only")
    if recipe.vae != "full" and stage != "vae_decoder":
        raise StageUnsupported("VAE variants apply to the vae_decoder stage only")
    if recipe.precision == "fp16" and device.type == "cpu":
        pass  # fp16 runs on CPUs (slowly); measured like any other recipe
    if recipe.compile != "none" and recipe.cuda_graphs and device.type != "cuda":
        raise StageUnsupported("CUDA graphs need a GPU")


def prepare(
    spec: ModelSpec,
    stage: str,
    recipe: Recipe,
    *,
    device: torch.device,
    tiny: bool,
    height: int,
    width: int,
    text_tokens: int,
    weights_dir: Path | None = None,
    options: RecipeOptions | None = None,
) -> PreparedStage:
    """Build the stage in the recipe's form. Raises StageUnsupported with the reason when it cannot."""
    opts = options or RecipeOptions()
    check_recipe(recipe, stage, device)
    dtype = DTYPES[recipe.precision]
    built: BuiltStage = build_stage(
        spec, stage, tiny=tiny, device=device, dtype=dtype, tiny_vae=recipe.vae == "tiny", weights_dir=weights_dir
    )
    setup = StageSetup(spec, stage, height, width, text_tokens, tiny, device, dtype, channels_last=recipe.channels_last)
    runner = StageRunner(setup, built.modules)
    prepared = PreparedStage(runner, recipe)
    notes = prepared.notes
    if recipe.vae == "tiny":
        notes.append("tiny VAE (AutoencoderTiny)")
    if recipe.vae == "tiled":
        for module in built.modules.values():
            notes.append(_enable_tiling(module, setup))
    if recipe.fused_qkv:
        for module in built.modules.values():
            _fuse_qkv(module)
        notes.append("fused QKV projections")
    if recipe.channels_last:
        for module in built.modules.values():
            if any(isinstance(m, nn.Conv3d) for m in module.modules()):
                raise StageUnsupported(
                    f"{type(module).__name__} has Conv3d layers: channels_last is a 4-D (Conv2d) layout "
                    "(channels_last_3d is not part of this recipe)"
                )
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        notes.append("channels_last")
    if recipe.quantization in ("fp8-rowwise", "int8-dynamic"):
        mode: quant.QuantMode = "fp8-rowwise" if recipe.quantization == "fp8-rowwise" else "int8-dynamic"
        for name, module in built.modules.items():
            if opts.quant_backend == "torchao":
                if not quant.torchao_available():
                    raise StageUnsupported("torchao was asked for (--quant-backend torchao) but is not importable")
                if recipe.fast_gemm:
                    raise StageUnsupported(
                        f"recipe {recipe.id!r} sets fast_gemm, an option of the agent's own fp8 layers: "
                        "run it with --quant-backend agent"
                    )
                report = quant.quantize_with_torchao(module, mode)
            else:
                report = quant.swap_linears(
                    module, mode, min_features=opts.quant_min_features, fast_gemm=recipe.fast_gemm
                )
            if report.count == 0:
                raise StageUnsupported(f"{name}: no Linear layer is eligible for {mode} quantization")
            fast = ", fast accumulation, bias in the GEMM" if recipe.fast_gemm else ""
            notes.append(
                f"{name}: {report.count} Linear layers {mode} ({opts.quant_backend}{fast}), {len(report.skipped)} kept"
            )
    if recipe.cache == "first-block-cache":
        threshold = recipe.cache_threshold or 0.08
        for module in built.modules.values():
            _enable_first_block_cache(module, threshold)
            prepared.cache_modules.append(module)
        prepared.uses_cache = True
        notes.append(f"First-Block-Cache threshold {threshold}")
    runner.call_context = _call_context(recipe, prepared.cache_modules)
    if recipe.compile != "none":

        def _do() -> None:
            notes.extend(compile_stage(prepared, recipe, opts))

        prepared.compile_pending = _do
    return prepared


class _CallContext(contextlib.AbstractContextManager[Any]):
    """Attention backend + diffusers cache context around each call (re-entrant: one per call)."""

    def __init__(self, attention: str, cache_modules: list[nn.Module]) -> None:
        self.attention = attention
        self.cache_modules = cache_modules
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> None:
        stack = contextlib.ExitStack()
        ctx = None if COUNTING_ATTENTION.get() else attention_context(self.attention)
        if ctx is not None:
            stack.enter_context(ctx)
        for m in self.cache_modules:
            stack.enter_context(m.cache_context("cond"))  # type: ignore[operator]
        self._stack = stack

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def _call_context(recipe: Recipe, cache_modules: list[nn.Module]) -> contextlib.AbstractContextManager[Any] | None:
    if recipe.attention == "default" and not cache_modules:
        return None
    return _CallContext(recipe.attention, cache_modules)


@contextlib.contextmanager
def timed(label: str, sink: dict[str, float]) -> Iterator[None]:
    """Record how long a block took (seconds) under `label`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        sink[label] = time.perf_counter() - t0
