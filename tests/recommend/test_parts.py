"""The parts of `planner recommend` that are plain functions: flag parsing, the front, comparisons."""

from __future__ import annotations

import pytest

from planner.core.errors import InputError
from planner.recommend.compare import compare, workload_gpus
from planner.recommend.quick import WhatIfPoint, parse_quality, parse_recipes, parse_what_if
from planner.recommend.sweep import QualityPoint, pareto


def test_what_if_points_absolute_or_multiplied() -> None:
    points = parse_what_if("rate=1, 10,x0.5,2x")
    assert [p.label for p in points] == ["1 images/s", "10 images/s", "x0.5", "x2"]
    assert points[0].factor_for(current_total=5.0) == pytest.approx(0.2)  # an absolute total over the workloads
    assert points[2].factor_for(current_total=5.0) == 0.5
    assert WhatIfPoint("x3", factor=3).factor_for(100.0) == 3
    for bad in ("rate=", "rate=-1", "rate=abc", "steps=4", "1,2"):
        with pytest.raises(InputError, match="--what-if"):
            parse_what_if(bad)


def test_quality_floor_counts_real_weights_by_default() -> None:
    assert parse_quality("ssim_image>=0.95") == {
        "metric": "ssim_image",
        "min": 0.95,
        "weights": "real",
        "missing": "exclude",
    }
    assert parse_quality("psnr_image >= 30", synthetic=True)["weights"] == "any"
    for bad in ("ssim_image>0.9", "lpips>=0.1", "ssim_image>=x", "ssim_image>=nan"):
        with pytest.raises(InputError, match="--quality"):
            parse_quality(bad)


def test_recipe_allow_lists_take_stage_aliases() -> None:
    assert parse_recipes(["dn=bf16,fp8-compile", "vae=bf16", "denoiser=fp8"]) == {
        "denoiser": ["bf16", "fp8-compile", "fp8"],
        "vae_decoder": ["bf16"],
    }
    with pytest.raises(InputError, match="--recipe"):
        parse_recipes(["unet=bf16"])


def point(cost: float, quality: float | None) -> QualityPoint:
    return QualityPoint(None, cost, quality, True, "m", "")


def test_pareto_keeps_what_nothing_beats() -> None:
    pts = [point(1.0, 0.90), point(1.0, 0.95), point(2.0, 0.94), point(3.0, 0.99), point(0.5, None)]
    assert [(p.cost_per_image, p.quality) for p in pareto(pts)] == [(1.0, 0.95), (3.0, 0.99)]


def group(
    family: str, replicas: int, recipe: str, shared: str | None = None, fraction: float | None = None
) -> dict[str, object]:
    return {
        "stages": ["text_encoder", "denoiser", "vae_decoder"],
        "family": family,
        "recipes": {"text_encoder": "bf16", "denoiser": recipe, "vae_decoder": "bf16"},
        "batch": 4,
        "replicas": replicas,
        "throughput": 1.0,
        "shared_gpu": shared,
        "gpu_fraction": fraction,
    }


def test_compare_pairs_workloads_and_says_what_changed() -> None:
    before = {
        "total_cost_per_hour": 10.0,
        "gpus": {"h100-sxm-80gb": 2},
        "workloads": [
            {"name": "a", "model": "sdxl", "topology": "[te+dn+vae]", "cost_per_hour": 8.0, "cost_per_image": 1e-3,
             "groups": [group("h100-sxm-80gb", 2, "bf16")]},
            {"name": "gone", "topology": "[te+dn+vae]", "cost_per_hour": 2.0, "cost_per_image": 1e-3,
             "groups": [group("h100-sxm-80gb", 1, "bf16", shared="h100-sxm-80gb#1", fraction=0.25)]},
        ],
    }  # fmt: skip
    after = {
        "total_cost_per_hour": 6.0,
        "gpus": {"l40s-48gb": 3},
        "workloads": [
            {"name": "a", "model": "sdxl", "topology": "[te+dn+vae]", "cost_per_hour": 6.0, "cost_per_image": 7e-4,
             "groups": [group("l40s-48gb", 3, "fp8-compile")]},
        ],
    }  # fmt: skip
    cmp = compare(before, after, before_name="q3.json")
    assert [w.name for w in cmp.workloads] == ["a", "gone"]
    a, gone = cmp.workloads
    assert a.changes == [
        "te: h100-sxm-80gb bf16 b4 -> l40s-48gb bf16 b4",
        "dn: h100-sxm-80gb bf16 b4 -> l40s-48gb fp8-compile b4",
        "vae: h100-sxm-80gb bf16 b4 -> l40s-48gb bf16 b4",
    ]
    assert (a.before_gpus, a.after_gpus) == ({"h100-sxm-80gb": 2.0}, {"l40s-48gb": 3.0})
    assert gone.changes == ["only in the saved plan"]
    assert workload_gpus(before["workloads"][1]) == {"h100-sxm-80gb": 0.25}
    renamed = compare(
        {**before, "workloads": before["workloads"][:1]},
        {**after, "workloads": [{**after["workloads"][0], "name": "b"}]},
        before_name="x",
    )
    assert [w.name for w in renamed.workloads] == ["b"]  # one workload each: compared as the same demand
