"""benchmarks/transfer_validation.py runs on a measurements CSV or baseline JSON and prints its table."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from planner.measurements.csvio import write_rows
from tests.helpers import load_benchmark


def _script() -> ModuleType:
    return load_benchmark("transfer_validation")


BASELINE = {
    "rows": [
        {
            "model": "sdxl-unet",
            "dtype": "torch.float16",
            "B": 1,
            "step_ms": 92.6,
            "max": 94.3,
            "tflop_per_step": 13.52,
            "peak_mem_gb": 11.0,
        },
        {"model": "sdxl-unet", "dtype": "torch.bfloat16", "B": 1, "step_ms": 89.8, "tflop_per_step": 13.52},
        {"model": "vae-kl", "dtype": "bf16", "B": 1, "step_ms": 91.1, "tflop_per_step": 10.47},
        {"model": "flux-dev", "dtype": "bf16", "B": 1, "step_ms": 182.5, "tflop_per_step": 74.38},
    ],
    "fp8_and_compile": [{"model": "flux", "recipe": "bf16+compile", "B": 1, "step_ms": 133.2}],
}


def test_baseline_json_becomes_rows(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(BASELINE))
    rows = _script().baseline_rows(path)
    cells = {(r.model, r.stage, r.recipe, r.batch) for r in rows}
    assert ("sdxl", "denoiser", "fp16", 1) in cells
    assert ("flux-dev", "vae_decoder", "bf16", 1) in cells
    assert ("flux-dev", "denoiser", "bf16-compile", 1) in cells
    fp16 = next(r for r in rows if r.recipe == "fp16")
    assert fp16.latency_p95_ms == pytest.approx(94.3)
    assert all(r.gpu_family == "h100-sxm-80gb" and r.weights == "synthetic" for r in rows)


def test_prints_a_markdown_table_from_a_measurements_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = _script()
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(BASELINE))
    csv_path = tmp_path / "m.csv"
    with csv_path.open("w", newline="") as fh:
        write_rows(module.baseline_rows(baseline), fh)
    assert module.main(["--measurements", str(csv_path), "--overhead", "fixed"]) == 0
    out = capsys.readouterr().out
    assert "| workload | family | published (ms) |" in out
    assert "a100-80gb" in out
    assert "transferred" in out
    assert "mean |error|" in out


def test_every_cross_family_ratio_is_inside_the_uncertainty_fitted_to_it(capsys: pytest.CaptureFixture[str]) -> None:
    """On the shipped measurements, every same-source published pair and every measured family predicted from the
    H100 alone gives a ratio inside the uncertainty the model attaches; and the transfer's distance slope is the
    fit to those errors (slope and floor each at least what the errors call for, less than 0.01 above it)."""
    from planner.catalog import loader
    from planner.measurements.csvio import read_csv
    from planner.perf import PerfModel
    from planner.perf.roofline import TRANSFER_DISTANCE_UNCERTAINTY, TRANSFER_MIN_UNCERTAINTY

    module = _script()
    rows = [located.row for located in read_csv(Path("planner/reference/measurements.csv"))]
    families = dict(loader.gpu_families())
    perf = PerfModel(rows, families=families, models=dict(loader.models()), recipes=dict(loader.recipes()))
    checks = module.ratio_checks(perf, rows, families)
    pairs = {(c.label, c.slow, c.fast) for c in checks}
    expected_published = sum(len(p.ms) * (len(p.ms) - 1) // 2 for p in module.SAME_SOURCE)
    assert sum(c.kind == "published" for c in checks) == expected_published == len(pairs) - 2
    assert any(c.kind == "measured" and c.slow == "h200-141gb" for c in checks)
    assert [c for c in checks if not c.inside] == []
    fitted = module.fitted_distance_uncertainty(checks)
    assert fitted is not None
    assert fitted <= TRANSFER_DISTANCE_UNCERTAINTY < fitted + 0.01
    floor = module.fitted_min_uncertainty(checks)
    assert floor is not None
    assert floor <= TRANSFER_MIN_UNCERTAINTY < floor + 0.01
