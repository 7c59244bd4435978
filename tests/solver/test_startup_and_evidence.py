"""Start-up time (weights load + measured compile of every batch size), its cap, and evidence-first admission."""

from __future__ import annotations

import pytest

from planner.perf.model import PerfSettings
from planner.solver import solve
from planner.solver.startup import WEIGHTS_LOAD_GBPS, warmed_batches
from tests.solver.factory import fleet, model, pipeline_rows, problem, row, workload

MODEL = model(params={"text_encoder": 100_000_000, "denoiser": 2_000_000_000, "vae_decoder": 80_000_000})


def _compiled(fam: str, compile_s: float | None) -> list:  # type: ignore[type-arg]
    """A pipeline whose denoiser runs bf16-compile (faster than bf16) with a measured compile time per shape."""
    rows = pipeline_rows(fam, mdl="m")
    for b, lat in {1: 80.0, 2: 120.0, 4: 200.0}.items():
        extra = {} if compile_s is None else {"compile_s": compile_s}
        rows.append(row(fam, "m", "denoiser", "bf16-compile", b, lat, mem=10.0, **extra))
    return rows


def test_warmed_batches_are_the_powers_of_two_up_to_the_batch() -> None:
    assert warmed_batches(1) == [1]
    assert warmed_batches(4) == [1, 2, 4]
    assert warmed_batches(6) == [1, 2, 4, 6]


def test_compile_time_lengthens_start_up_and_a_cap_leaves_the_compiled_recipe_out() -> None:
    """With compile_s measured, a replica's start-up is weights load + compile of each shape it runs; a cap below
    that leaves the compiled recipe out (the plan falls back to eager bf16, dearer), and a cap nothing meets says
    which group and how fast it could start."""
    fam = fleet("h100", 4.0)
    w = workload("w", rate=8.0)
    plain = solve(problem(_compiled("h100", None), [fam], [w], models=[MODEL]))
    slow = solve(problem(_compiled("h100", 60.0), [fam], [w], models=[MODEL]))
    assert plain.feasible
    assert slow.feasible
    (g_plain,) = plain.workloads[0].groups
    (g_slow,) = slow.workloads[0].groups
    assert g_slow.recipes["denoiser"] == "bf16-compile"
    load = sum(MODEL_PARAMS) * 2 / (WEIGHTS_LOAD_GBPS * 1e9)
    assert g_plain.startup_s == pytest.approx(load, rel=1e-6)
    assert g_slow.startup_s == pytest.approx(load + 60.0 * len(warmed_batches(g_slow.batch)), rel=1e-6)
    assert slow.to_dict()["workloads"][0]["groups"][0]["startup_s"] == pytest.approx(g_slow.startup_s, abs=0.1)

    capped = solve(
        problem(_compiled("h100", 60.0), [fam], [workload("w", rate=8.0, max_startup_s=30.0)], models=[MODEL])
    )
    assert capped.feasible
    assert all(g.recipes["denoiser"] == "bf16" for g in capped.workloads[0].groups)
    assert all(g.startup_s <= 30.0 for g in capped.workloads[0].groups)
    assert (capped.total_cost_per_hour or 0) >= (slow.total_cost_per_hour or 0)

    none = solve(problem(_compiled("h100", 60.0), [fam], [workload("w", rate=8.0, max_startup_s=0.5)], models=[MODEL]))
    assert not none.feasible
    assert "max_startup_s 0.5 s" in none.infeasible[0].message


MODEL_PARAMS = (100_000_000, 2_000_000_000, 80_000_000)


def test_latency_spread_is_kept_as_headroom() -> None:
    """The same cells with a 20% window spread credit each replica less: the plan buys more of them."""
    fam = fleet("h100", 4.0)
    w = workload("w", rate=20.0)
    steady = pipeline_rows("h100")
    noisy = [r.model_copy(update={"latency_spread": 0.2}) for r in steady]
    a = solve(problem(steady, [fam], [w]))
    b = solve(problem(noisy, [fam], [w]))
    assert sum(b.gpus.values()) > sum(a.gpus.values())


def test_a_family_reached_only_by_transfer_is_left_out_unless_estimates_are_allowed() -> None:
    """Evidence first: a cheap family with no measurement is not planned on by default; allowed, it is, and the
    plan's first warning says it rests on an estimate from the measured family."""
    rows = [r.model_copy(update={"tflops_per_call": 5.0}) for r in pipeline_rows("h100")]
    fams = [fleet("h100", 4.0), fleet("cheap", 0.5)]
    w = workload("w", rate=4.0)
    measured = solve(problem(rows, fams, [w], perf_settings=PerfSettings(estimates=False)))
    estimated = solve(problem(rows, fams, [w], perf_settings=PerfSettings(estimates=True)))
    assert set(measured.gpus) == {"h100"}
    assert all(g.evidence == "measured" for g in measured.workloads[0].groups)
    assert "cheap" in estimated.gpus
    labels = {g.evidence for g in estimated.workloads[0].groups if g.family == "cheap"}
    assert labels == {"transferred from h100"}
    assert estimated.warnings[0].startswith("This plan rests on ESTIMATES")
    assert measured.to_dict()["evidence"]["measured_only"] is True
    assert estimated.to_dict()["evidence"]["measured_only"] is False
