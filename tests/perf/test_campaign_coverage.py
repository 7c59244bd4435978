"""benchmarks/campaign.py --coverage: which planned cells a measurements file lacks for one GPU family."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import REPO, load_benchmark

COLUMNS = ["gpu_family", "model", "stage", "recipe", "batch", "height", "width", "status"]


def _campaign() -> ModuleType:
    return load_benchmark("campaign")


def _sd15_steps(c: ModuleType) -> list[Any]:
    return [
        c.Step("3-attention-layout", "sd15", ("bf16-sdpa-flash", "bf16-fused-qkv"), (1, 2)),
        c.Step("4-vae", "sd15", ("bf16-tiny-vae",), (1, 4), ("vae_decoder",)),
    ]


def _write(path: Path, rows: list[tuple[str, str, str, str, int, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for family, model, stage, recipe, batch, status in rows:
            w.writerow([family, model, stage, recipe, batch, 512, 512, status])
    return path


def test_a_recipe_plans_cells_only_for_the_stages_it_applies_to() -> None:
    c = _campaign()
    cells = c.planned_cells(_sd15_steps(c))
    stages = {(recipe, stage) for _, stage, recipe, _, _, _ in cells}
    assert ("bf16-sdpa-flash", "text_encoder") in stages
    assert ("bf16-fused-qkv", "denoiser") in stages
    assert ("bf16-fused-qkv", "text_encoder") not in stages  # fusion has no text-encoder cell
    assert {stage for recipe, stage in stages if recipe == "bf16-tiny-vae"} == {"vae_decoder"}
    assert all((h, w) == (512, 512) for *_, h, w in cells)  # sd15's own size
    # flash: 3 stages x 2 batches; fused QKV: denoiser and VAE x 2; tiny VAE: 2 batches.
    assert len(cells) == 6 + 4 + 2
    assert cells[("sd15", "vae_decoder", "bf16-tiny-vae", 4, 512, 512)] == "4-vae"


def test_missing_cells_are_those_the_family_lacks_in_any_status(tmp_path: Path) -> None:
    c = _campaign()
    planned = c.planned_cells(_sd15_steps(c))
    csv_path = _write(
        tmp_path / "m.csv",
        [
            ("h100-sxm-80gb", "sd15", "vae_decoder", "bf16-tiny-vae", 1, "ok"),
            ("h100-sxm-80gb", "sd15", "vae_decoder", "bf16-sdpa-flash", 2, "unsupported"),
            ("h200-141gb", "sd15", "vae_decoder", "bf16-tiny-vae", 4, "ok"),  # another family's cell
            ("h100-sxm-80gb", "sd15", "vae_decoder", "bf16-tiny-vae", 16, "ok"),  # not in the plan
        ],
    )
    present, missing = c.coverage(planned, csv_path, "h100-sxm-80gb")
    assert present == {"ok": 1, "unsupported": 1}
    assert missing["4-vae"] == [("sd15", "vae_decoder", "bf16-tiny-vae", 4, 512, 512)]
    assert len(missing["3-attention-layout"]) == 12 - 2 - 1


def test_the_command_prints_the_count_and_the_missing_cells_without_a_gpu(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "m.csv", [("h100-sxm-80gb", "sd15", "text_encoder", "bf16", 1, "ok")])
    result = subprocess.run(
        [sys.executable, "benchmarks/campaign.py", "--models", "sd15", "--levels", "1", "--resume", str(csv_path),
         "--coverage", "h100-sxm-80gb"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"h100-sxm-80gb: 1 of 15 planned cells in {csv_path} (1 ok)" in result.stdout
    assert "missing, level 1-bf16: 14" in result.stdout
    assert "sd15             text_encoder bf16                   batches 2,4,8,16" in result.stdout


def test_the_lever_level_compiles_unets_whole_at_the_latency_and_throughput_points_only() -> None:
    """A whole-UNet compile costs 50-170 s per batch size on an H100, so --all-batches widens every step but those
    to batches 1-16; the UNets get the whole-compile recipes, the DiTs the regional fast-GEMM fp8."""
    c = _campaign()
    steps = c.plan(("sdxl", "flux-dev", "sd15"), compile_levels=True, variants=False, all_batches=True)
    levers = {s.model: (s.recipes, s.batches, s.stages) for s in steps if s.level == "8-levers"}
    assert levers == {
        "sdxl": (("bf16-compile-whole", "fp8-fast-compile-whole"), (1, 16), ("denoiser",)),
        "flux-dev": (("fp8-fast-compile",), c.BATCHES, ("denoiser",)),
        "sd15": (("bf16-compile-whole", "fp8-fast-compile-whole"), (1, 16), ("denoiser",)),
    }
    assert {s.batches for s in steps if s.widens} == {c.BATCHES}
    narrow = c.plan(("flux-dev",), compile_levels=True, variants=False)
    assert [s.batches for s in narrow if s.level == "8-levers"] == [(1, 16)]
    # A whole compile must not start with less than its compile time left in the call.
    assert min(s.reserve_s for s in steps if s.level == "8-levers" and "fp8-fast-compile-whole" in s.recipes) >= 170
    assert not [s for s in c.plan(("sdxl",), compile_levels=False, variants=False) if s.level == "8-levers"]


def test_a_redo_file_plans_its_familys_cells_in_order_and_each_needs_a_reason(tmp_path: Path) -> None:
    c = _campaign()
    redo = tmp_path / "redo.csv"
    redo.write_text(
        "gpu_family,model,stage,recipe,batch,why\n"
        "h100-sxm-80gb,sdxl,vae_decoder,bf16,4,outlier\n"
        "h200-141gb,sd15,denoiser,bf16,1,unstable\n"
        "h100-sxm-80gb,sd15,denoiser,bf16-compile-whole,8,compile_s\n"
        "h100-sxm-80gb,sdxl,vae_decoder,bf16,1,outlier\n",
        encoding="utf-8",
    )
    steps = c.redo_steps(redo, "h100-sxm-80gb")
    assert [(s.model, s.stages, s.recipes, s.batches) for s in steps] == [
        ("sdxl", ("vae_decoder",), ("bf16",), (1, 4)),
        ("sd15", ("denoiser",), ("bf16-compile-whole",), (8,)),
    ]
    assert steps[0].reserve_s == 0
    assert steps[1].reserve_s > 0  # a compile cell starts only with room for it
    redo.write_text("gpu_family,model,stage,recipe,batch,why\nh100-sxm-80gb,sdxl,vae_decoder,bf16,4, \n")
    with pytest.raises(SystemExit, match="needs a reason"):
        c.redo_steps(redo, "h100-sxm-80gb")


def test_the_shipped_redo_list_names_shipped_cells() -> None:
    """Every cell benchmarks/redo-2026-12-07.csv measures again is one the reference data holds for its family."""
    c = _campaign()
    with (REPO / "planner" / "reference" / "measurements.csv").open(newline="", encoding="utf-8") as fh:
        shipped = {(r["gpu_family"], r["model"], r["stage"], r["recipe"], int(r["batch"])) for r in csv.DictReader(fh)}
    path = REPO / "benchmarks" / "redo-2026-12-07.csv"
    for family in ("h100-sxm-80gb", "h200-141gb"):
        steps = c.redo_steps(path, family)
        assert steps
        cells = {(family, s.model, s.stages[0], s.recipes[0], b) for s in steps for b in s.batches}
        # Batches 2-8 of the whole-UNet recipes are new cells (compile_s at every batch a worker compiles).
        new = {cell for cell in cells if cell[3].endswith("compile-whole") and cell[4] in (2, 4, 8)}
        assert cells - new <= shipped
