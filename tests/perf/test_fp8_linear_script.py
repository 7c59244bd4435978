"""benchmarks/fp8_linear.py: per-layer ratios, the per-transformer sums, and its refusal without a GPU."""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark, run_benchmark


def test_report_divides_by_the_same_shapes_baselines_and_weights_sums_by_layer_count() -> None:
    fl = load_benchmark("fp8_linear")
    results = [
        {"batch": 1, "where": "a", "variant": "bf16", "ms": 2.0, "tflops": 1.0, "layers": 10},
        {"batch": 1, "where": "a", "variant": "agent", "ms": 1.0, "tflops": 2.0, "layers": 10},
        {"batch": 1, "where": "a", "variant": "torchao", "ms": 0.8, "tflops": 2.5, "layers": 10},
        {"batch": 1, "where": "b", "variant": "bf16", "ms": 4.0, "tflops": 1.0, "layers": 1},
        {"batch": 1, "where": "b", "variant": "agent", "ms": 3.0, "tflops": 1.3, "layers": 1},
        {"batch": 1, "where": "b", "variant": "torchao", "ms": 3.0, "tflops": 1.3, "layers": 1},
    ]
    totals = fl.report(results, ["bf16", "agent", "torchao"])
    torchao_a = results[2]
    assert torchao_a["vs_bf16"] == pytest.approx(0.4)
    assert torchao_a["vs_agent"] == pytest.approx(0.8)
    assert totals["1"] == pytest.approx({"bf16": 24.0, "agent": 13.0, "torchao": 11.0})


def test_without_a_gpu_it_says_where_to_run_it() -> None:
    done = run_benchmark("fp8_linear")
    assert done.returncode == 2
    assert "needs a CUDA GPU of compute capability 8.9 or later (fp8); run it on the device" in done.stderr
