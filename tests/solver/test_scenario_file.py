"""The scenario file: contract 2, its extensions, and errors that name the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.core.batching import BatchingPolicy
from planner.core.config import Settings
from planner.core.errors import InputError
from planner.measurements.csvio import write_rows
from planner.planning import solver_options
from planner.scenario import load_scenario, parse_scenario
from planner.solver import SolverOptions, build_problem, solve
from tests.solver.factory import RECIPES, family, model, pipeline_rows

CONTRACT = """\
fleet:                       # families the plan may use
  - {family: h100-sxm-80gb, price_per_hour: 4.18, available: 16}
  - {family: lab-gpu-48g, price_per_hour: 0.9, memory_gib: 48}
measurements: extra.csv
workloads:
  - {name: sdxl-prod, model: sdxl, height: 1024, width: 1024, steps: 30, rate: 5.0,
     p95_latency_s: 20, headroom: 0.2, recipes: {denoiser: [bf16, fp8-compile]}}
"""


def test_contract_example_parses() -> None:
    sc = parse_scenario(CONTRACT, name="s.yaml", path=Path("/tmp/x/s.yaml"))
    assert [f.family for f in sc.fleet] == ["h100-sxm-80gb", "lab-gpu-48g"]
    assert sc.fleet[0].available == 16
    assert sc.fleet[1].available is None
    assert sc.fleet[1].memory_gib == 48
    w = sc.workloads[0]
    assert (w.name, w.models, w.rate, w.p95_latency_s, w.headroom) == ("sdxl-prod", ["sdxl"], 5.0, 20, 0.2)
    assert w.recipes == {"denoiser": ["bf16", "fp8-compile"]}
    assert sc.measurements_path() == Path("/tmp/x/extra.csv")


def test_extensions_parse() -> None:
    text = """\
fleet: [{family: h100-sxm-80gb, price_per_hour: 4.18}]
workloads:
  - name: mix
    model: [sdxl, sdxl-lightning]
    steps: {sdxl: 30, sdxl-lightning: 4}
    rate: 1
    batches: [1, 2, 4]
    quality: {metric: ssim_image, min: 0.95, weights: any, missing: allow}
    quality_scores: {min_score: 0.8, scores: {sdxl: {'*': 1.0}, sdxl-lightning: {bf16: 0.85}}}
solver: {memory_reserve_gib: 4, share_gpus: false, mip_rel_gap: 0.01, what_if_rates: [2], simulated_p95_binds: false}
"""
    sc = parse_scenario(text)
    w = sc.workloads[0]
    assert w.models == ["sdxl", "sdxl-lightning"]
    assert w.quality is not None
    assert w.quality.min == 0.95
    assert w.quality.missing == "allow"
    assert w.quality_scores is not None
    assert w.quality_scores.score("sdxl", "fp8") == 1.0
    assert w.quality_scores.score("sdxl-lightning", "bf16") == 0.85
    assert w.quality_scores.score("sdxl-lightning", "fp8") is None
    assert sc.solver.memory_reserve_gib == 4
    assert not sc.solver.share_gpus
    opts = solver_options(sc, Settings())
    assert not opts.simulated_p95_binds
    assert opts.what_if_rates == (2.0,)
    assert solver_options(parse_scenario(text.split("solver:")[0]), Settings()).simulated_p95_binds  # the default


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        (
            "fleet: [{family: h100-sxm-80gb, price_per_hour: 4}]\n"
            "workloads:\n  - {name: a, model: m,\n     rate: -1}\n",
            ":4:",
            "workloads[0].rate",
        ),
        (
            "fleet: [{family: h100-sxm-80gb, price_per_hour: 4}]\nworkloads:\n  - name: a\n    model: m\n"
            "    rate: 1\n    ratee: 2\n",
            ":6:",
            "workloads[0].ratee",
        ),
        (
            "fleet: [{family: h100-sxm-80gb}]\nworkloads:\n  - name: a\n    model: m\n",
            ":3:",
            "workloads[0].rate",
        ),
        (
            "fleet:\n  - family: h100-sxm-80gb\n    price_per_hour: lots\nworkloads: [{name: a, model: m, rate: 1}]\n",
            ":3:",
            "fleet[0].price_per_hour",
        ),
        (
            "fleet: [{family: x, price_per_hour: 1}]\nworkloads:\n  - {name: a, model: m, rate: 1,\n"
            "     quality: {metric: ssim, min: 0.9}}\n",
            ":4:",
            "workloads[0].quality.metric",
        ),
    ],
)
def test_errors_name_file_line_key_and_fix(text: str, where: str, key: str) -> None:
    with pytest.raises(InputError) as err:
        parse_scenario(text, name="s.yaml")
    message = str(err.value)
    assert f"s.yaml{where}" in message
    assert key in message
    assert "Fix:" in message


def test_duplicate_key_bad_yaml_empty_and_duplicate_names() -> None:
    with pytest.raises(InputError, match=r"s.yaml:2: fleet: the key appears twice.*Fix"):
        parse_scenario("fleet: []\nfleet: []\n", name="s.yaml")
    with pytest.raises(InputError, match=r"s.yaml:3: not valid YAML.*Fix"):
        parse_scenario("fleet: [\n  {a: 1\nworkloads: x\n", name="s.yaml")
    with pytest.raises(InputError, match=r"empty.*Fix"):
        parse_scenario("", name="s.yaml")
    dup = (
        "fleet: [{family: x, price_per_hour: 1}]\nworkloads:\n"
        "  - {name: a, model: m, rate: 1}\n  - {name: a, model: m, rate: 2}\n"
    )
    with pytest.raises(InputError, match=r"s.yaml:4: workloads\[1\].name: 'a' appears twice"):
        parse_scenario(dup, name="s.yaml")


def test_catalog_check_names_the_line() -> None:
    text = "fleet:\n  - {family: lab-gpu, price_per_hour: 1}\nworkloads:\n  - {name: a, model: nope, rate: 1}\n"
    sc = parse_scenario(text, name="s.yaml")
    fams = {"h100": family("h100")}
    with pytest.raises(InputError, match=r"s.yaml:2: fleet\[0\].family: 'lab-gpu' is not in the catalog.*memory_gib"):
        sc.check_catalog(fams, {"m": model()})
    text = "fleet:\n  - {family: h100, price_per_hour: 1}\nworkloads:\n  - {name: a, model: nope, rate: 1}\n"
    with pytest.raises(InputError, match=r"s.yaml:4: workloads\[0\].model: unknown model 'nope'.*Fix"):
        parse_scenario(text, name="s.yaml").check_catalog(fams, {"m": model()})


def test_missing_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_scenario(tmp_path / "nope.yaml")
    (tmp_path / "s.yaml").write_text(
        "fleet: [{family: g, price_per_hour: 1}]\nmeasurements: gone.csv\nworkloads: [{name: a, model: m, rate: 1}]\n"
    )
    with pytest.raises(InputError, match=r"s.yaml:2: measurements: .*gone.csv does not exist. Fix"):
        build_problem(
            load_scenario(tmp_path / "s.yaml"),
            [],
            families={"g": family("g")},
            models={"m": model()},
            recipes=RECIPES,
        )


def test_scenario_to_plan_end_to_end(tmp_path: Path) -> None:
    csv_path = tmp_path / "extra.csv"
    with csv_path.open("w", newline="") as fh:
        write_rows(pipeline_rows("gpu-a") + pipeline_rows("lab-gpu", dn={1: 80.0, 2: 120.0, 4: 200.0}), fh)
    (tmp_path / "s.yaml").write_text(
        "fleet:\n"
        "  - {family: gpu-a, price_per_hour: 2.0, available: 4}\n"
        "  - {family: lab-gpu, price_per_hour: 0.9, memory_gib: 48}\n"
        "measurements: extra.csv\n"
        "workloads:\n"
        "  - {name: prod, model: m, steps: 10, rate: 2.0, p95_latency_s: 20, headroom: 0.2,\n"
        "     recipes: {denoiser: [bf16]}}\n"
        "  - {name: typo, model: m, steps: 10, rate: 0.1, recipes: {denoiser: [bf17]}}\n"
    )
    sc = load_scenario(tmp_path / "s.yaml")
    with pytest.raises(InputError, match=r"s.yaml:8: workloads\[1\].recipes.denoiser: unknown recipe 'bf17'"):
        build_problem(sc, [], families={"gpu-a": family("gpu-a")}, models={"m": model()}, recipes=RECIPES)
    (tmp_path / "s.yaml").write_text((tmp_path / "s.yaml").read_text().replace("bf17", "bf16"))
    sc = load_scenario(tmp_path / "s.yaml")
    problem = build_problem(sc, [], families={"gpu-a": family("gpu-a")}, models={"m": model()}, recipes=RECIPES)
    assert problem.families["lab-gpu"].spec is None
    plan = solve(problem)
    assert plan.feasible
    assert {w.name for w in plan.workloads} == {"prod", "typo"}


def test_both_routes_from_a_scenario_to_options_agree(tmp_path: Path) -> None:
    """`build_problem` (tests, benchmarks) and the store's `solver_options` map a scenario the same way: every
    `solver:` key it gives (simulated_p95_binds included) and its `batching:` policy; the defaults where absent."""
    text = (
        "fleet: [{family: gpu-a, price_per_hour: 2}]\n"
        "workloads: [{name: a, model: m, rate: 1}]\n"
        "solver: {simulated_p95_binds: false, time_limit_s: 30}\n"
        "batching: {compiled_batches: plan, batch_wait_s: 0.2}\n"
    )
    sc = parse_scenario(text)
    built = build_problem(sc, [], families={"gpu-a": family("gpu-a")}, models={"m": model()}, recipes=RECIPES).options
    stored = solver_options(sc, Settings())
    for opts in (built, stored):
        assert not opts.simulated_p95_binds
        assert opts.time_limit_s == 30
        assert opts.compiled_batches == "plan"
        assert opts.batch_wait_s == 0.2
    assert built == stored
    plain = parse_scenario(text.split("solver:")[0])
    defaults = build_problem(plain, [], families={"gpu-a": family("gpu-a")}, models={"m": model()}, recipes=RECIPES)
    assert defaults.options == SolverOptions()
    assert defaults.options.batching is None


def test_a_plan_carries_the_batching_policy_its_scenario_set() -> None:
    """The workers read the policy from the plan in force; a scenario without `batching:` adds no key (the
    defaults, which workers run when a plan names none), so plans of such scenarios are unchanged."""
    fleet = "fleet: [{family: gpu-a, price_per_hour: 2}]\nworkloads: [{name: a, model: m, steps: 10, rate: 1}]\n"
    rows = pipeline_rows("gpu-a")
    kwargs = {"families": {"gpu-a": family("gpu-a")}, "models": {"m": model()}, "recipes": RECIPES}
    plain = solve(build_problem(parse_scenario(fleet), rows, **kwargs)).to_dict()
    assert "batching" not in plain
    chosen = parse_scenario(fleet + "batching: {compiled_batches: off}\n")
    carried = solve(build_problem(chosen, rows, **kwargs)).to_dict()
    assert carried["batching"] == {"compiled_batches": "off", "batch_wait_s": 0.05}
    assert BatchingPolicy.from_dict(carried["batching"]) == BatchingPolicy(compiled_batches="off")
