"""solve(): packing, availability, model choice, quality floors, latency, baselines, infeasible answers."""

from __future__ import annotations

import json
import re

import pytest

from planner.perf.roofline import TRANSFER_MIN_UNCERTAINTY
from planner.scenario import QualityFloor, QualityScores
from planner.solver import Plan, solve
from tests.solver.factory import fleet, model, pipeline_rows, problem, row, workload

CONTRACT_WORKLOAD = {"name", "topology", "cost_per_hour", "cost_per_image", "groups"}
CONTRACT_GROUP = {"stages", "family", "recipes", "batch", "replicas", "throughput"}


def _check_contract(plan: Plan) -> dict:  # type: ignore[type-arg]
    data = json.loads(plan.to_json())
    assert {"total_cost_per_hour", "gpus", "workloads"} <= set(data)
    for w in data["workloads"]:
        assert set(w) >= CONTRACT_WORKLOAD
        assert re.fullmatch(r"(\[[a-z]+(\+[a-z]+)*\])+", w["topology"])
        for g in w["groups"]:
            assert set(g) >= CONTRACT_GROUP
            assert set(g["recipes"]) == set(g["stages"])
    return data  # type: ignore[no-any-return]


def test_plan_json_follows_contract_3_and_adds_up() -> None:
    rows = pipeline_rows("a") + pipeline_rows("b", dn={1: 60.0, 2: 80.0, 4: 130.0})
    p = problem(rows, [fleet("a", 1.0), fleet("b", 2.5)], [workload("w1", rate=5.0, p95=10.0, headroom=0.2)])
    plan = solve(p)
    data = _check_contract(plan)
    assert plan.feasible
    assert data["total_cost_per_hour"] == pytest.approx(sum(w["cost_per_hour"] for w in data["workloads"]))
    w = plan.workloads[0]
    assert w.cost_per_image == pytest.approx(w.cost_per_hour / 3600 / 5.0)
    assert sum(plan.gpus.values()) == sum(g.replicas for g in w.groups if g.shared_gpu is None) + len(plan.shared_gpus)
    for g in w.groups:  # each group's replicas carry the rate
        assert sum(x.capacity_credited for x in w.groups if x.stages == g.stages) >= 5.0 - 1e-9


def test_low_rate_workloads_share_one_gpu() -> None:
    rows = pipeline_rows("h100")
    p = problem(rows, [fleet("h100", 4.18)], [workload("a", rate=0.05, headroom=0.2), workload("b", rate=0.05)])
    plan = solve(p)
    assert plan.gpus == {"h100": 1}
    assert len(plan.shared_gpus) == 1
    assert len(plan.shared_gpus[0].tenants) == 2
    for w in plan.workloads:
        assert w.cost_per_hour < 4.18  # 0.05 images/s does not take a whole H100
        assert w.groups[0].shared_gpu == "h100#1"
    assert plan.total_cost_per_hour == pytest.approx(4.18)


def test_at_a_low_rate_equal_cost_plans_take_the_lower_latency_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """One replica carries 0.05 images/s at batch 1 or 4 alike: the plan must not keep batch 4's 60 s batch
    formation (the MILP alone, which sees only $/hour, keeps the largest credit), and must cost the same."""
    from planner.solver import assembly

    rows = pipeline_rows("h100", dn={1: 50.0, 2: 60.0, 4: 90.0})
    p = problem(rows, [fleet("h100", 4.18)], [workload("a", rate=0.05)], share_gpus=False)
    plan = solve(p)
    monkeypatch.setattr(assembly, "prefer_lower_latency", lambda rate, used, running=frozenset(): used)
    cost_only = solve(p)
    assert cost_only.workloads[0].groups[0].batch == 4  # what the defect looked like
    assert plan.total_cost_per_hour == pytest.approx(cost_only.total_cost_per_hour)
    assert plan.gpus == cost_only.gpus == {"h100": 1}
    assert [g.batch for g in plan.workloads[0].groups] == [1] * len(plan.workloads[0].groups)
    assert plan.workloads[0].predicted_p95_s < 2.0 < 60.0 < cost_only.workloads[0].predicted_p95_s


def test_the_latency_tie_break_never_uncovers_the_rate() -> None:
    """At a rate where batch 1 needs more replicas than batch 4, the tie-break keeps batch 4."""
    rows = pipeline_rows("h100", dn={1: 50.0, 2: 60.0, 4: 90.0})
    p = problem(rows, [fleet("h100", 4.18)], [workload("a", rate=5.0)], share_gpus=False)
    plan = solve(p)
    groups = plan.workloads[0].groups
    assert all(g.batch == 4 for g in groups)
    for g in groups:
        assert sum(x.capacity_credited for x in groups if x.stages == g.stages) >= 5.0 - 1e-9


def test_availability_limits_are_shared_by_all_workloads() -> None:
    rows = pipeline_rows("cheap") + pipeline_rows("dear")
    fleet_ = [fleet("cheap", 1.0, available=2), fleet("dear", 3.0)]
    p = problem(rows, fleet_, [workload("a", rate=3.0), workload("b", rate=3.0)], share_gpus=False, sensitivity=True)
    plan = solve(p)
    assert plan.feasible
    assert plan.gpus["cheap"] == 2
    assert plan.gpus["dear"] >= 1
    assert plan.sensitivity is not None
    assert "availability" in plan.sensitivity.binding


def test_multi_model_workload_picks_the_cheaper_acceptable_model() -> None:
    big, small = model("big", steps=30), model("small", steps=4)
    rows = pipeline_rows("g", mdl="big") + pipeline_rows("g", mdl="small")
    w = workload("w", ["big", "small"], steps={"big": 30, "small": 4}, rate=2.0)
    plan = solve(problem(rows, [fleet("g", 1.0)], [w], models=[big, small]))
    assert plan.workloads[0].model == "small"
    scores = QualityScores(min_score=0.9, scores={"big": {"*": 1.0}, "small": {"*": 0.8}})
    w2 = workload("w", ["big", "small"], steps={"big": 30, "small": 4}, rate=2.0, quality_scores=scores)
    plan2 = solve(problem(rows, [fleet("g", 1.0)], [w2], models=[big, small]))
    assert plan2.workloads[0].model == "big"
    assert plan2.total_cost_per_hour > plan.total_cost_per_hour  # type: ignore[operator]


def test_quality_floor_excludes_the_faster_recipe() -> None:
    rows = pipeline_rows("g") + [
        row("g", "m", "denoiser", "fp8", b, 40.0 * b, mem=6.0, ssim_image=0.91, quality_weights="real")
        for b in (1, 2, 4)
    ]
    loose = solve(problem(rows, [fleet("g", 1.0)], [workload("w", rate=4.0)]))
    strict = solve(
        problem(
            rows,
            [fleet("g", 1.0)],
            [workload("w", rate=4.0, quality=QualityFloor(min=0.95))],
            sensitivity=True,
        )
    )
    used = lambda plan: {r for g in plan.workloads[0].groups for r in g.recipes.values()}  # noqa: E731
    assert "fp8" in used(loose)
    assert "fp8" not in used(strict)
    assert strict.sensitivity is not None
    assert "quality" in strict.sensitivity.binding
    labels = {q.label: q.cost_per_hour for q in strict.sensitivity.quality}
    assert labels["no quality floor"] == pytest.approx(loose.total_cost_per_hour)
    relaxed = {r.label: r.cost_per_hour for _, r in strict.sensitivity.relaxed}
    assert relaxed["without the quality constraint"] == labels["no quality floor"]  # one what-if answers both


def test_predicted_p95_meets_every_objective() -> None:
    rows = pipeline_rows("a") + pipeline_rows("b", dn={1: 60.0, 2: 80.0, 4: 130.0})
    ws = [
        workload(f"w{i}", rate=r, p95=t, headroom=0.1) for i, (r, t) in enumerate([(0.2, 3.0), (4.0, 6.0), (9.0, 30.0)])
    ]
    plan = solve(problem(rows, [fleet("a", 1.0), fleet("b", 2.2)], ws))
    assert plan.feasible
    for w in plan.workloads:
        assert w.meets_latency
        assert w.predicted_p95_s <= w.p95_objective_s  # type: ignore[operator]
        assert w.predicted_p95_s == pytest.approx(
            sum(max(g.p95_s for g in w.groups if g.stages == s) for s in w.topology_groups)
        )


def test_estimated_cells_cost_headroom() -> None:
    m = model(tflops={"text_encoder": 0.1, "denoiser": 10.0, "vae_decoder": 5.0})  # FLOPs make a transfer possible
    measured = solve(
        problem(pipeline_rows("g"), [fleet("g", 1.0)], [workload("w", rate=6.0)], share_gpus=False, models=[m])
    )
    moved = solve(
        problem(
            pipeline_rows("g"),
            [fleet("h", 1.0)],
            [workload("w", rate=6.0)],
            share_gpus=False,
            models=[m],
            families=[fleet("g", 1.0).spec, fleet("h", 1.0).spec],
        )  # type: ignore[list-item]
    )
    g_meas = measured.workloads[0].groups[0]
    g_est = moved.workloads[0].groups[0]
    assert g_meas.measured
    assert g_meas.uncertainty == 0
    assert not g_est.measured
    assert g_est.uncertainty == pytest.approx(TRANSFER_MIN_UNCERTAINTY)  # same rooflines: the least a transfer costs
    assert g_est.cells[0].method == "transferred"
    assert moved.total_cost_per_hour >= measured.total_cost_per_hour  # type: ignore[operator]


def test_energy_price_adds_to_the_cost_of_owned_gpus() -> None:
    rows = pipeline_rows("g")
    base = solve(problem(rows, [fleet("g", 1.0)], [workload("w", rate=2.0)], share_gpus=False))
    owned = solve(
        problem(rows, [fleet("g", 1.0, energy_price_per_kwh=0.2)], [workload("w", rate=2.0)], share_gpus=False)
    )
    gpus = sum(base.gpus.values())
    assert owned.total_cost_per_hour == pytest.approx(base.total_cost_per_hour + gpus * 0.7 * 0.2)  # type: ignore[operator]


def test_baselines_are_never_cheaper_than_the_plan() -> None:
    rows = pipeline_rows("a") + pipeline_rows("b", dn={1: 60.0, 2: 80.0, 4: 130.0})
    rows += [row("a", "m", "denoiser", "fp8", b, 45.0 * b, mem=6.0) for b in (1, 2, 4)]
    ws = [workload("hi", rate=6.0, p95=20.0), workload("lo", rate=0.05), workload("lo2", rate=0.1)]
    plan = solve(problem(rows, [fleet("a", 1.0), fleet("b", 2.2)], ws, baselines=True))
    names = {b.name: b for b in plan.baselines}
    assert set(names) == {"naive", "single-family", "gpu-mix-together"}
    for b in plan.baselines:
        assert b.feasible
        assert b.cost_per_hour >= plan.total_cost_per_hour - 1e-6  # type: ignore[operator]
        assert b.saving is not None
        assert b.saving >= -1e-9
    assert names["naive"].cost_per_hour >= names["gpu-mix-together"].cost_per_hour  # type: ignore[operator]


def test_what_if_rates_scale_the_cost() -> None:
    plan = solve(problem(pipeline_rows("g"), [fleet("g", 1.0)], [workload("w", rate=4.0)], sensitivity=True))
    assert plan.sensitivity is not None
    costs = {r.label: r.cost_per_hour for r in plan.sensitivity.rates}
    assert costs["rates x0.5"] <= plan.total_cost_per_hour <= costs["rates x2"]  # type: ignore[operator]


def test_infeasible_memory_says_what_is_missing() -> None:
    rows = pipeline_rows("small", mem=30.0)
    plan = solve(problem(rows, [fleet("small", 1.0, memory_gib=24.0)], [workload("w")]))
    assert not plan.feasible
    (bad,) = plan.infeasible
    assert bad.workload == "w"
    assert bad.carried_fraction == 0.0
    assert ("GiB" in bad.message and "24" not in bad.message) or "22.0 GiB" in bad.message
    assert "memory" in bad.suggestion
    data = json.loads(plan.to_json())
    assert data["total_cost_per_hour"] is None
    assert data["workloads"] == []
    assert data["infeasible"]


def test_infeasible_availability_says_how_much_is_carried_and_what_would_carry_it() -> None:
    rows = pipeline_rows("g")
    plan = solve(problem(rows, [fleet("g", 1.0, available=2)], [workload("prod", rate=10.0)], share_gpus=False))
    assert not plan.feasible
    (bad,) = plan.infeasible
    assert 0 < bad.carried_fraction < 1
    assert re.search(r"the fleet's 2 g carry \d+% of prod's rate", bad.message)
    assert re.search(r"needs \d+ g \(the fleet has 2: add \d+\)", bad.suggestion)


def test_infeasible_latency_says_so() -> None:
    rows = pipeline_rows("g", dn={1: 1000.0})
    plan = solve(problem(rows, [fleet("g", 1.0)], [workload("w", steps=10, p95=2.0)]))
    assert not plan.feasible
    assert "latency budget" in plan.infeasible[0].message
    assert "p95_latency_s" in plan.infeasible[0].suggestion
