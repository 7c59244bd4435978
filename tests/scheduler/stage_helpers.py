"""Stage groups of the tiny CPU models, built once per test session (each build costs seconds on a CPU)."""

from __future__ import annotations

import functools
from typing import Any

from scheduler.stages import GroupRunner, GroupSpec, stage_builder
from stagekit.sources import ModelSources

SYNTHETIC = stage_builder(ModelSources(synthetic=True))
"""The tiny stand-in models on random weights (asked for explicitly, as `--synthetic`)."""

ALL = ("text_encoder", "denoiser", "vae_decoder")
MODELS = ("sd15", "sdxl", "flux-dev", "qwen-image", "z-image-turbo")
"""One model of every architecture the catalog has (sd, sdxl, flux, qwen-image, z-image)."""

BF16 = (("text_encoder", "bf16"), ("denoiser", "bf16"), ("vae_decoder", "bf16"))
MIXED: dict[str, tuple[tuple[str, str], ...]] = {
    "sd15": (("text_encoder", "bf16-sdpa-flash"), ("denoiser", "bf16-channels-last"), ("vae_decoder", "bf16-tiny-vae")),
    "sdxl": (("text_encoder", "fp32"), ("denoiser", "bf16-fused-qkv"), ("vae_decoder", "bf16-tiled-vae")),
    "flux-dev": (("text_encoder", "bf16-sdpa-flash"), ("denoiser", "bf16-fbcache"), ("vae_decoder", "bf16-tiny-vae")),
    "qwen-image": (("text_encoder", "fp32"), ("denoiser", "bf16-fused-qkv"), ("vae_decoder", "bf16-tiled-vae")),
    "z-image-turbo": (
        ("text_encoder", "fp32"),
        ("denoiser", "bf16-sdpa-flash"),
        ("vae_decoder", "bf16-channels-last"),
    ),
}
"""A second recipe for every stage of every model: attention backends, channels_last, fused QKV, a step cache,
tiny and tiled VAEs, fp32 (the recipes a CPU can run on that model)."""

FP32 = (("text_encoder", "fp32"), ("denoiser", "fp32"), ("vae_decoder", "fp32"))


@functools.cache
def group(model: str, recipes: tuple[tuple[str, str], ...], stages: tuple[str, ...] = ALL) -> GroupRunner:
    return GroupRunner.build(GroupSpec(model, stages, recipes, True, "cpu"), SYNTHETIC)


def items(n: int, *, steps: int = 2, negative: str | None = None) -> list[dict[str, Any]]:
    prompts = ["a red fox in the snow at dawn", "castle", "a bowl of fruit on a wooden table, oil painting"]
    return [
        {
            "prompt": prompts[i % len(prompts)],
            "negative_prompt": negative,
            "seed": 100 + i,
            "height": 64,
            "width": 64,
            "steps": steps,
        }
        for i in range(n)
    ]
