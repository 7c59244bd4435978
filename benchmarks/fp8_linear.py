"""Why is torchao's fp8 faster than the agent's? One Linear layer at a time, on Flux-dev's shapes, on one GPU.

benchmarks/quant_backends.py found torchao's fp8-compile Flux step faster than the agent's layers on an H100
(docs/benchmarks.md). Both quantize activations per row and call `torch._scaled_mm`; torchao
differs in asking cuBLASLt for fast accumulation (its inference default) and in passing the bias to the GEMM.
This times each variant of one compiled Linear (activation quantization + GEMM + bias), for the transformer's
own shapes (hidden 3072, MLP 12288, the single blocks' fused 21504 and 15360) at the tokens of batch 1 and 8
(4096 image + 512 text tokens per image at 1024x1024), against bf16 measured in the same run:

- `bf16`: nn.Linear (the baseline);
- `agent`: `stagekit.quant.Fp8RowwiseLinear`, exact accumulation (what every shipped fp8 cell ran);
- `agent-fast-accum`: the same layer with `fast_accum=True`;
- `agent-fused-bias`, `agent-fast-accum-fused-bias`: with the bias passed to the GEMM (`fuse_bias=True`);
- `torchao`: torchao's Float8DynamicActivationFloat8WeightConfig(PerRow()), when torchao is installed.

Each variant is compiled alone (`torch.compile`, default mode), warmed up, then timed with CUDA events as the
median of 5 windows of 20 calls. Also printed: the largest error of each variant's output against the bf16
layer's, relative to that output's largest magnitude, on the same random input.

    PYTHONPATH=. python3 benchmarks/fp8_linear.py [--batches 1,8] [--step-model flux-dev [--skip-layers]]

`--step-model` then times the model's whole denoiser step as the probe builds fp8-compile (synthetic weights,
regional compile, median of 3 windows of 3 calls), with the agent's layers as shipped and with both options.

Prints one row per (shape, variant) with ms, TFLOP/s and the ratio to bf16 and to `agent`, then the sum over
one Flux transformer's layers (19 double blocks, 38 single blocks) per variant; writes fp8-linear.json to
$OUT (or --out), with the machine.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.discover import package_version  # noqa: E402 - after the repository is on the path

TOKENS_PER_IMAGE = 4096 + 512
"""Flux-dev at 1024x1024: (1024/16)^2 image tokens plus 512 T5 tokens, one sequence per image (no CFG)."""

SHAPES: list[tuple[str, int, int, int]] = [
    # (where, in_features, out_features, layers of this shape in one transformer)
    ("double: q/k/v/out (x2 streams)", 3072, 3072, 19 * 8),
    ("double: mlp up (x2 streams)", 3072, 12288, 19 * 2),
    ("double: mlp down (x2 streams)", 12288, 3072, 19 * 2),
    ("single: qkv+mlp up (fused)", 3072, 21504, 38),
    ("single: attn+mlp out (fused)", 15360, 3072, 38),
]
VARIANTS = ("bf16", "agent", "agent-fast-accum", "agent-fused-bias", "agent-fast-accum-fused-bias", "torchao")


def build(variant: str, linear: Any) -> Any:
    """The layer of one variant, built from the same bf16 weights."""
    from stagekit.quant import Fp8RowwiseLinear

    if variant == "bf16":
        return linear
    if variant.startswith("agent"):
        return Fp8RowwiseLinear(linear, fast_accum="fast-accum" in variant, fuse_bias=variant.endswith("fused-bias"))
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    module = copy.deepcopy(linear)
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return module


def time_ms(fn: Callable[[], Any], *, calls: int = 20, windows: int = 5) -> float:
    """Median ms per call over `windows` windows of `calls` calls, after a warm-up (CUDA events)."""
    import torch

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(windows):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / calls)
    return float(statistics.median(per_call))


def machine() -> dict[str, Any]:
    from benchmarks.campaign import machine_record

    return machine_record("layers: random (normal, std 0.02), input normal std 1; steps: synthetic, the agent's build")


def run(batches: list[int], variants: list[str]) -> list[dict[str, Any]]:
    import torch

    torch.manual_seed(0)
    results: list[dict[str, Any]] = []
    for batch in batches:
        m = batch * TOKENS_PER_IMAGE
        for where, k, n, count in SHAPES:
            linear = torch.nn.Linear(k, n, bias=True, device="cuda", dtype=torch.bfloat16)
            torch.nn.init.normal_(linear.weight, std=0.02)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                reference = linear(x).float()
                for variant in variants:
                    torch._dynamo.reset()
                    layer = torch.compile(build(variant, linear))
                    out = layer(x).float()  # type: ignore[no-untyped-call]
                    err = ((out - reference).abs().max() / reference.abs().max()).item()
                    ms = time_ms(functools.partial(layer, x))
                    results.append(
                        {
                            "batch": batch,
                            "where": where,
                            "m": m,
                            "k": k,
                            "n": n,
                            "layers": count,
                            "variant": variant,
                            "ms": ms,
                            "tflops": 2 * m * k * n / ms / 1e9,
                            "max_rel_err_vs_bf16": err,
                        }
                    )
                    print(f"b{batch} {where:<32} {variant:<17} {ms:8.3f} ms  err {err:.2e}", flush=True)
            del linear, x, reference
    return results


STEP_VARIANTS = ("agent", "agent-fast-accum-fused-bias")


def time_steps(model: str, batches: list[int], variants: list[str]) -> list[dict[str, Any]]:
    """The whole denoiser step as the probe builds it for fp8-compile (synthetic weights, regional compile), with
    the agent's layers as shipped and with both GEMM options: does the layer-level gain hold for the model?"""
    import torch

    from benchmarks.denoiser_profile import build
    from stagekit.quant import Fp8RowwiseLinear

    rows: list[dict[str, Any]] = []
    for variant in variants:
        torch._dynamo.reset()
        fast = variant == "agent-fast-accum-fused-bias"
        prepared = build(model, "fp8-compile+fast-gemm" if fast else "fp8-compile", tiny=False)
        layers = [m for mod in prepared.modules.values() for m in mod.modules() if isinstance(m, Fp8RowwiseLinear)]
        prepared.apply_compile()
        for batch in batches:
            prepared.runner.prepare(batch)
            started = time.monotonic()
            prepared.runner.call()
            torch.cuda.synchronize()
            first_s = time.monotonic() - started
            ms = time_ms(prepared.runner.call, calls=3, windows=3)
            rows.append({"model": model, "batch": batch, "variant": variant, "layers": len(layers), "ms": ms})
            print(f"step {model} b{batch} {variant:<28} {ms:9.2f} ms  (first call {first_s:.1f} s)", flush=True)
        del prepared, layers
        torch.cuda.empty_cache()
    for batch in batches:
        by = {r["variant"]: r["ms"] for r in rows if r["batch"] == batch}
        if "agent" in by:
            text = ", ".join(f"{v} {t:.2f} ms ({t / by['agent']:.3f}x agent)" for v, t in by.items())
            print(f"step b{batch}: {text}")
    return rows


def report(results: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Per-shape ratios to bf16 and to `agent`, and each variant's sum over one transformer's layers."""
    ms = {(r["batch"], r["where"], r["variant"]): r["ms"] for r in results}
    print(f"\n{'batch':>5} {'layer':<32} {'variant':<17} {'ms':>8} {'TFLOP/s':>8} {'vs bf16':>8} {'vs agent':>9}")
    for r in results:
        base = ms[(r["batch"], r["where"], "bf16")] if "bf16" in variants else None
        ours = ms.get((r["batch"], r["where"], "agent"))
        r["vs_bf16"] = r["ms"] / base if base else None
        r["vs_agent"] = r["ms"] / ours if ours else None
        vs_b = f"{r['vs_bf16']:8.3f}" if r["vs_bf16"] else f"{'-':>8}"
        vs_a = f"{r['vs_agent']:9.3f}" if r["vs_agent"] else f"{'-':>9}"
        print(f"{r['batch']:>5} {r['where']:<32} {r['variant']:<17} {r['ms']:8.3f} {r['tflops']:8.1f} {vs_b} {vs_a}")
    totals: dict[str, dict[str, float]] = {}
    print("\nsum over one Flux-dev transformer's Linear layers (ms per step; attention and the rest not included):")
    for batch in sorted({r["batch"] for r in results}):
        row = {
            v: sum(r["ms"] * r["layers"] for r in results if r["batch"] == batch and r["variant"] == v)
            for v in variants
        }
        totals[str(batch)] = row
        ours = row.get("agent")
        text = ", ".join(f"{v} {t:.1f}" + (f" ({t / ours:.3f}x agent)" if ours else "") for v, t in row.items())
        print(f"  batch {batch}: {text}")
    return totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8", help="images per call, comma-separated")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--step-model", default="", help="also time this model's whole fp8-compile denoiser step")
    ap.add_argument("--skip-layers", action="store_true", help="only the whole step")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".device-out/fp8-linear")))
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU of compute capability 8.9 or later (fp8); run it on the device")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; use {', '.join(VARIANTS)}")
    if "torchao" in variants and package_version("torchao") is None:
        print("torchao is not installed: leaving its variant out", flush=True)
        variants.remove("torchao")
    info = machine()
    print(
        f"machine: {info['gpu_name']} ({info['gpu_uuid']}, driver {info['driver']}), torch {info['torch']}, "
        f"torchao {info['torchao']}"
    )
    batches = [int(b) for b in args.batches.split(",")]
    results = [] if args.skip_layers else run(batches, variants)
    totals = report(results, variants) if results else {}
    steps = time_steps(args.step_model, batches, list(STEP_VARIANTS)) if args.step_model else []
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": info,
        "tokens_per_image": TOKENS_PER_IMAGE,
        "results": results,
        "totals_ms": totals,
        "steps": steps,
    }
    (args.out / "fp8-linear.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
