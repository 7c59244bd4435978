"""Catalog entries the benchmark scripts use when the shipped catalog lacks them.

The catalog data files (planner/catalog/data/*.yaml) are the source of truth; these entries copy the
figures of ../shared/reference/diffusion-facts.md §6a (FLOPs, parameter counts) and §7 (GPU catalogue) so
the scripts run before the catalog lands and for families it does not carry (the A10). Every use is printed.
"""

from __future__ import annotations

from planner.catalog.schema import Component, GpuFamily, ModelSpec, Recipe, StageSpec

FACTS = "../shared/reference/diffusion-facts.md"


def _family(fid: str, name: str, mem_gb: float, tbps: float, tflops: dict[str, float], tdp: float) -> GpuFamily:
    return GpuFamily.model_validate(
        {
            "id": fid,
            "name": name,
            "vendor": "nvidia",
            "memory_gib": mem_gb * 1e9 / 2**30,
            "memory_bandwidth_tbps": tbps,
            "tflops": tflops,
            "tdp_w": tdp,
            "sources": [f"{FACTS} §7"],
        }
    )


FAMILIES: dict[str, GpuFamily] = {
    f.id: f
    for f in (
        _family("a10-24gb", "NVIDIA A10", 24, 0.600, {"bf16": 125, "fp16": 125, "int8": 250}, 150),
        _family("a100-80gb", "NVIDIA A100 80GB SXM", 80, 2.039, {"bf16": 312, "fp16": 312, "int8": 624}, 400),
        _family(
            "h100-sxm-80gb",
            "NVIDIA H100 SXM",
            80,
            3.35,
            {"bf16": 989, "fp16": 989, "fp8": 1979, "int8": 1979},
            700,
        ),
        _family("h200-141gb", "NVIDIA H200 SXM", 141, 4.8, {"bf16": 989, "fp16": 989, "fp8": 1979}, 700),
        _family("l40s-48gb", "NVIDIA L40S", 48, 0.864, {"bf16": 362, "fp16": 362, "fp8": 733, "int8": 733}, 350),
        _family("l4-24gb", "NVIDIA L4", 24, 0.300, {"bf16": 121, "fp16": 121, "fp8": 242.5, "int8": 242.5}, 72),
    )
}


def _component(name: str, params: int) -> Component:
    return Component(
        name=name,
        library="diffusers",
        class_name="-",
        config="-",
        tiny_config="-",
        params=params,
        status="computed",
        source=f"{FACTS} §6a",
    )


def _stage(name: str, tflops: float, components: list[Component]) -> StageSpec:
    return StageSpec.model_validate(
        {"name": name, "components": components, "tflops_per_call": tflops, "flops_source": f"{FACTS} §6a"}
    )


MODELS: dict[str, ModelSpec] = {
    "sdxl": ModelSpec(
        id="sdxl",
        name="SDXL base 1.0",
        architecture="sdxl",
        default_steps=30,
        height=1024,
        width=1024,
        guidance_scale=5.0,
        cfg=True,
        text_tokens=77,
        latent_channels=4,
        stages=[
            _stage(
                "text_encoder",
                0.111,
                [_component("text_encoder", 123_100_000), _component("te2", 694_700_000)],
            ),
            _stage("denoiser", 6.761, [_component("unet", 2_567_463_684)]),
            _stage("vae_decoder", 10.47, [_component("vae", 83_700_000)]),
        ],
    ),
    "flux-dev": ModelSpec(
        id="flux-dev",
        name="FLUX.1-dev",
        architecture="flux",
        default_steps=28,
        height=1024,
        width=1024,
        guidance_scale=3.5,
        cfg=False,
        text_tokens=512,
        latent_channels=16,
        stages=[
            _stage(
                "text_encoder",
                4.853,
                [_component("text_encoder", 123_100_000), _component("t5", 4_762_300_000)],
            ),
            _stage("denoiser", 74.38, [_component("transformer", 11_901_408_320)]),
            _stage("vae_decoder", 10.47, [_component("vae", 83_800_000)]),
        ],
    ),
}


def _recipe(rid: str, precision: str, **extra: object) -> Recipe:
    return Recipe.model_validate(
        {"id": rid, "stages": ["text_encoder", "denoiser", "vae_decoder"], "precision": precision, **extra}
    )


RECIPES: dict[str, Recipe] = {
    r.id: r
    for r in (
        _recipe("fp32", "fp32"),
        _recipe("fp16", "fp16"),
        _recipe("bf16", "bf16", reference=True),
        _recipe("bf16-compile", "bf16", compile="max-autotune-no-cudagraphs"),
        _recipe("fp8", "fp8", quantization="fp8-rowwise"),
        _recipe("bf16-tiny-vae", "bf16", vae="tiny"),
    )
}


def catalog_or_fallback() -> tuple[dict[str, GpuFamily], dict[str, ModelSpec], dict[str, Recipe], list[str]]:
    """The shipped catalog where it has an entry, these facts elsewhere; plus a note of each fallback used."""
    notes: list[str] = []
    loaded = False
    families: dict[str, GpuFamily] = {}
    models: dict[str, ModelSpec] = {}
    recipes: dict[str, Recipe] = {}
    try:
        from planner.catalog import loader

        families = dict(loader.gpu_families())
        models = dict(loader.models())
        recipes = dict(loader.recipes())
        loaded = True
    except Exception as exc:  # the catalog data files are not there yet
        notes.append(f"catalog not loadable ({type(exc).__name__}); using {FACTS} figures for everything")
    for table, fallback, kind in (
        (families, FAMILIES, "family"),
        (models, MODELS, "model"),
        (recipes, RECIPES, "recipe"),
    ):
        for key, value in fallback.items():
            if key not in table:
                table[key] = value  # type: ignore[assignment]
                if loaded:
                    notes.append(f"{kind} {key}: not in the catalog, using {FACTS}")
    return families, models, recipes, notes
