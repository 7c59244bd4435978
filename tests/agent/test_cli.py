"""The agent's command line on a CPU-only machine: it says plainly that there is no GPU and still works."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.cli import app
from benchmarks import campaign
from planner.measurements.csvio import read_csv
from tests.helpers import run_cli

pytestmark = pytest.mark.slow

NO_GPU = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}


def test_discover_says_no_gpu() -> None:
    proc = run_cli("agent", "discover", env=NO_GPU)
    assert proc.returncode == 0, proc.stderr
    assert "No GPU found" in proc.stdout
    assert "CPU" in proc.stdout
    proc = run_cli("agent", "discover", "--json", env=NO_GPU)
    inv = json.loads(proc.stdout)
    assert inv["gpus"] == []
    assert "No GPU found" in inv["note"]
    assert inv["torch_version"]


def test_probe_on_the_cpu_writes_the_csv(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    args = [
        "probe",
        "--model",
        "flux-schnell",
        "--tiny",
        "--synthetic",
        "--stage",
        "denoiser",
        "-r",
        "bf16",
        "-r",
        "fp8",
        "-b",
        "1",
        "--height",
        "32",
        "--width",
        "32",
        "--output",
        str(out),
        "--no-quality",
    ]
    proc = run_cli("agent", *args, env=NO_GPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No GPU found" in proc.stdout
    assert "Probing on the CPU" in proc.stdout
    rows = {r.row.recipe: r.row for r in read_csv(out)}
    assert rows["bf16"].status == "ok"
    assert rows["bf16"].latency_ms
    assert rows["fp8"].status == "unsupported"
    # Run again (in this process: the subprocess path is proven above): nothing is measured twice.
    again = CliRunner().invoke(app, [*args, "--cpu"])
    assert again.exit_code == 0, again.output
    assert "2 already done" in " ".join(again.output.split())
    assert len(read_csv(out)) == 2


def test_probe_refuses_an_unknown_recipe() -> None:
    proc = run_cli("agent", "probe", "--model", "sd15", "-r", "bf17", env=NO_GPU)
    assert proc.returncode == 2
    assert "unknown recipe" in proc.stderr


def test_campaign_dry_run_on_tiny_models(tmp_path: Path) -> None:
    """The GPU campaign script, run on the tiny configs on the CPU (in process: it is the same code)."""
    out = tmp_path / "campaign"
    common = [
        "--tiny",
        "--models",
        "flux-schnell",
        "--levels",
        "1",
        "--height",
        "32",
        "--width",
        "32",
        "--no-quality",
        "--budget-s",
        "60",
    ]
    assert campaign.main([*common, "--out", str(out)]) == 0
    rows = [r.row for r in read_csv(out / "measurements.csv")]
    assert {(r.stage, r.batch) for r in rows} == {
        (s, b) for s in ("text_encoder", "denoiser", "vae_decoder") for b in (1, 2)
    }
    assert all(r.status == "ok" and r.recipe == "bf16" for r in rows)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["torch"]
    assert prov["weights"] == "synthetic"
    assert len(prov["calls"]) == 1
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["bf16_tflops"] > 0
    # A second call resumes from the first one's CSV: nothing is re-measured, provenance gains a call.
    second = tmp_path / "second"
    assert (
        campaign.main(
            [
                *common,
                "--out",
                str(second),
                "--resume",
                str(out / "measurements.csv"),
                "--calibration",
                str(out / "calibration.json"),
            ]
        )
        == 0
    )
    assert len(read_csv(second / "measurements.csv")) == len(rows)
    calls = json.loads((second / "provenance.json").read_text())["calls"]
    assert len(calls) == 2
    assert calls[-1]["new_rows"] == 0


class _Killed(BaseException):
    """Stands for the device's time limit killing the call mid-group."""


def test_a_campaign_killed_mid_group_leaves_provenance_that_counts_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """campaign_call.sh copies the state out every 10 s; what it copies must agree: CSV rows and provenance."""
    from agent.report import CsvSink

    real_call = CsvSink.__call__
    written: list[int] = []

    def dies_on_the_fourth_row(self: CsvSink, row: Any) -> None:
        if len(written) == 3:
            raise _Killed
        real_call(self, row)
        written.append(1)

    monkeypatch.setattr(CsvSink, "__call__", dies_on_the_fourth_row)
    out = tmp_path / "killed"
    args = ["--tiny", "--models", "flux-schnell", "--levels", "1", "--height", "32", "--width", "32"]
    with pytest.raises(_Killed):
        campaign.main([*args, "--no-quality", "--budget-s", "60", "--out", str(out)])
    rows = read_csv(out / "measurements.csv")
    call = json.loads((out / "provenance.json").read_text())["calls"][-1]
    assert len(rows) == 3
    assert call["new_rows"] == 3
    assert call["finished"] is False
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no half-written temporary left


def test_campaign_plan_is_in_priority_order() -> None:
    steps = campaign.plan(("sdxl", "flux-dev"), compile_levels=True, variants=True)
    levels = [int(s.level.split("-")[0]) for s in steps]
    assert levels == sorted(levels)  # a budget cut drops whole later levels first
    assert steps[0].recipes == ("bf16",)
    assert steps[0].batches == (1, 2, 4, 8, 16)
    fp32 = [s for s in steps if s.recipes == ("fp32",)]
    assert fp32
    assert all(s.batches == (1, 2) for s in fp32)
    assert any("fp8-compile" in s.recipes for s in steps)


def test_campaign_all_batches_widens_every_step_and_keeps_the_order() -> None:
    narrow = campaign.plan(("sdxl",), compile_levels=True, variants=True)
    wide = campaign.plan(("sdxl",), compile_levels=True, variants=True, all_batches=True)
    assert [(s.level, s.model, s.recipes, s.stages) for s in wide] == [
        (s.level, s.model, s.recipes, s.stages) for s in narrow
    ]
    # Every step but the whole-UNet compiles (a compile per batch size: 1 and 16 only, tests/perf).
    assert all(s.batches == (1, 2, 4, 8, 16) for s in wide if s.widens)
    assert [s.recipes for s in wide if not s.widens] == [("bf16-compile-whole", "fp8-fast-compile-whole")]
    assert any(s.batches != (1, 2, 4, 8, 16) for s in narrow)
