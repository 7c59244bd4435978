"""benchmarks/quant_backends.py: one `agent probe` per quantization backend, under a time limit, and ratios."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.discover import package_version
from tests.helpers import REPO, load_benchmark


def _run(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/quant_backends.py", "--tiny", "--out", str(tmp_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )


def test_the_agent_backend_measures_the_bf16_baseline_and_records_why_fp8_cannot_run_on_a_cpu(
    tmp_path: Path,
) -> None:
    done = _run(tmp_path, "--backends", "agent", "--recipes", "fp8-compile")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "quant-backends.json").read_text())
    cells = {(c["recipe"], c["backend"]): c for c in summary["cells"]}
    assert set(cells) == {("bf16", "agent"), ("fp8-compile", "agent")}
    base = cells[("bf16", "agent")]
    assert base["status"] == "ok"
    assert base["latency_ms"] > 0
    assert base["vs_bf16"] == pytest.approx(1.0)
    assert cells[("fp8-compile", "agent")]["status"] == "unsupported"
    assert cells[("fp8-compile", "agent")]["note"].startswith("fp8 matmul needs an NVIDIA GPU")
    assert summary["ended"]["agent"].startswith("exit 0")
    assert (tmp_path / "quant-backends-agent.csv").exists()
    assert "bf16           agent" in done.stdout


def test_a_probe_past_its_time_limit_is_killed_and_reported_not_measured(tmp_path: Path) -> None:
    started = time.monotonic()
    done = _run(tmp_path, "--backends", "agent", "--timeout-s", "1")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    summary = json.loads((tmp_path / "quant-backends.json").read_text())
    assert summary["ended"]["agent"] == "timeout: killed after 1 s"
    assert all(c["status"] == "not measured (timeout: killed after 1 s)" for c in summary["cells"])
    assert all(c["latency_ms"] is None for c in summary["cells"])


def test_ratios_compare_each_backend_with_bf16_and_torchao_with_the_agents_layers() -> None:
    qb = load_benchmark("quant_backends")
    args = argparse.Namespace(recipes=["fp8-compile"])

    def row(recipe: str, ms: str, status: str = "ok") -> dict[str, str]:
        return {"recipe": recipe, "latency_ms": ms, "status": status, "error": "", "compile_s": ""}

    results = {
        "agent": ([row("bf16", "200"), row("fp8-compile", "100")], "exit 0 after 9 s"),
        "torchao": ([row("fp8-compile", "80")], "exit 0 after 99 s"),
    }
    lines = {(ln["recipe"], ln["backend"]): ln for ln in qb.summarize(args, results)}
    assert lines[("fp8-compile", "agent")]["vs_bf16"] == pytest.approx(0.5)
    assert lines[("fp8-compile", "agent")]["vs_agent_layers"] is None
    assert lines[("fp8-compile", "torchao")]["vs_bf16"] == pytest.approx(0.4)
    assert lines[("fp8-compile", "torchao")]["vs_agent_layers"] == pytest.approx(0.8)

    results["torchao"] = ([], "timeout: killed after 300 s")
    lines = {(ln["recipe"], ln["backend"]): ln for ln in qb.summarize(args, results)}
    assert lines[("fp8-compile", "torchao")]["status"] == "not measured (timeout: killed after 300 s)"
    assert lines[("fp8-compile", "torchao")]["vs_agent_layers"] is None


def test_an_unknown_backend_is_refused_with_the_ones_it_knows(tmp_path: Path) -> None:
    done = _run(tmp_path, "--backends", "tensorrt", timeout=60)
    assert done.returncode == 2
    assert "unknown backend(s) ['tensorrt']; use agent, torchao" in done.stderr


def test_asking_for_torchao_where_it_is_not_installed_says_how_to_get_it(tmp_path: Path) -> None:
    if package_version("torchao") is not None:
        pytest.skip("torchao is installed here: the refusal cannot happen")
    done = _run(tmp_path, "--backends", "torchao", timeout=60)
    assert done.returncode == 2
    assert "torchao is not installed here: install its wheel first" in done.stderr
