"""Published quality figures (issue 26): every shipped figure is cited and names catalog entries; the planner
uses one only where nothing measured on real weights exists, and labels it `published`."""

from __future__ import annotations

import math

from planner.catalog import gpu_families, models, recipes
from planner.catalog.quality import PublishedQuality, published_quality, quality_reference
from planner.measurements.contract import MeasurementRow
from planner.perf.model import PerfModel


def test_every_shipped_figure_is_cited_and_names_the_catalog() -> None:
    figures = published_quality()
    assert figures
    for f in figures:
        assert f.source.startswith("https://"), f
        assert f.status in ("read", "secondary"), f
        assert f.model in models()
        assert f.stage in recipes()[f.recipe].stages
        assert math.isfinite(f.value)


def test_the_quality_reference_is_the_highest_precision_plain_recipe() -> None:
    for stage in ("text_encoder", "denoiser", "vae_decoder"):
        ref = quality_reference(stage, recipes())
        assert ref is not None
        assert ref.id == "fp32"
    # Without an fp32 recipe, the best of what there is (ties: the catalog's `reference` one).
    rest = {k: v for k, v in recipes().items() if v.precision != "fp32"}
    ref = quality_reference("denoiser", rest)
    assert ref is not None
    assert ref.id == "bf16"


def _row(recipe: str, psnr: float | None, weights: str) -> MeasurementRow:
    return MeasurementRow(
        gpu_family="h100-sxm-80gb", model="qwen-image-lightning", stage="denoiser", recipe=recipe, batch=1,
        height=1328, width=1328, latency_ms=100.0, weights="real", source="measured", psnr_image=psnr,
        quality_weights=weights,
    )  # fmt: skip


def _perf(rows: list[MeasurementRow], published: tuple[PublishedQuality, ...] | None = None) -> PerfModel:
    return PerfModel(rows, families=gpu_families(), models=models(), recipes=recipes(), published=published)


def test_published_fills_what_real_weights_did_not_measure_and_says_so() -> None:
    p = _perf([_row("bf16-fbcache", None, "real")])
    ev = p.quality_evidence("qwen-image-lightning", "denoiser", "bf16-fbcache", "psnr_image", height=1328, width=1328)
    assert ev.source == "published"
    assert ev.value == 31.8317  # the cache-dit table's figure, as published
    assert "cache-dit" in ev.detail
    # A real-weight measurement wins over the published figure.
    p = _perf([_row("bf16-fbcache", 27.5, "real")])
    ev = p.quality_evidence("qwen-image-lightning", "denoiser", "bf16-fbcache", "psnr_image", height=1328, width=1328)
    assert (ev.value, ev.source) == (27.5, "measured")
    # Synthetic drift is never used when nothing asks for it, not even over "unknown".
    p = _perf([_row("bf16-fbcache", 45.0, "synthetic")], published=())
    ev = p.quality_evidence("qwen-image-lightning", "denoiser", "bf16-fbcache", "psnr_image", height=1328, width=1328)
    assert (ev.value, ev.source) == (None, "unknown")
    # A published figure on another metric is context, not a number the floor compares.
    p = _perf([_row("bf16-fbcache", None, "real")])
    ev = p.quality_evidence("qwen-image-lightning", "denoiser", "bf16-fbcache", "ssim_image", height=1328, width=1328)
    assert ev.value is None
    assert "image_reward" in ev.detail
