"""torchao against the agent's own fp8 layers, on one GPU, in one device call.

Why: the agent quantizes with its own layers (`stagekit/quant.py`, `torch._scaled_mm` plus per-row scaling;
docs/agent.md, "Why not torchao"). This answers whether a torchao release compiles on this stack within a time
limit, and how its timings compare with ours on the same cells (the runs: benchmarks/results/quant-backends/).

Each backend runs as its own `agent probe` process (the same sweep, timer and recipes a fleet's agent runs;
`--quant-backend agent|torchao`) on one model's denoiser at one batch, under a wall-clock limit: a compile
that does not finish is killed with its process group and reported as `timeout` after N s, the cells it
finished before stay. The baseline, bf16 eager, is measured in the agent's process of the same call, so
every ratio compares two numbers from one machine in one clock state.

    PYTHONPATH=. python3 benchmarks/quant_backends.py [--model flux-dev] [--batch 1] [--timeout-s 300]

Prints one row per (recipe, backend): ms per call, compile seconds, ratio to bf16 and to the agent's layers,
and the machine (GPU, driver, torch, torchao); writes quant-backends.json and each backend's CSV to $OUT
(or --out). Not part of the shipped reference data: the campaign's fp8 cells are the agent's layers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.discover import package_version  # noqa: E402 - after the repository is on the path

BACKENDS = ("agent", "torchao")
Row = dict[str, str]


def probe_command(args: argparse.Namespace, backend: str, csv_path: Path) -> list[str]:
    """The `agent probe` a fleet's agent would run, with this backend; bf16 (the baseline) in the agent's run."""
    recipes = (["bf16"] if backend == "agent" else []) + list(args.recipes)
    cmd = [sys.executable, "-m", "agent", "probe", "--model", args.model, "--stage", "denoiser"]
    for recipe in recipes:
        cmd += ["--recipe", recipe]
    # random weights of the model's shapes, said explicitly (timing only: the machine_record says so too)
    cmd += ["--batch", str(args.batch), "--quant-backend", backend, "--output", str(csv_path), "--no-quality"]
    cmd += ["--synthetic"]
    return cmd + (["--tiny"] if args.tiny else [])


def run_backend(args: argparse.Namespace, backend: str, out: Path) -> tuple[list[Row], str]:
    """Run one backend's probe under the time limit; its rows so far, and how the process ended."""
    csv_path = out / f"quant-backends-{backend}.csv"
    cmd = probe_command(args, backend, csv_path)
    print(f"[{backend}] {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=args.timeout_s)
        ended = f"exit {rc} after {time.monotonic() - started:.0f} s"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # inductor's compile workers live in the same group
        proc.wait()
        ended = f"timeout: killed after {args.timeout_s:.0f} s"
    print(f"[{backend}] {ended}", flush=True)
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    return rows, ended


def ms(row: Row | None) -> float | None:
    if row is None or row.get("status") != "ok" or not row.get("latency_ms"):
        return None
    return float(row["latency_ms"])


def summarize(args: argparse.Namespace, results: dict[str, tuple[list[Row], str]]) -> list[dict[str, Any]]:
    """One line per (recipe, backend) with ratios to bf16 and to the agent's layers (> 1: slower)."""
    by_key = {(b, r["recipe"]): r for b, (rows, _) in results.items() for r in rows}
    base = ms(by_key.get(("agent", "bf16")))
    lines: list[dict[str, Any]] = []
    for recipe in ["bf16", *args.recipes]:
        for backend in BACKENDS if recipe != "bf16" else ("agent",):
            if backend not in results:
                continue
            row = by_key.get((backend, recipe))
            t = ms(row)
            ours = ms(by_key.get(("agent", recipe)))
            # The probe's status, and its note apart: an ok cell may carry one (e.g. "unstable: spread ...").
            status = row["status"] if row is not None else f"not measured ({results[backend][1]})"
            note = (row.get("error") or "")[:160] if row is not None else ""
            lines.append(
                {
                    "recipe": recipe,
                    "backend": backend,
                    "status": status,
                    "note": note,
                    "latency_ms": t,
                    "compile_s": float(row["compile_s"]) if row and row.get("compile_s") else None,
                    "vs_bf16": t / base if t and base else None,
                    "vs_agent_layers": t / ours if t and ours and backend != "agent" else None,
                }
            )
    return lines


def machine() -> dict[str, Any]:
    from benchmarks.campaign import machine_record

    return machine_record("synthetic (random, built from the architecture configs)")


def fmt(x: float | None, spec: str) -> str:
    """`spec` with its width; a missing number is a right-aligned dash of that width."""
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="flux-dev")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--recipes", default="fp8,fp8-compile", help="comma-separated quantized recipes")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--timeout-s", type=float, default=300.0, help="wall-clock limit of each backend's probe")
    ap.add_argument("--tiny", action="store_true", help="tiny CPU configs: a dry run of the script, no GPU")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".device-out/quant-backends")))
    args = ap.parse_args(argv)
    args.recipes = [r for r in args.recipes.split(",") if r]
    backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        ap.error(f"unknown backend(s) {bad}; use {', '.join(BACKENDS)}")
    if "torchao" in backends and package_version("torchao") is None:
        ap.error("torchao is not installed here: install its wheel first (benchmarks/campaign.md says how)")
    args.out.mkdir(parents=True, exist_ok=True)

    results = {b: run_backend(args, b, args.out) for b in backends}
    lines = summarize(args, results)
    info = machine()
    print(
        f"\nmachine: {info['gpu_name']} ({info['gpu_uuid']}, driver {info['driver']}), torch {info['torch']}, "
        f"CUDA {info['cuda_runtime']}, "
        f"diffusers {info['diffusers']}, torchao {info['torchao']}; {args.model} denoiser batch {args.batch}"
    )
    print(f"{'recipe':<14} {'backend':<8} {'ms/call':>9} {'compile s':>9} {'vs bf16':>8} {'vs ours':>8}  status")
    for ln in lines:
        print(
            f"{ln['recipe']:<14} {ln['backend']:<8} {fmt(ln['latency_ms'], '9.2f')} {fmt(ln['compile_s'], '9.1f')} "
            f"{fmt(ln['vs_bf16'], '8.3f')} {fmt(ln['vs_agent_layers'], '8.3f')}  {ln['status']}"
            + (f": {ln['note']}" if ln["note"] else "")
        )
    summary = {
        "machine": info,
        "model": args.model,
        "stage": "denoiser",
        "batch": args.batch,
        "timeout_s": args.timeout_s,
        "ended": {b: e for b, (_, e) in results.items()},
        "cells": lines,
    }
    (args.out / "quant-backends.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
