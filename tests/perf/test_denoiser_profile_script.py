"""benchmarks/denoiser_profile.py: kernel kinds by name, the per-kind arithmetic, and a real tiny run on the CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_benchmark, run_benchmark


@pytest.mark.parametrize(
    ("kernel", "kind"),
    [
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "convolution"),
        ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true>", "conv layout"),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_coopB_NNT", "gemm"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "gemm"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
        ("triton_red_fused_native_group_norm_silu_3", "norm"),
        ("triton_poi_fused_add_mul_7", "fused (triton)"),
        ("triton_poi_fused__to_copy_add_convolution_3", "fused (triton)"),  # a conv's bias add, not the conv
        ("triton_per_fused_convolution_native_group_norm_2", "norm"),
        ("triton_red_fused__fused_rms_norm__scaled_dot_product_cudnn_attention__to_copy_add_mul_neg", "norm"),
        ("triton_poi_fused__scaled_dot_product_cudnn_attention__to_copy_add_cat_mul_neg_permute", "fused (triton)"),
        (
            "triton_red_fused__scaled_mm__to_copy_abs_add_amax_clamp_div_mul_native_layer_norm_split",
            "quantize (triton)",
        ),
        ("nvjet_sm90_qqtst_128x128_128x6_1x1_h_bz_coopA_algo2_ovscale_TNT", "gemm"),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
            "elementwise/reduce",
        ),
        ("Memcpy DtoD (Device -> Device)", "memcpy/memset"),
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::addmm", "gemm"),
        ("some_unknown_kernel", "other"),
    ],
)
def test_kernels_are_sorted_into_kinds_by_name(kernel: str, kind: str) -> None:
    assert load_benchmark("denoiser_profile").kind_of(kernel) == kind


def test_flops_count_towards_the_kind_of_their_operator() -> None:
    dp = load_benchmark("denoiser_profile")
    assert dp.flop_kind("aten.convolution") == "convolution"
    assert dp.flop_kind("aten.addmm") == "gemm"
    assert dp.flop_kind("aten._scaled_dot_product_flash_attention") == "attention"
    assert dp.flop_kind("aten.native_group_norm") == "other"


def test_each_kind_gets_its_time_per_call_share_and_rate_and_the_rest_is_idle() -> None:
    dp = load_benchmark("denoiser_profile")
    kernel_us = {
        "nvjet_a": 60_000.0,
        "nvjet_b": 20_000.0,
        "sm90_xmma_fprop_x": 100_000.0,
        "triton_poi_fused_0": 20_000.0,
    }
    rows = dp.summarize(kernel_us, 2, 200.0, {"gemm": 4e12, "convolution": 5e12})
    assert rows["gemm"]["ms"] == pytest.approx(40.0)
    assert rows["gemm"]["tflops"] == pytest.approx(100.0)  # 4 TFLOP in 40 ms
    assert rows["convolution"]["ms"] == pytest.approx(50.0)
    assert rows["convolution"]["share_of_wall"] == pytest.approx(0.25)
    assert rows["fused (triton)"]["tflops"] is None
    assert rows["(gpu idle)"]["ms"] == pytest.approx(100.0)
    assert next(iter(rows)) == "convolution"  # largest first


def tiny_run(out: Path, model: str, variants: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """The script on the model's tiny config on the CPU at batch 1; what it printed and what it saved."""
    done = run_benchmark(
        "denoiser_profile",
        "--tiny",
        "--model",
        model,
        "--batches",
        "1",
        "--variants",
        variants,
        "--out",
        str(out),
        timeout=300,
    )
    saved_file = out / "denoiser-profile.json"
    return done, json.loads(saved_file.read_text()) if saved_file.exists() else {}


def test_a_tiny_cpu_run_profiles_the_regional_and_the_whole_compile_it_says_it_did(tmp_path: Path) -> None:
    dp = load_benchmark("denoiser_profile")
    done, saved = tiny_run(tmp_path, "sdxl", "bf16-compile,bf16-compile-whole")
    assert done.returncode == 0, done.stderr[-2000:]
    results = saved["results"]
    by = {r["variant"]: r for r in results}
    assert "regional compile of ['BasicTransformerBlock']" in " ".join(by["bf16-compile"]["notes"])
    assert "whole-module compile of UNet2DConditionModel" in " ".join(by["bf16-compile-whole"]["notes"])
    for r in results:
        assert r["ms"] > 0
        assert r["tflop"] > 0
        assert "convolution" in r["kinds"]
        assert "gemm" in r["kinds"]
        assert r["kinds"]["convolution"]["tflop"] > 0  # FlopCounterMode's conv FLOPs reached their kind
        conv_ms = sum(ms for name, ms in r["kernels_ms"].items() if dp.kind_of(name) == "convolution")
        assert conv_ms == pytest.approx(r["kinds"]["convolution"]["ms"])  # the raw kernels add up to the kinds
        assert r["kinds"]["gemm"]["tflop"] > 0


def test_without_a_gpu_it_says_where_to_run_it() -> None:
    done = run_benchmark("denoiser_profile")
    assert done.returncode == 2
    assert "needs a CUDA GPU; run it on the device" in done.stderr


def test_a_saved_run_is_reported_with_its_kinds_re_derived_from_the_kernels(tmp_path: Path) -> None:
    dp = load_benchmark("denoiser_profile")
    saved = {
        "results": [
            {
                "model": "sdxl",
                "variant": "bf16",
                "batch": 4,
                "ms": 10.0,
                "tflops": 100.0,
                "flops_by_kind": {"gemm": 0.5e12},
                # saved before "moments" counted as a norm: the report must re-derive, not reuse "kinds"
                "kinds": {"other": {"ms": 2.0}},
                "kernels_ms": {"nvjet_x": 5.0, "RowwiseMomentsCUDAKernel<bf16>": 2.0},
            }
        ]
    }
    path = tmp_path / "denoiser-profile.json"
    path.write_text(json.dumps(saved))
    png = tmp_path / "profile.png"
    assert dp.main(["--report", str(path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = dp.table(saved["results"])
    assert "| gemm (0.5 TFLOP) | 5.00 | 50.0% | 100 |" in text
    assert "| norm | 2.00 | 20.0% |  |" in text
    assert "| (gpu idle) | 3.00 | 30.0% |  |" in text
    assert "other" not in text
    assert text.count("| norm |") == 1


def test_a_variant_is_a_catalog_recipe_or_one_compiled_whole() -> None:
    dp = load_benchmark("denoiser_profile")
    assert dp.recipe_for("fp8-compile").compile_scope == "regional"
    whole = dp.recipe_for("fp8-compile-whole")
    assert (whole.quantization, whole.compile, whole.compile_scope) == ("fp8-rowwise", "default", "whole")
    eager_whole = dp.recipe_for("bf16-compile-whole")
    assert (eager_whole.precision, eager_whole.compile, eager_whole.compile_scope) == ("bf16", "default", "whole")
    with pytest.raises(KeyError):
        dp.recipe_for("bf17-compile-whole")
    graphs = dp.recipe_for("fp8-compile-whole+fast-gemm+cudagraphs")
    assert (graphs.quantization, graphs.compile, graphs.compile_scope) == ("fp8-rowwise", "reduce-overhead", "whole")
    assert graphs.fast_gemm
    assert not dp.recipe_for("fp8-compile").fast_gemm
    # A catalog id ending in -compile-whole is that recipe, not a derived one (there is no "fp8-fast" recipe).
    catalog_whole = dp.recipe_for("fp8-fast-compile-whole")
    assert (catalog_whole.fast_gemm, catalog_whole.compile_scope) == (True, "whole")
    assert dp.recipe_for("bf16-compile+cudagraphs").compile_scope == "regional"
    with pytest.raises(ValueError, match="needs an fp8 recipe"):
        dp.recipe_for("bf16-compile+fast-gemm")
    with pytest.raises(ValueError, match=r"\+static-scales needs an fp8 recipe"):
        dp.recipe_for("bf16-compile-whole+static-scales")
    assert dp.recipe_for("fp8-fast-compile-whole+static-scales").compile_scope == "whole"
    with pytest.raises(ValueError, match="needs a compiled recipe"):
        dp.recipe_for("fp8+cudagraphs")
    with pytest.raises(ValueError, match="unknown modifier"):
        dp.recipe_for("fp8-compile+turbo")


def test_an_unknown_variant_is_refused_with_the_recipes_it_could_be() -> None:
    done = run_benchmark("denoiser_profile", "--variants", "bf16,fp9-compile")
    assert done.returncode == 2
    assert "unknown variant(s) ['fp9-compile']" in done.stderr
    assert "fp8-compile" in done.stderr
    assert "-compile-whole" in done.stderr


def test_a_recipe_this_machine_cannot_run_is_reported_and_the_others_still_profiled(tmp_path: Path) -> None:
    done, saved = tiny_run(tmp_path, "flux-dev", "fp8-compile,bf16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "flux-dev fp8-compile: unsupported here:" in done.stdout
    assert [r["variant"] for r in saved["results"]] == ["bf16"]
    assert saved["results"][0]["kinds"]["attention"]["ms"] > 0
    assert saved["not_run"][0]["variant"] == "fp8-compile"
    assert saved["not_run"][0]["status"] == "unsupported"


def test_a_variant_that_fails_is_recorded_and_what_ran_before_and_after_it_is_saved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dp = load_benchmark("denoiser_profile")

    def fake_profile(model: str, variant: str, batches: list[int], flops_at: dict, *, tiny: bool) -> list[dict]:
        if variant == "b":
            raise RuntimeError("CUDA graphs: captured a CPU tensor\nmore detail")
        return [{"variant": variant, "batch": 1, "ms": 1.0}]

    monkeypatch.setattr(dp, "profile_variant", fake_profile)
    snapshots: list[list[str]] = []
    done = dp.run(
        "sdxl", [1], ["a", "b", "c"], tiny=True, save=lambda d: snapshots.append([r["variant"] for r in d["results"]])
    )
    assert [r["variant"] for r in done["results"]] == ["a", "c"]
    assert done["not_run"] == [
        {"variant": "b", "status": "failed", "why": "RuntimeError: CUDA graphs: captured a CPU tensor"}
    ]
    assert snapshots == [["a"], ["a"], ["a", "c"]]  # saved after every variant, the failed one included
