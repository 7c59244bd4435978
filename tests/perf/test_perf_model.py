"""The performance model: measured cells, batch interpolation, roofline transfer, FLOPs scaling, quality."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from planner.perf import PerfModel, PerfSettings
from planner.perf.roofline import (
    DEFAULT_BANDWIDTH_EFFICIENCY,
    DEFAULT_GEMM_EFFICIENCY,
    Calibration,
    ceilings_for,
    flops_per_call,
    resolution_factor,
    split_time,
    transfer_uncertainty,
)
from tests.solver.factory import RECIPES, family, model, recipe, row

H100 = family("h100", tbps=3.35, tflops={"bf16": 989, "fp16": 989, "fp8": 1979})
A100 = family("a100", tbps=2.039, tflops={"bf16": 312, "fp16": 312, "int8": 624})
H200 = family("h200", memory_gib=141, tbps=4.8, tflops={"bf16": 989, "fp16": 989, "fp8": 1979})
A10 = family("a10", memory_gib=24, tbps=0.6, tflops={"bf16": 125, "fp16": 125})
T4 = family("t4", memory_gib=16, tbps=0.32, tflops={"fp16": 65, "int8": 130})
FAMILIES = {f.id: f for f in (H100, A100, H200, A10, T4)}
MODEL = model("m", tflops={"denoiser": 10.0, "vae_decoder": 5.0, "text_encoder": 0.1})


def perf(rows: list, **settings: object) -> PerfModel:  # type: ignore[type-arg]
    return PerfModel(
        rows,
        families=FAMILIES,
        models={"m": MODEL},
        recipes=RECIPES,
        settings=PerfSettings(**settings),  # type: ignore[arg-type]
    )


def test_measured_cell_is_returned_as_is() -> None:
    p = perf([row("h100", "m", "denoiser", "bf16", 1, 90.0, latency_p95_ms=95.0, mem=11.0)])
    cell = p.latency("h100", "m", "denoiser", "bf16", 1, 1024, 1024)
    assert cell is not None
    assert (cell.latency_ms, cell.latency_p95_ms, cell.peak_mem_gib) == (90.0, 95.0, 11.0)
    assert cell.source == "measured"
    assert cell.method == "measured"
    assert cell.uncertainty == 0.0


def test_measured_row_beats_estimated_and_newest_measurement_wins() -> None:
    old = datetime(2026, 1, 1, tzinfo=UTC)
    new = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        row("h100", "m", "denoiser", "bf16", 1, 50.0, source="estimated", measured_at=new),
        row("h100", "m", "denoiser", "bf16", 1, 90.0, measured_at=old),
        row("h100", "m", "denoiser", "bf16", 2, 120.0, measured_at=old),
        row("h100", "m", "denoiser", "bf16", 2, 110.0, measured_at=new),
    ]
    p = perf(rows)
    one = p.latency("h100", "m", "denoiser", "bf16", 1, 1024, 1024)
    two = p.latency("h100", "m", "denoiser", "bf16", 2, 1024, 1024)
    assert one is not None
    assert one.latency_ms == 90.0
    assert two is not None
    assert two.latency_ms == 110.0


def test_several_hosts_combine_to_the_median_with_their_spread_as_uncertainty() -> None:
    """Issue 28: not newest-wins across hosts. One host 10x faster than two others moves nothing; a host's own
    newer row replaces its older one before the hosts are combined."""
    new = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        row("h100", "m", "denoiser", "bf16", 1, 90.0, host="a"),
        row("h100", "m", "denoiser", "bf16", 1, 100.0, host="b", measured_at=new),
        row("h100", "m", "denoiser", "bf16", 1, 9.0, host="liar", measured_at=new),
        row("h100", "m", "denoiser", "bf16", 1, 300.0, host="b", measured_at=datetime(2025, 1, 1, tzinfo=UTC)),
    ]
    cell = perf(rows).latency("h100", "m", "denoiser", "bf16", 1, 1024, 1024)
    assert cell is not None
    assert cell.latency_ms == 90.0
    assert cell.uncertainty == pytest.approx((100.0 - 9.0) / (2 * 90.0))
    assert "median of 3 sources" in cell.basis
    two = perf(rows[:2]).latency("h100", "m", "denoiser", "bf16", 1, 1024, 1024)
    assert two is not None
    assert two.latency_ms == 100.0


def test_override_rows_win_their_cells_over_newer_stored_rows() -> None:
    """A scenario's measurements file is what the user asked this run to use (contract 2): its undated row beats
    a dated, measured store row of the same cell, and it leaves the store's other cells alone."""
    stored = [
        row("h100", "m", "denoiser", "bf16", 1, 90.0, measured_at=datetime(2026, 3, 1, tzinfo=UTC)),
        row("h100", "m", "denoiser", "bf16", 2, 120.0, measured_at=datetime(2026, 3, 1, tzinfo=UTC)),
    ]
    override = [row("h100", "m", "denoiser", "bf16", 1, 900.0, source="estimated")]
    p = PerfModel(stored, families=FAMILIES, models={"m": MODEL}, recipes=RECIPES, override_rows=override)
    one = p.latency("h100", "m", "denoiser", "bf16", 1, 1024, 1024)
    two = p.latency("h100", "m", "denoiser", "bf16", 2, 1024, 1024)
    assert one is not None
    assert one.latency_ms == 900.0
    assert one.method == "imported-estimate"
    assert two is not None
    assert two.latency_ms == 120.0


def test_imported_estimate_is_labelled_with_uncertainty() -> None:
    p = perf([row("h100", "m", "denoiser", "bf16", 1, 50.0, source="estimated")])
    cell = p.latency("h100", "m", "denoiser", "bf16", 1, 1024, 1024)
    assert cell is not None
    assert cell.source == "estimated"
    assert cell.method == "imported-estimate"
    assert cell.uncertainty == pytest.approx(0.30)


def test_failed_cells_are_never_used() -> None:
    bad = row("h100", "m", "denoiser", "bf16", 8, 1.0, status="oom", error="CUDA out of memory")
    p = perf([bad, row("h100", "m", "denoiser", "bf16", 1, 90.0)])
    assert p.latency("h100", "m", "denoiser", "bf16", 8, 1024, 1024) is None
    assert p.batches_for("m", "denoiser", "bf16", 1024, 1024) == [1]


def test_interpolates_between_measured_batches_but_never_extrapolates() -> None:
    rows = [
        row("h100", "m", "denoiser", "bf16", 1, 100.0, mem=10.0),
        row("h100", "m", "denoiser", "bf16", 4, 250.0, mem=16.0),
    ]
    p = perf(rows, transfer=False)
    cell = p.latency("h100", "m", "denoiser", "bf16", 2, 1024, 1024)
    assert cell is not None
    assert cell.latency_ms == pytest.approx(150.0)
    assert cell.peak_mem_gib == pytest.approx(12.0)
    assert cell.source == "estimated"
    assert cell.method == "interpolated"
    assert cell.uncertainty == pytest.approx(0.05 * 2)  # two doublings between batch 1 and 4
    assert p.latency("h100", "m", "denoiser", "bf16", 8, 1024, 1024) is None


def _controlled_row(latency_ms: float, compute_ms: float, memory_ms: float, fam: str = "h100") -> object:
    """A cell whose split on H100 is known: F and bytes chosen so compute and memory take the given times."""
    peak = 989 * DEFAULT_GEMM_EFFICIENCY
    bw = 3.35 * DEFAULT_BANDWIDTH_EFFICIENCY
    tflops = compute_ms / 1e3 * peak
    bytes_moved = memory_ms / 1e3 * bw * 1e12
    return row(
        fam,
        "m",
        "denoiser",
        "bf16",
        1,
        latency_ms,
        tflops_per_call=tflops,
        achieved_tbps=bytes_moved / (latency_ms / 1e3) / 1e12,
    )


def test_transfer_scales_compute_by_compute_and_memory_by_bandwidth() -> None:
    p = perf([_controlled_row(120.0, compute_ms=100.0, memory_ms=20.0)])  # type: ignore[list-item]
    cell = p.latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024)
    assert cell is not None
    assert cell.latency_ms == pytest.approx(100.0 * 989 / 312 + 20.0 * 3.35 / 2.039, rel=1e-6)
    assert cell.source == "estimated"
    assert cell.method == "transferred"
    assert "h100" in cell.basis


def test_overhead_part_is_not_scaled_by_default_and_is_with_bandwidth_scaling() -> None:
    rows = [_controlled_row(200.0, compute_ms=100.0, memory_ms=20.0)]
    base = 100.0 * 989 / 312 + 20.0 * 3.35 / 2.039
    fixed = perf(rows).latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024)  # type: ignore[arg-type]
    scaled = perf(rows, overhead_scaling="bandwidth").latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024)  # type: ignore[arg-type]
    assert fixed is not None
    assert scaled is not None
    assert fixed.latency_ms == pytest.approx(base + 80.0, rel=1e-6)
    assert scaled.latency_ms == pytest.approx(base + 80.0 * 3.35 / 2.039, rel=1e-6)


def test_split_scales_both_parts_down_when_kernels_overlap() -> None:
    ceil = ceilings_for(H100)
    split = split_time(50.0, tflops=79.12, bytes_moved=0.2e12, ceilings=ceil, precision="bf16")
    assert split is not None
    assert split.overhead_ms == 0.0
    assert split.total_ms == pytest.approx(50.0)
    assert split.compute_ms / split.memory_ms == pytest.approx((79.12 / 791.2) / (0.2 / (3.35 * 0.88)))


def test_no_estimate_for_a_precision_the_family_lacks() -> None:
    rows = [
        row("h100", "m", "denoiser", "fp8", 1, 60.0, tflops_per_call=20.0),
        row("h100", "m", "denoiser", "bf16", 1, 90.0, tflops_per_call=20.0),
    ]
    p = perf(rows)
    assert p.latency("a100", "m", "denoiser", "fp8", 1, 1024, 1024) is None  # A100: no fp8
    assert p.latency("t4", "m", "denoiser", "bf16", 1, 1024, 1024) is None  # T4: no bf16
    assert p.latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024) is not None
    assert not p.supports("t4", "bf16")


def test_family_outside_the_catalog_uses_only_its_measured_cells() -> None:
    rows = [
        row("lab-gpu", "m", "denoiser", "bf16", 1, 70.0, tflops_per_call=20.0),
        row("h100", "m", "vae_decoder", "bf16", 1, 30.0, tflops_per_call=5.0),
    ]
    p = perf(rows)
    assert p.latency("lab-gpu", "m", "denoiser", "bf16", 1, 1024, 1024) is not None
    assert p.latency("lab-gpu", "m", "vae_decoder", "bf16", 1, 1024, 1024) is None  # no transfer to it
    assert p.latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024) is None  # nor from it


def test_transfer_comes_from_the_nearest_measured_family_and_uncertainty_grows_with_distance() -> None:
    rows = [
        row("h100", "m", "denoiser", "bf16", 1, 90.0, tflops_per_call=20.0),
        row("a100", "m", "denoiser", "bf16", 1, 200.0, tflops_per_call=20.0),
    ]
    p = perf(rows)
    h200 = p.latency("h200", "m", "denoiser", "bf16", 1, 1024, 1024)
    a10 = p.latency("a10", "m", "denoiser", "bf16", 1, 1024, 1024)
    assert h200 is not None
    assert a10 is not None
    assert "h100" in h200.basis  # H200 differs from H100 in bandwidth only
    assert "a100" in a10.basis  # A10 is nearer the A100
    assert h200.uncertainty < a10.uncertainty
    only_h100 = perf(rows[:1])
    far = only_h100.latency("a10", "m", "denoiser", "bf16", 1, 1024, 1024)
    near = only_h100.latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024)
    assert far is not None
    assert near is not None
    assert near.uncertainty == pytest.approx(transfer_uncertainty(math.log(989 / 312)))
    assert far.uncertainty > near.uncertainty


@pytest.mark.parametrize("h200_fp16", [988.5, 989.0, 989.5])
def test_the_transfer_source_does_not_flip_on_a_rounding_of_a_catalog_peak(h200_fp16: float) -> None:
    """Seen from an A100, the H100 and the H200 have the same compute; a 0.05% difference of the H200's peak
    used to pick the source. Within the tie band the family nearer in the other roofline (bandwidth) wins."""
    h200 = family("h200", memory_gib=141, tbps=4.8, tflops={"bf16": 989, "fp16": h200_fp16, "fp8": 1979})
    rows = [
        row("h100", "m", "denoiser", "fp16", 1, 90.0, tflops_per_call=20.0),
        row("h200", "m", "denoiser", "fp16", 1, 80.0, tflops_per_call=20.0),
    ]
    p = PerfModel(rows, families={**FAMILIES, "h200": h200}, models={"m": MODEL}, recipes=RECIPES)
    a100 = p.latency("a100", "m", "denoiser", "fp16", 1, 1024, 1024)
    assert a100 is not None
    assert "h100" in a100.basis


def test_vendor_specific_kernels_are_not_transferred_across_vendors() -> None:
    """cuDNN attention and quantized kernels exist on NVIDIA's stack only: an H100 cell of such a recipe says
    nothing about an AMD card, while SDPA's flash backend (on ROCm too) transfers with the cross-vendor margin."""
    mi300x = family("mi300x", memory_gib=192, tbps=5.3, tflops={"bf16": 1307, "fp16": 1307, "fp8": 2615})
    mi300x = mi300x.model_copy(update={"vendor": "amd"})
    recipes = {
        **RECIPES,
        "bf16-sdpa-cudnn": recipe("bf16-sdpa-cudnn", attention="cudnn"),
        "bf16-sdpa-flash": recipe("bf16-sdpa-flash", attention="flash"),
    }
    rows = [
        row("h100", "m", "text_encoder", r, 1, 12.0, tflops_per_call=0.1)
        for r in ("bf16-sdpa-cudnn", "bf16-sdpa-flash", "fp8")
    ]
    p = PerfModel(rows, families={"h100": H100, "h200": H200, "mi300x": mi300x}, models={"m": MODEL}, recipes=recipes)
    assert p.latency("mi300x", "m", "text_encoder", "bf16-sdpa-cudnn", 1, 1024, 1024) is None
    assert p.latency("mi300x", "m", "text_encoder", "fp8", 1, 1024, 1024) is None
    flash = p.latency("mi300x", "m", "text_encoder", "bf16-sdpa-flash", 1, 1024, 1024)
    assert flash is not None
    assert flash.uncertainty >= 0.5
    assert p.latency("h200", "m", "text_encoder", "bf16-sdpa-cudnn", 1, 1024, 1024) is not None  # same vendor


def test_text_encoder_cells_serve_any_image_size_and_other_stages_are_scaled() -> None:
    """A text encoder reads the prompt, not the image: its cells at the model's size serve 1000x1000 as they are; a
    denoiser's cells at another size are never used as they are but scaled by FLOPs, labelled, with uncertainty
    (and not at all with `scale_resolution` off)."""
    rows = [
        row("h100", "m", "text_encoder", "bf16", 1, 12.0, latency_p95_ms=14.0),
        row("h100", "m", "denoiser", "bf16", 1, 90.0),
    ]
    p = perf(rows)
    cell = p.latency("h100", "m", "text_encoder", "bf16", 1, 1000, 1000)
    assert cell is not None
    assert (cell.latency_ms, cell.latency_p95_ms, cell.height, cell.width) == (12.0, 14.0, 1000, 1000)
    assert "at 1024x1024" in cell.basis
    assert p.recipes_for("m", "text_encoder", 1000, 1000) == {"bf16"}
    assert p.batches_for("m", "text_encoder", "bf16", 1000, 1000) == [1]
    scaled = p.latency("h100", "m", "denoiser", "bf16", 1, 1000, 1000)
    assert scaled is not None
    assert scaled.method == "scaled"
    assert scaled.evidence == "scaled from 1024x1024"
    assert scaled.latency_ms < 90.0
    assert scaled.uncertainty > 0
    assert p.recipes_for("m", "denoiser", 1000, 1000) == {"bf16"}
    assert p.sizes_for("m", "denoiser") == [(1024, 1024)]
    off = perf(rows, scale_resolution=False)
    assert off.latency("h100", "m", "denoiser", "bf16", 1, 1000, 1000) is None
    assert off.recipes_for("m", "denoiser", 1000, 1000) == set()


def test_scaling_follows_flops_keeps_overhead_and_grows_uncertainty_with_distance() -> None:
    """Scaled from 1024^2: compute scales with FLOPs (pixels for a U-Net), overhead does not, so a quarter of the
    pixels costs more than a quarter of the time; activations (peak - weights) scale with pixels; a size further
    away is less sure; a DiT's attention share makes 2x the tokens cost more than 2x the FLOPs."""
    p = perf([row("h100", "m", "denoiser", "bf16", 4, 400.0, mem=20.0)])
    quarter = p.latency("h100", "m", "denoiser", "bf16", 4, 512, 512)
    near = p.latency("h100", "m", "denoiser", "bf16", 4, 1024, 768)
    double = p.latency("h100", "m", "denoiser", "bf16", 4, 1024, 2048)
    assert quarter is not None
    assert near is not None
    assert double is not None
    assert 100.0 < quarter.latency_ms < 400.0
    assert 400.0 < double.latency_ms <= 800.0
    assert near.uncertainty < quarter.uncertainty
    weights = p.weight_gib("m", "denoiser", "bf16") or 0.0
    assert quarter.peak_mem_gib == pytest.approx(weights + (20.0 - weights) / 4)
    assert resolution_factor(model("d", tflops={"denoiser": 1.0}, architecture="flux"), "denoiser", 1024, 2048) > 2


def test_estimates_off_drops_transfers_and_imported_estimates() -> None:
    """Evidence first: with `estimates` off a family reached only by transfer gets nothing, and an imported
    `estimated` row is not used; measured and interpolated cells still are."""
    rows = [
        row("h100", "m", "denoiser", "bf16", 1, 90.0, tflops_per_call=20.0),
        row("h100", "m", "denoiser", "bf16", 4, 300.0, tflops_per_call=80.0),
        row("a100", "m", "vae_decoder", "bf16", 1, 50.0, source="estimated"),
    ]
    on, off = perf(rows), perf(rows, estimates=False)
    assert on.latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024) is not None
    assert off.latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024) is None
    assert on.latency("a100", "m", "vae_decoder", "bf16", 1, 1024, 1024) is not None
    assert off.latency("a100", "m", "vae_decoder", "bf16", 1, 1024, 1024) is None
    mid = off.latency("h100", "m", "denoiser", "bf16", 2, 1024, 1024)
    assert mid is not None
    assert mid.evidence == "interpolated"
    assert on.with_settings(estimates=False).latency("a100", "m", "denoiser", "bf16", 1, 1024, 1024) is None


def test_memory_is_transferred_as_is() -> None:
    p = perf([row("h100", "m", "denoiser", "bf16", 1, 90.0, mem=33.0, tflops_per_call=20.0)])
    assert p.memory_gib("a100", "m", "denoiser", "bf16", 1, 1024, 1024) == 33.0


def test_flops_scale_with_batch_cfg_and_resolution() -> None:
    unet = model("u", cfg=True, tflops={"denoiser": 6.761, "vae_decoder": 10.47, "text_encoder": 0.111})
    dit = model("d", architecture="flux", tflops={"denoiser": 74.38})
    assert flops_per_call(unet, "denoiser", 2, 1024, 1024) == pytest.approx(6.761 * 2 * 2)
    assert flops_per_call(unet, "denoiser", 1, 512, 512) == pytest.approx(6.761 * 2 / 4)
    assert flops_per_call(unet, "vae_decoder", 1, 512, 512) == pytest.approx(10.47 / 4)
    assert flops_per_call(unet, "text_encoder", 4, 512, 512) == pytest.approx(0.111 * 4)
    tokens0 = 1024 * 1024 / 256 + 77
    ratio = (512 * 512 / 256 + 77) / tokens0
    assert resolution_factor(dit, "denoiser", 512, 512) == pytest.approx(0.8 * ratio + 0.2 * ratio**2)
    assert flops_per_call(dit, "denoiser", 1, 1024, 1024) == pytest.approx(74.38)


def test_calibration_sets_the_efficiency_of_other_precisions() -> None:
    ceil = ceilings_for(H100, Calibration(tflops={"bf16": 700.0}, tbps=2.9))
    assert ceil.calibrated
    assert ceil.compute("bf16") == pytest.approx(700.0)
    assert ceil.compute("fp8") == pytest.approx(1979 * 700 / 989)
    assert ceil.tbps == 2.9


def test_data_dependent_recipe_on_synthetic_weights_is_not_used() -> None:
    rows = [row("h100", "m", "denoiser", "bf16-fbcache", 1, 40.0, weights="synthetic")]
    assert perf(rows).latency("h100", "m", "denoiser", "bf16-fbcache", 1, 1024, 1024) is None
    allowed = perf(rows, allow_synthetic_data_dependent=True)
    assert allowed.latency("h100", "m", "denoiser", "bf16-fbcache", 1, 1024, 1024) is not None
    real = [row("h100", "m", "denoiser", "bf16-fbcache", 1, 40.0, weights="real")]
    assert perf(real).latency("h100", "m", "denoiser", "bf16-fbcache", 1, 1024, 1024) is not None


def test_quality_comes_from_real_weights_first_and_synthetic_drift_only_when_asked() -> None:
    rows = [
        row("h100", "m", "denoiser", "fp8", 1, 60.0, ssim_image=0.97, quality_weights="real"),
        row("h100", "m", "denoiser", "fp8", 2, 60.0, ssim_image=0.99, quality_weights="real"),
        row("a100", "m", "denoiser", "fp8", 1, 90.0, ssim_image=0.90, quality_weights="synthetic"),
        row("a100", "m", "denoiser", "int8", 1, 90.0, ssim_image=0.80, quality_weights="synthetic"),
    ]
    p = perf(rows)
    q = p.quality_evidence("m", "denoiser", "fp8", "ssim_image", height=1024, width=1024)
    assert (q.value, q.source) == (0.97, "measured")  # the worst real-weight value
    # Real weights win over synthetic drift even when drift is asked for: it only fills what nothing real does.
    assert p.quality("m", "denoiser", "fp8", "ssim_image", height=1024, width=1024, real_weights_only=False) == 0.97
    int8 = p.quality_evidence("m", "denoiser", "int8", "ssim_image", height=1024, width=1024)
    assert (int8.value, int8.source) == (None, "unknown")
    assert "synthetic" in int8.detail
    asked = p.quality_evidence("m", "denoiser", "int8", "ssim_image", height=1024, width=1024, real_weights_only=False)
    assert (asked.value, asked.source) == (0.80, "synthetic")
    ref = p.quality_evidence("m", "denoiser", "bf16", "ssim_image", height=1024, width=1024)
    assert (ref.value, ref.source) == (1.0, "reference")  # the factory's highest-precision plain recipe
    assert p.quality("m", "denoiser", "fp16", "ssim_image", height=1024, width=1024) is None
