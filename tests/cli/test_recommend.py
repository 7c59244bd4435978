"""`planner recommend` end to end: each output format and each error path, on the shipped reference data.

Most tests run the command in-process against one store seeded from the shipped measurements (migrated once per
module); the README's command runs as a subprocess on a fresh data directory, and the `--database-url` test
migrates a fresh database of each backend with `planner db upgrade`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from planner.recommend.export import CSV_COLUMNS
from planner.schemas.plans import PlanResult
from tests.helpers import invoke, recommend, run_cli

pytestmark = pytest.mark.usefixtures("reference_settings")

PLAN_KEYS = [
    "schema_version",
    "total_cost_per_hour",
    "gpus",
    "workloads",
    "warnings",
    "evidence",
    "offering",
    "prices",
    "opportunities",
    "feasible",
    "shared_gpus",
    "baselines",
    "sensitivity",
    "infeasible",
    "solver",
    "quality",
    "replan",  # null unless re-planned from a running plan (--from)
    "distilled_quality",  # published figures of a served distilled variant against its base
]
WORKLOAD_KEYS = {"name": str, "topology": str, "cost_per_hour": float, "cost_per_image": float, "groups": list}
GROUP_KEYS = {"stages": list, "family": str, "recipes": dict, "batch": int, "replicas": int, "throughput": float}


def check_contract_3(plan: dict[str, Any]) -> None:
    """DESIGN.md contract 3: exact keys (contract first, then the extras) and their types."""
    assert list(plan) == PLAN_KEYS
    assert isinstance(plan["total_cost_per_hour"], float)
    assert plan["gpus"]
    assert all(isinstance(k, str) and isinstance(n, int) for k, n in plan["gpus"].items())
    assert isinstance(plan["workloads"], list)
    assert plan["workloads"]
    for w in plan["workloads"]:
        for key, kind in WORKLOAD_KEYS.items():
            assert isinstance(w[key], kind), (key, w[key])
        assert w["cost_per_image"] == pytest.approx(w["cost_per_hour"] / (3600 * w["rate"]), rel=1e-4)
        assert w["groups"]
        for g in w["groups"]:
            for key, kind in GROUP_KEYS.items():
                assert isinstance(g[key], kind), (key, g[key])
            assert all(isinstance(s, str) for s in g["stages"])
            assert set(g["recipes"]) == set(g["stages"])
            assert all(isinstance(r, str) for r in g["recipes"].values())
    assert plan["total_cost_per_hour"] == pytest.approx(sum(w["cost_per_hour"] for w in plan["workloads"]))
    PlanResult.model_validate(plan)  # and the service stores it as it is (POST /v1/fleets/{fleet}/plans)


# ---- the README's command -----------------------------------------------------------------------------


def test_readme_command_on_a_fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`planner recommend --model sdxl --rate 10 --p95 10` with no store yet: it migrates, seeds and answers, first
    with what the plan rests on (measurements) and its prices, then the plan, and what to probe next."""
    monkeypatch.delenv("PLANNER_DATABASE_URL", raising=False)
    env = {"XDG_DATA_HOME": str(tmp_path), "PLANNER_SEED_REFERENCE_DATA": "true"}
    proc = run_cli("planner", "recommend", "--model", "sdxl", "--rate", "10", "--p95", "10", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("Evidence: the plan rests on measurements")
    assert "Meets the p95 objective of 10 s" in " ".join(out.split())
    assert "What to probe next" in out
    assert "sdxl at 10 images/s" in out
    assert "measured on: h100-sxm-80gb" in out
    for heading in ("Fleet", "Savings over the baselines", "Binding constraints", "Measured and estimated numbers"):
        assert heading in out
    for column in ("$/hour", "$/image", "$/1k", "$/month", "p95 s", "util", "replicas"):
        assert column in out
    assert re.search(r"total\s+\d+\s+\$[\d.,]+\s+\$[\d.,]+", out)  # the fleet: GPUs, $/hour, $/month
    assert (tmp_path / "gpu-fleet-planner" / "planner.db").is_file()


@pytest.mark.parametrize("columns", [80, 120])
def test_a_narrow_terminal_never_breaks_a_number(reference_url: str, columns: int) -> None:
    """Text wraps between words; a table too wide even then prints one record per row. No dollar figure, GPU
    count or percentage is cut or split across lines, whatever the terminal's width."""
    args = ("recommend", "--database-url", reference_url, "--model", "sdxl", "--rate", "10")
    plan = json.loads(run_cli("planner", *args, "--format", "json").stdout)
    proc = run_cli("planner", *args, env={"COLUMNS": str(columns)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    workload = plan["workloads"][0]
    tokens = {
        f"${workload['cost_per_hour']:.2f}",
        f"${plan['total_cost_per_hour'] * 730:,.0f}",
        *(f"${b['cost_per_hour']:.2f}" for b in plan["baselines"]),
        *(f"{b['saving']:.1%}" for b in plan["baselines"]),
        *(g["family"] for g in workload["groups"]),
    }
    words = set(out.split())
    assert tokens <= words, tokens - words
    table_lines = [line for line in out.splitlines() if "  " in line.strip()]  # tables; captions soft-wrap
    assert max(len(line) for line in table_lines) <= columns


# ---- formats --------------------------------------------------------------------------------------------


def test_json_is_exactly_contract_3(reference_url: str) -> None:
    result = recommend(reference_url, "--model", "sdxl", "--rate", "10", "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    check_contract_3(plan)
    assert plan["feasible"] is True
    assert plan["workloads"][0]["name"] == "sdxl"
    assert {b["name"] for b in plan["baselines"]} == {"naive", "single-family", "gpu-mix-together"}
    cells = [c for w in plan["workloads"] for g in w["groups"] for c in g["cells"]]
    assert {c["source"] for c in cells} <= {"measured", "estimated"}


def test_each_pool_reports_the_utilization_the_scheduler_will_give_it(reference_url: str) -> None:
    """Load is routed by throughput, so the pools of one group carry the whole rate between them: the sum over
    pools of utilization x throughput is the workload's rate, also when a group is spread over several
    families (on the shipped data some of these cases top up a main pool with a smaller one; which ones moves
    with the data, so several are solved and at least one must spread; estimates allowed, so that every family of
    the catalog can take part)."""
    spread = 0
    for model, rate in (("sdxl", 1.0), ("sdxl", 10.0), ("flux-dev", 1.0), ("flux-dev", 10.0)):
        result = recommend(
            reference_url, "--model", model, "--rate", str(rate), "--format", "json", "--allow-estimates"
        )
        assert result.returncode == 0, result.stderr
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for g in json.loads(result.stdout)["workloads"][0]["groups"]:
            groups.setdefault(tuple(g["stages"]), []).append(g)
        spread += any(len(pools) > 1 for pools in groups.values())
        for pools in groups.values():
            carried = sum(p["utilization"] * p["throughput"] for p in pools)
            assert carried == pytest.approx(rate, rel=2e-3), (model, rate)
            assert len({p["utilization"] for p in pools}) == 1, (model, rate)
    assert spread > 0, "none of the cases spread a group over several pools: pick cases that do"


def test_table_says_what_is_measured_and_what_binds(reference_url: str) -> None:
    result = recommend(reference_url, "--model", "sdxl", "--rate", "2", "--family", "h100-sxm-80gb", "--p95", "30")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"sdxl at 2 images/s \(topology \[[a-z+\]\[]+\], headroom 20%, p95 objective 30 s\)", out)
    assert "h100-sxm-80gb" in out
    # The H100's cells are measured: the numbers column says so (rich may wrap it on a narrow console).
    assert re.search(r"\bmeasured\b", out.split("Savings over the baselines")[0])
    as_json = json.loads(
        recommend(
            reference_url, "--model", "sdxl", "--rate", "2", "--family", "h100-sxm-80gb", "--p95", "30", "--format",
            "json",
        ).stdout
    )  # fmt: skip
    assert all(g["measured"] for w in as_json["workloads"] for g in w["groups"])
    assert "capacity" in out
    assert "this plan saves" in out


def test_csv_has_one_row_per_group_with_documented_columns(reference_url: str) -> None:
    as_json = json.loads(recommend(reference_url, "--model", "sdxl", "--rate", "10", "--format", "json").stdout)
    result = recommend(reference_url, "--model", "sdxl", "--rate", "10", "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    groups = [g for w in as_json["workloads"] for g in w["groups"]]
    assert len(rows) == len(groups)
    assert sum(float(r["cost_per_hour"]) for r in rows) == pytest.approx(as_json["total_cost_per_hour"], rel=1e-5)
    for row, g in zip(rows, groups, strict=True):
        assert row["family"] == g["family"]
        assert int(row["batch"]) == g["batch"]
        assert float(row["cost_per_month"]) == pytest.approx(float(row["cost_per_hour"]) * 730, rel=1e-5)
        assert row["source"] in ("measured", "estimated")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_is_self_contained_with_real_plots(reference_url: str, tmp_path: Path) -> None:
    from matplotlib import image as mpimg

    out_dir = tmp_path / "review"
    result = recommend(reference_url, "--model", "sdxl", "--rate", "10", "--report", str(out_dir))
    assert result.returncode == 0, result.stderr
    page = (out_dir / "index.html").read_text()
    assert "report written to" in result.stderr
    assert not re.search(r"""(src|href)=["']https?:""", page)  # nothing fetched from elsewhere
    for heading in ("$/image against rate", "Cost and quality", "Fleet and savings", "Measured and estimated numbers"):
        assert heading in page
    assert "planner recommend --model sdxl --rate 10 --report" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # $/image against rate, cost/quality, GPUs per family
    for encoded in images:
        data = base64.b64decode(encoded)
        width, height = png_size(data)
        assert width > 0
        assert height > 0
        pixels = np.asarray(mpimg.imread(io.BytesIO(data), format="png"))
        assert pixels.reshape(-1, pixels.shape[-1]).std(axis=0).max() > 0.01  # not a single colour
    assert "synthetic" in page  # the shipped quality figures are measured on random weights, and say so
    check_contract_3(json.loads((out_dir / "plan.json").read_text()))


def test_what_if_rates_absolute_and_multiplied(reference_url: str) -> None:
    result = recommend(reference_url, "--model", "sdxl", "--rate", "10", "--what-if", "rate=1,x2,100")
    assert result.returncode == 0, result.stderr
    table = result.stdout[result.stdout.index("What if the rate changes") :]
    assert re.search(r"1 images/s\s+1\s+\$", table)
    assert re.search(r"x2\s+20\s+\$", table)
    assert re.search(r"100 images/s\s+100\s+\$", table)
    as_json = recommend(reference_url, "--model", "sdxl", "--rate", "10", "--what-if", "rate=x2", "--format", "json")
    assert as_json.returncode == 0
    check_contract_3(json.loads(as_json.stdout))  # stdout stays the plan; the what-if table goes to stderr
    assert "What if the rate changes" in as_json.stderr


def test_compare_with_a_saved_plan(reference_url: str, tmp_path: Path) -> None:
    saved = tmp_path / "last-quarter.json"
    before = recommend(reference_url, "--model", "sdxl", "--rate", "5", "--family", "h100-sxm-80gb", "--format", "json")
    saved.write_text(before.stdout)
    result = recommend(
        reference_url, "--model", "sdxl", "--rate", "10", "--family", "h100-sxm-80gb", "--compare", str(saved)
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Compared with {saved}" in out
    assert "GPUs h100-sxm-80gb" in out
    old = json.loads(before.stdout)["total_cost_per_hour"]
    assert f"${old:,.2f}" in out
    assert re.search(r"\+\$[\d.,]+ \(\+\d+%\)", out)  # twice the rate costs more


def test_replan_from_a_running_plan_reports_its_moves(reference_url: str, tmp_path: Path) -> None:
    """`--from plan.json`: the re-plan at +10% says how many replicas it moves and what a fresh solve would."""
    running = tmp_path / "running.json"
    before = recommend(reference_url, "--model", "sdxl", "--rate", "5", "--format", "json")
    assert before.returncode == 0, before.stderr
    running.write_text(before.stdout)
    after = recommend(reference_url, "--model", "sdxl", "--rate", "5.5", "--from", str(running), "--format", "json")
    assert after.returncode == 0, after.stderr
    replan = json.loads(after.stdout)["replan"]
    assert replan["move_cost_per_hour"] == 0.5
    assert replan["moves"]["total"] <= replan["fresh_moves"]["total"]
    assert "a fresh solve moves" in replan["summary"]
    table = recommend(reference_url, "--model", "sdxl", "--rate", "5.5", "--from", str(running), "--move-cost", "0")
    assert table.returncode == 0, table.stderr
    assert "re-plan from the running plan at a move cost of $0/h" in " ".join(table.stdout.split())
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    refused = recommend(reference_url, "--model", "sdxl", "--rate", "5.5", "--from", str(bad))
    assert refused.returncode != 0
    assert "--from" in refused.stderr


def test_compare_on_a_narrow_terminal_prints_the_topology_change(reference_url: str, tmp_path: Path) -> None:
    """At 80 columns the per-workload comparison prints one record per row; its topologies stay as typed."""
    args = ("--model", "sdxl", "--rate", "10", "--family", "h100-sxm-80gb")
    now = json.loads(recommend(reference_url, *args, "--format", "json").stdout)["workloads"][0]["topology"]
    before = "[te][dn][vae]" if now != "[te][dn][vae]" else "[te+dn+vae]"
    saved = json.loads(recommend(reference_url, *args, "--format", "json").stdout)
    saved["workloads"][0]["topology"] = before
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    # A subprocess: the console reads COLUMNS when it is created, at import.
    proc = run_cli(
        "planner", "recommend", "--database-url", reference_url, *args, "--compare", str(path), env={"COLUMNS": "80"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "what changed" in proc.stdout  # one record per row, not a table
    assert f"topology {before} -> {now}" in " ".join(proc.stdout.split())


def test_scenario_with_a_family_outside_the_catalog_and_its_own_measurements(
    reference_url: str, tmp_path: Path
) -> None:
    """Contract 2: `lab-gpu-48g` is known only from the scenario's measurements file, at its memory and price."""
    from planner.crud.seed import REFERENCE_CSV

    with REFERENCE_CSV.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r["model"] == "sdxl" and r["status"] == "ok"]
    for r in rows:
        r["gpu_family"] = "lab-gpu-48g"
        r["latency_ms"] = str(float(r["latency_ms"]) * 1.5)
        r["latency_p95_ms"] = str(float(r["latency_p95_ms"]) * 1.5)
    with (tmp_path / "lab.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "fleet.yaml").write_text(
        "fleet:\n"
        "  - {family: h100-sxm-80gb, price_per_hour: 4.18, available: 16}\n"
        "  - {family: lab-gpu-48g, price_per_hour: 0.9, memory_gib: 48}\n"
        "measurements: lab.csv\n"
        "workloads:\n"
        "  - {name: sdxl-prod, model: sdxl, rate: 5.0, p95_latency_s: 20, recipes: {denoiser: [bf16, fp8-compile]}}\n"
        "  - {name: sd15-batch, model: sd15, rate: 2}\n"
    )
    result = recommend(reference_url, "--scenario", str(tmp_path / "fleet.yaml"), "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    check_contract_3(plan)
    assert [w["name"] for w in plan["workloads"]] == ["sdxl-prod", "sd15-batch"]
    assert "lab-gpu-48g" in plan["gpus"]  # measured at $0.90/h: cheaper than any H100 per image
    sdxl = plan["workloads"][0]
    assert all(g["recipes"].get("denoiser", "bf16") in ("bf16", "fp8-compile") for g in sdxl["groups"])
    lab_cells = [c for g in sdxl["groups"] if g["family"] == "lab-gpu-48g" for c in g["cells"]]
    assert lab_cells
    assert {c["source"] for c in lab_cells} == {"measured"}
    assert plan["gpus"].get("h100-sxm-80gb", 0) <= 16


def test_a_plan_is_held_to_the_simulated_batching_unless_the_scenario_says_bound_alone(
    reference_url: str, tmp_path: Path
) -> None:
    """SD 1.5 at 100 images/s within 4 s on H100s: the bound's plan (whole-UNet compile at batch 16, padded short
    batches) meets 4 s by the bound and misses it under simulation, so the plan holds the bound tighter and says
    what that cost; `simulated_p95_binds: false` in a scenario gives the bound's plan back, with the warning."""
    args = ("--model", "sd15", "--rate", "100", "--p95", "4", "--family", "h100-sxm-80gb", "--format")
    held = json.loads(recommend(reference_url, *args, "json").stdout)
    w = held["workloads"][0]
    assert w["p95_objective_s"] == 4
    assert w["predicted_p95_s"] <= w["bound_objective_s"] < 4
    assert w["simulated_p95_s"] <= 4
    (note,) = [x for x in held["warnings"] if "holds the analytic bound" in x]
    assert "against the objective 4 s" in note
    rows = list(csv.DictReader(io.StringIO(recommend(reference_url, *args, "csv").stdout)))
    assert float(rows[0]["bound_objective_s"]) == pytest.approx(w["bound_objective_s"], rel=1e-5)
    (tmp_path / "bound.yaml").write_text(
        "fleet: [{family: h100-sxm-80gb}]\n"
        "workloads: [{name: sd15, model: sd15, rate: 100, p95_latency_s: 4}]\n"
        "solver: {simulated_p95_binds: false}\n"
    )
    result = recommend(reference_url, "--scenario", str(tmp_path / "bound.yaml"), "--format", "json")
    assert result.returncode == 0, result.stderr
    bound = json.loads(result.stdout)
    b = bound["workloads"][0]
    assert b["bound_objective_s"] is None
    assert b["predicted_p95_s"] <= 4 < b["simulated_p95_s"]
    assert bound["total_cost_per_hour"] < held["total_cost_per_hour"]
    assert [x for x in bound["warnings"] if "Fix: ask for about" in x]


def test_the_scenarios_measurements_win_over_the_stores_for_their_cells(reference_url: str, tmp_path: Path) -> None:
    """Contract 2: a scenario's CSV is "used for this run". With the H100 SDXL cells at 10x latency in a
    contract-only CSV (no `measured_at`), the plan must use those, not the store's dated rows of the same cells."""
    from planner.crud.seed import REFERENCE_CSV

    contract = "gpu_family,model,stage,recipe,batch,height,width,latency_ms,latency_p95_ms,peak_mem_gib,power_w"
    fields = [*contract.split(","), "weights", "source"]
    with REFERENCE_CSV.open(newline="") as fh:
        rows = [
            {k: r[k] for k in fields}
            for r in csv.DictReader(fh)
            if r["gpu_family"] == "h100-sxm-80gb" and r["model"] == "sdxl" and r["status"] == "ok"
        ]
    for r in rows:
        r["latency_ms"] = str(float(r["latency_ms"]) * 10)
        r["latency_p95_ms"] = str(float(r["latency_p95_ms"]) * 10)
    (tmp_path / "sub").mkdir()
    with (tmp_path / "sub" / "slow.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    base = "fleet:\n  - {family: h100-sxm-80gb}\nworkloads:\n  - {name: a, model: sdxl, rate: 1}\n"
    (tmp_path / "store.yaml").write_text(base)
    (tmp_path / "slow.yaml").write_text(base + "measurements: sub/slow.csv\n")
    fast = recommend(reference_url, "--scenario", str(tmp_path / "store.yaml"), "--format", "json")
    slow = recommend(reference_url, "--scenario", str(tmp_path / "slow.yaml"), "--format", "json")
    assert fast.returncode == 0, fast.stderr
    assert slow.returncode == 0, slow.stderr
    fast_gpus = json.loads(fast.stdout)["gpus"]["h100-sxm-80gb"]
    slow_plan = json.loads(slow.stdout)
    # The store's rows carry their window spread (kept as headroom) and the contract-only CSV does not, so the
    # GPU count grows by less than 10x; the cells the plan used are the file's, at 10x the store's latency.
    assert slow_plan["gpus"]["h100-sxm-80gb"] >= 4 * fast_gpus
    by_cell = {(r["stage"], r["recipe"], int(r["batch"])): float(r["latency_ms"]) for r in rows}
    for g in slow_plan["workloads"][0]["groups"]:
        for c in g["cells"]:
            assert c["latency_ms"] == pytest.approx(by_cell[(c["stage"], c["recipe"], g["batch"])], rel=1e-4)


def test_a_low_rate_plan_carries_no_latency_that_costs_nothing_to_avoid(reference_url: str) -> None:
    """sd15 at 0.05 images/s fits one T4 at any batch: without a p95 objective the plan must still take the
    batch that answers in seconds (it used to keep batch 16, a 300 s batch timeout, at the same $0.53/h). No agent
    measured the T4: its estimates are allowed for this."""
    args = ("--model", "sd15", "--rate", "0.05", "--family", "t4-16gb", "--format", "json", "--allow-estimates")
    free = recommend(reference_url, *args)
    bound = recommend(reference_url, *args, "--p95", "20")
    assert free.returncode == 0, free.stderr
    assert bound.returncode == 0, bound.stderr
    free_plan, bound_plan = json.loads(free.stdout), json.loads(bound.stdout)
    assert free_plan["total_cost_per_hour"] == pytest.approx(bound_plan["total_cost_per_hour"])
    assert free_plan["workloads"][0]["predicted_p95_s"] <= 20
    assert {g["batch"] for g in free_plan["workloads"][0]["groups"]} == {1}


def test_no_cudnn_recipe_is_planned_on_an_amd_family(reference_url: str) -> None:
    """cuDNN attention exists only on NVIDIA: only the MI300X in the fleet, with the text encoder held to cuDNN
    attention, there is no plan (it used to plan bf16-sdpa-cudnn on mi300x-192gb from the H100's cells)."""
    args = (
        "--model", "qwen-image", "--rate", "0.3", "--p95", "60", "--headroom", "0", "--family", "mi300x-192gb",
        "--allow-estimates",
    )  # fmt: skip
    result = recommend(reference_url, *args, "--recipe", "te=bf16-sdpa-cudnn")
    assert result.returncode == 3, result.stdout
    assert "its [te] group has no cells" in " ".join(result.stderr.split())
    free = recommend(reference_url, *args, "--format", "json")
    assert free.returncode == 0, free.stderr
    recipes = {r for w in json.loads(free.stdout)["workloads"] for g in w["groups"] for r in g["recipes"].values()}
    assert not any("cudnn" in r for r in recipes)


def test_quality_floor_counts_real_weights_unless_asked(reference_url: str) -> None:
    """The shipped quality is measured on synthetic weights: a floor keeps only the stage's quality reference
    (fp32, exact) unless --synthetic-quality lets those measurements count; the plan names every recipe's source."""
    args = ("--model", "sdxl", "--rate", "10", "--family", "h100-sxm-80gb", "--quality", "ssim_image>=0.95")
    strict = recommend(reference_url, *args, "--format", "json")
    assert strict.returncode == 0, strict.stderr
    plan = json.loads(strict.stdout)
    recipes = {r for w in plan["workloads"] for g in w["groups"] for r in g["recipes"].values()}
    assert recipes == {"fp32"}
    judged = plan["quality"]
    assert {q["stage"] for q in judged} == {"text_encoder", "denoiser", "vae_decoder"}
    # No synthetic drift is used on the shipped data unless asked: every other recipe is unknown, and says why.
    assert {q["source"] for q in judged} == {"reference", "unknown"}
    for q in judged:
        assert (q["verdict"] == "allowed") == (q["recipe"] == "fp32"), q
        assert q["why"]
    bf16 = next(q for q in judged if q["recipe"] == "bf16" and q["stage"] == "denoiser")
    assert bf16["value"] is None
    assert "synthetic-weight drift" in bf16["detail"]
    table = recommend(reference_url, *args)
    assert "Quality floor: the source of every recipe's quality" in table.stdout
    assert "reference" in table.stdout
    assert "unknown" in table.stdout
    asked = recommend(reference_url, *args, "--synthetic-quality")
    assert asked.returncode == 0, asked.stderr
    assert "counts synthetic-weight measurements" in asked.stdout
    loose = json.loads(recommend(reference_url, *args, "--synthetic-quality", "--format", "json").stdout)
    assert "synthetic" in {q["source"] for q in loose["quality"]}  # labelled as what it is
    assert loose["total_cost_per_hour"] <= plan["total_cost_per_hour"]


# ---- errors a person can act on ---------------------------------------------------------------------


def test_unknown_model_lists_the_known_ones(reference_url: str) -> None:
    result = recommend(reference_url, "--model", "sdxxl", "--rate", "10")
    assert result.returncode == 2
    assert "--model 'sdxxl': unknown model" in result.stderr
    assert "sdxl" in result.stderr
    assert "flux-dev" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_rate_the_fleet_cannot_carry_says_what_would(reference_url: str) -> None:
    result = recommend(
        reference_url, "--model", "sdxl", "--rate", "100", "--family", "h100-sxm-80gb", "--available", "2"
    )
    assert result.returncode == 3
    err = result.stderr
    assert "no plan carries every workload" in err
    assert re.search(r"carry \d+% of sdxl's rate", err)
    assert re.search(r"the fleet has 2: add \d+", err)
    # The topology is printed as text, not swallowed as rich markup (which would eat "[te+dn]").
    assert re.search(r"sdxl alone: (\[(te|dn|vae)(\+(te|dn|vae))*\])+ on h100-sxm-80gb", err), err


def test_json_of_a_rate_the_fleet_cannot_carry_is_the_plan_object_with_why(reference_url: str) -> None:
    """A script reading stdout gets feasible false and the diagnosis, not an empty stdout; the exit code stays 3."""
    args = ("--model", "sdxl", "--rate", "100", "--family", "h100-sxm-80gb", "--available", "2", "--format", "json")
    result = recommend(reference_url, *args)
    assert result.returncode == 3
    plan = json.loads(result.stdout)
    assert list(plan) == PLAN_KEYS
    assert plan["feasible"] is False
    assert plan["total_cost_per_hour"] is None
    assert plan["workloads"] == []
    [why] = plan["infeasible"]
    assert why["workload"] == "sdxl"
    assert 0 < why["carried_fraction"] < 1
    assert "add" in why["suggestion"]
    assert "no plan carries every workload" in result.stderr


def test_a_latency_objective_no_option_meets_is_explained_truly_with_the_flag_used(reference_url: str) -> None:
    """The p95 named must be the blocking group's, and over that group's budget (it used to print the text
    encoder's 0.01 s against the whole 1 s objective); the fix names --p95, the flag given, not the scenario key."""
    result = recommend(reference_url, "-m", "sdxl", "-r", "1", "--p95", "1", "--family", "h100-sxm-80gb")
    assert result.returncode == 3, result.stderr
    err = " ".join(result.stderr.split())
    found = re.search(r"group has a p95 of ([\d.]+) s .*?latency budget \(([\d.]+) s", err)
    assert found, err
    assert float(found.group(1)) > float(found.group(2))
    assert "relax --p95" in err
    assert "p95_latency_s" not in err


def test_memory_no_family_has_is_explained_truly_with_the_scenario_key(reference_url: str, tmp_path: Path) -> None:
    """A 4 GiB fleet-only family: the GiB named must be the blocking group's need, more than the GPU has free
    (it used to print the text encoder's 1.6 GiB against 2.0 GiB), and the fix names the scenario's keys."""
    from planner.crud.seed import REFERENCE_CSV

    with REFERENCE_CSV.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r["gpu_family"] == "h100-sxm-80gb" and r["model"] == "sdxl"]
    for r in rows:
        r["gpu_family"] = "lab-gpu-48g"
    with (tmp_path / "lab.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "s.yaml").write_text(
        "fleet:\n  - {family: lab-gpu-48g, price_per_hour: 0.9, memory_gib: 4}\nmeasurements: lab.csv\n"
        "workloads:\n  - {name: a, model: sdxl, rate: 1}\n"
    )
    result = recommend(reference_url, "--scenario", str(tmp_path / "s.yaml"))
    assert result.returncode == 3, result.stderr
    err = " ".join(result.stderr.split())
    found = re.search(r"needs at least ([\d.]+) GiB, the largest allowed GPU has ([\d.]+) GiB", err)
    assert found, err
    assert float(found.group(1)) > float(found.group(2))
    assert "memory_gib" in err
    assert "--family" not in err


def test_an_unmeasured_size_is_planned_from_the_measured_one_and_says_so(reference_url: str) -> None:
    """1000x1000 SDXL: the text encoder's cells serve any size as they are, the denoiser's and the VAE's are
    scaled from 1024x1024 (it used to have no plan at all); the output's first line says what it rests on, and
    with scaling off in the model there would be no cells (tests/perf/test_perf_model.py)."""
    result = recommend(reference_url, "-m", "sdxl", "-r", "1", "--height", "1000", "--width", "1000")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("Evidence: the plan rests on measurements scaled to this image size")
    plan = json.loads(
        recommend(reference_url, "-m", "sdxl", "-r", "1", "--height", "1000", "--width", "1000", "-f", "json").stdout
    )
    cells = {c["stage"]: c["evidence"] for g in plan["workloads"][0]["groups"] for c in g["cells"]}
    assert cells["text_encoder"] == "measured"
    assert cells["denoiser"].startswith("scaled from 1024x1024")


def test_a_model_measured_nowhere_says_so_and_to_probe_it(reference_url: str) -> None:
    """sdxl-turbo is in the catalog but not in the shipped data: not a size problem ("measured sizes: none" and
    "use a measured size" misled), a model to probe."""
    result = recommend(reference_url, "-m", "sdxl-turbo", "-r", "1")
    assert result.returncode == 3, result.stdout
    err = " ".join(result.stderr.split())
    assert "no cells for stage text_encoder at any size (this model has not been measured)" in err
    assert "probe the model" in err
    assert "measured size" not in err


def test_a_bad_flag_value_names_the_flag(reference_url: str) -> None:
    result = recommend(reference_url, "-m", "sdxl", "-r", "1", "--name", "bad name!")
    assert result.returncode == 2
    assert "workloads.0.name" in result.stderr
    assert "--name" in result.stderr
    assert "stored values" not in result.stderr


def test_malformed_scenario_names_file_line_and_key(reference_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "fleet:\n  - {family: h100-sxm-80gb, price_per_hour: 4.18}\nworkloads:\n  - name: a\n    model: sdxl\n"
        "    rate: -1\n    ratee: 3\n"
    )
    result = recommend(reference_url, "--scenario", str(path))
    assert result.returncode == 2
    assert f"{path}:6: workloads[0].rate" in result.stderr
    assert f"{path}:7: workloads[0].ratee: unknown key" in result.stderr


def test_a_scenario_quality_floor_outside_the_metric_range_is_malformed(reference_url: str, tmp_path: Path) -> None:
    """`min: 95` (for 0.95) used to reach the solver and exit 3, 'no plan', as if the fleet were the problem."""
    path = tmp_path / "typo.yaml"
    path.write_text(
        "fleet:\n  - {family: h100-sxm-80gb, price_per_hour: 4.18}\nworkloads:\n  - name: a\n    model: sdxl\n"
        "    rate: 1\n    quality: {metric: ssim_image, min: 95}\n"
    )
    result = recommend(reference_url, "--scenario", str(path))
    assert result.returncode == 2, result.stderr
    assert f"{path}:7: workloads[0].quality.min: ssim_image lies in [-1, 1]" in result.stderr
    assert "no measurement can meet a floor of 95" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--rate", "10"), "give --model and --rate"),
        (("--model", "sdxl", "--rate", "0"), "--rate 0: must be positive"),
        (("--model", "sdxl", "--rate", "1", "--family", "h100-sxm-80gb", "--family", "l4-24gb", "--price", "3"),
         "--price was given 1 time(s) for 2 --family flag(s)"),
        (("--model", "sdxl", "--rate", "1", "--family", "nope-gpu"), "--family 'nope-gpu': unknown GPU family"),
        (("--model", "sdxl", "--rate", "1", "--what-if", "rate=fast"), "--what-if 'rate=fast'"),
        (("--model", "sdxl", "--rate", "1", "--quality", "ssim>0.9"), "--quality 'ssim>0.9'"),
        (("--model", "sdxl", "--rate", "1", "--quality", "ssim_image>=2"),
         "--quality 'ssim_image>=2': ssim_image lies in [-1, 1] (1 = identical to the reference recipe): no "
         "measurement can meet a floor of 2"),
        (("--model", "sdxl", "--rate", "1", "--quality", "ssim_image>=-3"), "every measurement meets a floor of -3"),
        (("--model", "sdxl", "--rate", "1", "--recipe", "unet=bf16"), "--recipe 'unet=bf16'"),
        (("--scenario", "x.yaml", "--rate", "1"), "--scenario and --rate both describe the workload"),
    ],
)  # fmt: skip
def test_bad_flags_name_the_flag(reference_url: str, args: tuple[str, ...], message: str) -> None:
    result = recommend(reference_url, *args)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr


def test_compare_refuses_a_file_that_is_not_a_plan(reference_url: str, tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_text('{"total_cost_per_hour": 3}')
    result = recommend(reference_url, "--model", "sdxl", "--rate", "1", "--compare", str(path))
    assert result.returncode == 2
    assert f"--compare {path}: not a plan" in result.stderr
    assert "gpus" in result.stderr


# ---- a fleet's store ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bogus://", "database URL 'bogus://': unknown backend 'bogus'"),
        ("notaurl", "database URL 'notaurl' is not a URL SQLAlchemy can read"),
        ("postgresql://me:secret@db:port/planner", "database URL 'postgresql://me:***@db:port/planner' is not a URL"),
    ],
)
def test_a_bad_database_url_is_named_without_a_traceback(url: str, message: str) -> None:
    proc = run_cli("planner", "recommend", "--model", "sdxl", "--rate", "1", "--database-url", url)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "--database-url (or PLANNER_DATABASE_URL)" in proc.stderr
    assert "secret" not in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [("recommend", "--model", "sdxl", "--rate", "1"), ("db", "upgrade")])
def test_a_sqlite_file_in_a_missing_directory_is_refused_not_created(tmp_path: Path, command: tuple[str, ...]) -> None:
    """A typed path whose directory is missing is most likely a typo: name it rather than create it."""
    missing = tmp_path / "no" / "such"
    result = invoke(*command, "--database-url", f"sqlite:///{missing / 'a.db'}")
    assert result.returncode == 2, result.stderr
    assert f"the directory {missing} does not exist; create it (mkdir -p {missing})" in result.stderr
    assert not (tmp_path / "no").exists()


def test_database_url_reads_a_migrated_store(empty_db_url: str) -> None:
    """`planner db upgrade` migrates a fresh database and seeds the reference data; recommend reads it."""
    upgraded = invoke("db", "upgrade", "--database-url", empty_db_url)
    assert upgraded.returncode == 0, upgraded.stderr
    result = recommend(empty_db_url, "--model", "sdxl", "--rate", "10", "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    check_contract_3(plan)
    assert plan["workloads"][0]["groups"][0]["cells"][0]["basis"]
    table = recommend(empty_db_url, "--model", "sdxl", "--rate", "10")
    assert "measured on: h100-sxm-80gb" in table.stdout
