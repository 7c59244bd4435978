"""Options: topologies, service time, memory fit, pruning, quality floors, allow-lists, latency budgets."""

from __future__ import annotations

import pytest

from planner.scenario import QualityFloor, QualityScores
from planner.solver.options import OptionBuilder, OptionFilter, topologies, topology_name
from tests.solver.factory import fleet, model, pipeline_rows, problem, row, workload


def build(p):  # type: ignore[no-untyped-def]
    return OptionBuilder(p.perf, p.models, p.recipes).build(p)


def test_topologies_are_the_splits_of_the_ordered_stages() -> None:
    names = {topology_name(t) for t in topologies(["text_encoder", "denoiser", "vae_decoder"])}
    assert names == {"[te+dn+vae]", "[te][dn+vae]", "[te+dn][vae]", "[te][dn][vae]"}
    assert {topology_name(t) for t in topologies(["denoiser", "vae_decoder"])} == {"[dn+vae]", "[dn][vae]"}


def test_service_time_throughput_and_memory_of_a_group() -> None:
    m = model(params={"text_encoder": 2**30 // 2, "denoiser": 5 * 2**30 // 2, "vae_decoder": 2**30 // 2})
    rows = [
        row("g", "m", "text_encoder", "bf16", 1, 10.0, mem=1.5),
        row("g", "m", "denoiser", "bf16", 1, 100.0, mem=8.0),
        row("g", "m", "vae_decoder", "bf16", 1, 50.0, mem=4.0),
    ]
    p = problem(rows, [fleet("g", 1.0)], [workload("w", steps=20, rate=1.0)], models=[m], share_gpus=False)
    opts = build(p)
    together = next(o for o in opts.options if len(o.group) == 3)
    assert together.service_s == pytest.approx((10 + 20 * 100 + 50) / 1000)
    assert together.throughput == pytest.approx(1 / together.service_s)
    # weights 1 + 5 + 1 GiB resident, plus the largest activation peak (8 - 5 = 3 GiB).
    assert together.memory_gib == pytest.approx(7.0 + 3.0)
    assert together.calls == (1, 20, 1)


def test_headroom_and_estimate_uncertainty_reduce_the_credit() -> None:
    rows = pipeline_rows("g", dn={1: 100.0})
    p = problem(rows, [fleet("g", 1.0)], [workload("w", rate=1.0, headroom=0.25)], share_gpus=False)
    o = next(o for o in build(p).options if len(o.group) == 3)
    assert o.credit == pytest.approx(o.throughput / 1.25)


def test_a_group_that_does_not_fit_is_dropped_and_diagnosed() -> None:
    rows = pipeline_rows("small", mem=30.0)
    p = problem(rows, [fleet("small", 1.0, memory_gib=24.0)], [workload("w")], share_gpus=False)
    opts = build(p)
    assert not any("denoiser" in o.group for o in opts.options)
    assert opts.choices[0] == []
    assert "GiB" in opts.diagnostics[0].reasons[0]


def test_a_recipe_no_better_in_any_way_is_pruned() -> None:
    rows = pipeline_rows("g") + [row("g", "m", "denoiser", "fp16", b, 300.0 * b, mem=12.0) for b in (1, 2, 4)]
    p = problem(rows, [fleet("g", 1.0)], [workload("w")], share_gpus=False)
    assert all(o.recipes[o.group.index("denoiser")] == "bf16" for o in build(p).options if "denoiser" in o.group)


def _fp8_rows() -> list:  # type: ignore[type-arg]
    rows = pipeline_rows("g")
    rows += [
        row("g", "m", "denoiser", "fp8", b, 60.0 * b, mem=6.0, ssim_image=0.90, quality_weights="real")
        for b in (1, 2, 4)
    ]
    return rows


def test_quality_floor_excludes_a_recipe() -> None:
    floor = QualityFloor(metric="ssim_image", min=0.95)
    strict = problem(_fp8_rows(), [fleet("g", 1.0)], [workload("w", quality=floor)], share_gpus=False)
    loose = problem(_fp8_rows(), [fleet("g", 1.0)], [workload("w")], share_gpus=False)
    assert not any("fp8" in o.recipes for o in build(strict).options)
    assert any("fp8" in o.recipes for o in build(loose).options)
    low = QualityFloor(metric="ssim_image", min=0.85)
    assert any(
        "fp8" in o.recipes for o in build(problem(_fp8_rows(), [fleet("g", 1.0)], [workload("w", quality=low)])).options
    )


def test_quality_without_data_follows_the_missing_policy() -> None:
    rows = pipeline_rows("g") + [row("g", "m", "denoiser", "fp16", b, 50.0 * b) for b in (1, 2, 4)]
    excl = problem(rows, [fleet("g", 1.0)], [workload("w", quality=QualityFloor(min=0.9))])
    allow = problem(rows, [fleet("g", 1.0)], [workload("w", quality=QualityFloor(min=0.9, missing="allow"))])
    assert not any("fp16" in o.recipes for o in build(excl).options)
    assert any("fp16" in o.recipes for o in build(allow).options)


def test_quality_scores_gate_recipes_and_models() -> None:
    scores = QualityScores(min_score=0.8, scores={"m": {"*": 1.0, "fp8": 0.7}})
    p = problem(_fp8_rows(), [fleet("g", 1.0)], [workload("w", quality_scores=scores)])
    assert not any("fp8" in o.recipes for o in build(p).options)


def test_allow_lists_of_recipes_batches_and_families() -> None:
    rows = _fp8_rows() + pipeline_rows("h", dn={1: 50.0, 2: 70.0, 4: 110.0})
    w = workload("w", recipes={"denoiser": ("fp8",)}, batches=(2,), families=("g",))
    opts = build(problem(rows, [fleet("g", 1.0), fleet("h", 2.0)], [w]))
    assert opts.options
    assert all(o.batch == 2 and o.family == "g" for o in opts.options)
    assert all(o.recipes[o.group.index("denoiser")] == "fp8" for o in opts.options if "denoiser" in o.group)


def test_latency_objective_drops_options_and_says_why() -> None:
    rows = pipeline_rows("g", dn={1: 1000.0})
    p = problem(rows, [fleet("g", 1.0)], [workload("w", steps=10, p95=2.0)])
    opts = build(p)
    assert opts.choices[0] == []
    assert "latency budget" in opts.diagnostics[0].reasons[0]


def test_latency_budget_is_split_across_groups_in_proportion() -> None:
    rows = pipeline_rows("g", te=10.0, dn={1: 100.0}, vae=90.0)
    p = problem(rows, [fleet("g", 1.0)], [workload("w", steps=10, p95=20.0)])
    budgets = build(p).budgets
    te, dn, vae = (budgets[(0, "m", (s,))] for s in ("text_encoder", "denoiser", "vae_decoder"))
    assert te is not None
    assert dn is not None
    assert vae is not None
    assert te + dn + vae == pytest.approx(20.0)
    assert dn / vae == pytest.approx(1000.0 / 90.0)
    assert budgets[(0, "m", ("text_encoder", "denoiser", "vae_decoder"))] == pytest.approx(20.0)


def test_baseline_filter_keeps_batch_one_default_recipe_together() -> None:
    p = problem(_fp8_rows(), [fleet("g", 1.0)], [workload("w")])
    flt = OptionFilter(together_only=True, batch_one=True, default_recipes=True, share=False)
    opts = OptionBuilder(p.perf, p.models, p.recipes).build(p, flt)
    assert opts.options
    assert all(len(o.group) == 3 and o.batch == 1 and set(o.recipes) == {"bf16"} for o in opts.options)
