"""How the solver scales: 10, 100 and 1,000 workloads over 10 GPU families and a full recipe x batch grid.

Usage:  PYTHONPATH=. python benchmarks/solver_scale.py [--sizes 100 1000] [--seed 0] [--core-only] [--verbose]

The cells are synthetic, generated here from a roofline formula with noise (they exercise the solver, they are
not performance data): 8 models of three stages, 3 resolutions, recipes {bf16, fp16, bf16-compile, fp8,
fp8-compile, int8-compile} for the denoiser, {bf16, fp8} for the text encoder, {bf16, tiny, tiled} for the
VAE, batches {1, 2, 4, 8, 16}. Half the families are measured; the other half get every cell by roofline
transfer, as a real store would. Workloads draw 1-2 acceptable models, a resolution, a rate from 0.02 to 20
images/s (log-uniform), a p95 objective (or none), headroom 0.1-0.3; three families have availability limits.

Prints, per size, `solve()` with every default on (the scheduler-simulation hold, baselines, sensitivity, the
lower bound), each phase's wall time (from the solver's progress lines), the plan's cost, its lower bound and gap,
the least saving against a baseline (never negative), the load average before the run (other processes share
the CPUs), and the ratio to the aims (1,000 workloads < 10 s, 10,000 < 60 s, gap < 0.1%). `--core-only` adds a
row per size with baselines and sensitivity off, as the aims were timed before.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.catalog.schema import Component, GpuFamily, ModelSpec, Recipe, StageSpec
from planner.measurements.contract import MeasurementRow
from planner.perf import PerfModel
from planner.solver import FleetFamily, Problem, SolverOptions, Workload, solve

AIMS = {1000: 10.0, 10000: 60.0}
GAP_AIM = 1e-3
RESOLUTIONS = ((512, 512), (768, 768), (1024, 1024))
BATCHES = (1, 2, 4, 8, 16)
STAGE_RECIPES = {
    "text_encoder": ("bf16", "fp8"),
    "denoiser": ("bf16", "fp16", "bf16-compile", "fp8", "fp8-compile", "int8-compile"),
    "vae_decoder": ("bf16", "bf16-tiny-vae", "bf16-tiled-vae"),
}
RECIPE_SPEED = {
    "bf16": 1.0,
    "fp16": 1.0,
    "bf16-compile": 0.75,
    "fp8": 0.85,
    "fp8-compile": 0.6,
    "int8-compile": 0.65,
    "bf16-tiny-vae": 0.1,
    "bf16-tiled-vae": 1.2,
}


def families() -> list[GpuFamily]:
    specs = [
        ("syn-h200", 141, 4.8, 989, 1979, 700, 5.6),
        ("syn-h100", 80, 3.35, 989, 1979, 700, 4.2),
        ("syn-a100-80", 80, 2.04, 312, None, 400, 2.7),
        ("syn-a100-40", 40, 1.56, 312, None, 400, 2.0),
        ("syn-l40s", 48, 0.86, 362, 733, 350, 1.9),
        ("syn-l4", 24, 0.30, 121, 242, 72, 0.7),
        ("syn-a10", 24, 0.60, 125, None, 150, 1.0),
        ("syn-b200", 180, 8.0, 2250, 4500, 1000, 8.6),
        ("syn-mi300x", 192, 5.3, 1307, 2615, 750, 3.0),
        ("syn-rtx6000", 48, 0.96, 364, 728, 300, 1.6),
    ]
    out = []
    for fid, mem, bw, bf16, fp8, tdp, price in specs:
        tflops: dict[str, float] = {"bf16": bf16, "fp16": bf16, "int8": bf16 * 2}
        if fp8:
            tflops["fp8"] = fp8
        out.append(
            GpuFamily.model_validate(
                {
                    "id": fid,
                    "name": fid,
                    "vendor": "other",
                    "memory_gib": mem,
                    "memory_bandwidth_tbps": bw,
                    "tflops": tflops,
                    "tdp_w": tdp,
                    "prices": [
                        {
                            "price_per_hour": price,
                            "provider": "synthetic",
                            "offering": "on-demand",
                            "source": "this script",
                            "as_of": "2026-01",
                            "status": "unverified",
                        }
                    ],
                }
            )
        )
    return out


def models() -> list[ModelSpec]:
    # (id, arch, steps, cfg, te TF, dn TF, vae TF, te params, dn params)
    specs = [
        ("syn-sd15", "sd", 30, True, 0.013, 0.8, 2.5, 123e6, 860e6),
        ("syn-sdxl", "sdxl", 30, True, 0.11, 6.8, 10.5, 818e6, 2.57e9),
        ("syn-sdxl-light", "sdxl", 4, False, 0.11, 6.8, 10.5, 818e6, 2.57e9),
        ("syn-flux-dev", "flux", 28, False, 4.85, 74.4, 10.5, 4.9e9, 11.9e9),
        ("syn-flux-schnell", "flux", 4, False, 4.85, 74.4, 10.5, 4.9e9, 11.9e9),
        ("syn-qwen", "qwen-image", 50, True, 8.0, 70.6, 10.5, 8.3e9, 20.4e9),
        ("syn-qwen-light", "qwen-image", 8, False, 8.0, 70.6, 10.5, 8.3e9, 20.4e9),
        ("syn-zimage", "z-image", 8, False, 4.0, 56.6, 10.5, 4.0e9, 6.15e9),
    ]
    out = []
    for mid, arch, steps, cfg, te, dn, vae, te_p, dn_p in specs:

        def comp(name: str, params: float) -> Component:
            return Component(
                name=name,
                library="diffusers",
                class_name="X",
                config="x",
                tiny_config="x",
                params=int(params),
            )

        out.append(
            ModelSpec(
                id=mid,
                name=mid,
                architecture=arch,
                default_steps=steps,
                height=1024,
                width=1024,  # type: ignore[arg-type]
                guidance_scale=5.0 if cfg else 0.0,
                cfg=cfg,
                text_tokens=77,
                latent_channels=4,
                stages=[
                    StageSpec(name="text_encoder", components=[comp("te", te_p)], tflops_per_call=te),
                    StageSpec(name="denoiser", components=[comp("dn", dn_p)], tflops_per_call=dn),
                    StageSpec(name="vae_decoder", components=[comp("vae", 84e6)], tflops_per_call=vae),
                ],
            )
        )
    return out


def recipes() -> dict[str, Recipe]:
    def r(rid: str, precision: str, **kw: Any) -> Recipe:
        return Recipe.model_validate(
            {"id": rid, "stages": ["text_encoder", "denoiser", "vae_decoder"], "precision": precision, **kw}
        )

    return {
        x.id: x
        for x in (
            r("bf16", "bf16", reference=True),
            r("fp16", "fp16"),
            r("bf16-compile", "bf16", compile="max-autotune"),
            r("fp8", "fp8", quantization="fp8-rowwise"),
            r("fp8-compile", "fp8", quantization="fp8-rowwise", compile="max-autotune"),
            r("int8-compile", "int8", quantization="int8-dynamic", compile="max-autotune"),
            r("bf16-tiny-vae", "bf16", vae="tiny"),
            r("bf16-tiled-vae", "bf16", vae="tiled"),
        )
    }


def synthetic_rows(
    fams: list[GpuFamily], mdls: list[ModelSpec], rcps: dict[str, Recipe], rng: random.Random
) -> list[MeasurementRow]:
    from planner.perf.roofline import compute_precision, flops_per_call, weight_gib

    rows = []
    measured = fams[::2]
    for fam in measured:
        for m in mdls:
            for h, w in RESOLUTIONS:
                for stage, names in STAGE_RECIPES.items():
                    for rid in names:
                        precision = compute_precision(rid, rcps[rid]) or "bf16"
                        peak = fam.peak_tflops(precision)
                        if peak is None:
                            continue
                        for b in BATCHES:
                            tf = flops_per_call(m, stage, b, h, w) or 0.0
                            wgt = weight_gib(m, stage, rid, rcps[rid]) or 0.0
                            t = tf / (peak * 0.45) * 1e3 + wgt * 2**30 / (fam.memory_bandwidth_tbps * 1e12) * 1e3 + 3.0
                            t *= RECIPE_SPEED.get(rid, 1.0) * rng.uniform(0.95, 1.05)
                            mem = wgt + 0.4 * b * (h * w) / 1024**2 * (2.5 if stage == "vae_decoder" else 1.0)
                            if mem > fam.memory_gib:
                                continue
                            rows.append(
                                MeasurementRow(
                                    gpu_family=fam.id,
                                    model=m.id,
                                    stage=stage,
                                    recipe=rid,
                                    batch=b,
                                    height=h,
                                    width=w,  # type: ignore[arg-type]
                                    latency_ms=t,
                                    latency_p95_ms=t * 1.05,
                                    peak_mem_gib=mem,
                                    weights="synthetic",
                                    source="measured",
                                    tflops_per_call=tf,
                                )
                            )
    return rows


def workloads(n: int, mdls: list[ModelSpec], rng: random.Random) -> list[Workload]:
    out = []
    pairs = [
        ("syn-sdxl", "syn-sdxl-light"),
        ("syn-flux-dev", "syn-flux-schnell"),
        ("syn-qwen", "syn-qwen-light"),
    ]
    by_id = {m.id: m for m in mdls}
    for i in range(n):
        names = rng.choice(pairs) if rng.random() < 0.3 else (rng.choice(mdls).id,)
        h, w = rng.choice(RESOLUTIONS)
        rate = 10 ** rng.uniform(-1.7, 1.3)
        p95 = rng.choice([None, 10.0, 30.0, 60.0, 120.0])
        out.append(
            Workload(
                name=f"w{i}",
                models=names,
                rate=rate,
                steps={m: by_id[m].default_steps for m in names},
                resolution=dict.fromkeys(names, (h, w)),
                headroom=rng.uniform(0.1, 0.3),
                p95_latency_s=p95,
            )
        )
    return out


def build(n: int, seed: int, *, verbose: bool) -> Problem:
    rng = random.Random(seed)
    fams, mdls, rcps = families(), models(), recipes()
    rows = synthetic_rows(fams, mdls, rcps, rng)
    perf = PerfModel(rows, families={f.id: f for f in fams}, models={m.id: m for m in mdls}, recipes=rcps)
    fleet = {}
    for k, f in enumerate(fams):
        price = f.prices[0].price_per_hour
        available = None if k % 3 else max(4, n // 2)
        fleet[f.id] = FleetFamily(id=f.id, price_per_hour=price, memory_gib=f.memory_gib, available=available, spec=f)
    opts = SolverOptions(
        baselines=False,
        sensitivity=False,
        verbose=verbose,
        time_limit_s=120,
        progress=(lambda msg: print(f"    .. {msg}", flush=True)) if n >= 1000 else None,
    )
    return Problem(
        families=fleet,
        perf=perf,
        workloads=workloads(n, mdls, rng),
        models={m.id: m for m in mdls},
        recipes=rcps,
        options=opts,
    )


PHASES = ("solve", "simulate", "hold", "exact packing", "baselines", "bound", "sensitivity")
"""Sections of `solve()` told apart by its progress lines (planner.solver.engine)."""
SECTION_OF = {
    "simulating": "simulate",
    "holding": "hold",
    "packing": "exact packing",
    "baselines": "baselines",
    "lower bound": "bound",
    "sensitivity": "sensitivity",
}


class PhaseClock:
    """Wall time per section of one `solve()`, from its progress lines (each line starts a section or stays in
    the current one); `--verbose` echoes them."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.section = "solve"
        self.times: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.mark = time.perf_counter()

    def __call__(self, message: str) -> None:
        now = time.perf_counter()
        self.times[self.section] += now - self.mark
        self.mark = now
        for prefix, section in SECTION_OF.items():
            if message.startswith(prefix) and not (section == "exact packing" and self.section != "solve"):
                self.section = section
                break
        if self.echo:
            print(f"    .. [{self.section}] {message}", flush=True)

    def stop(self) -> None:
        self.times[self.section] += time.perf_counter() - self.mark


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def run_one(n: int, seed: int, *, defaults: bool, verbose: bool) -> str:
    """One row of the table: `solve()` on the n-workload scenario, every phase timed."""
    problem = build(n, seed, verbose=False)
    clock = PhaseClock(verbose)
    opts = SolverOptions(progress=clock) if defaults else replace(problem.options, progress=clock)
    problem = replace(problem, options=opts)
    load = _load()
    started = time.perf_counter()
    cpu_started = time.process_time()
    plan = solve(problem)
    clock.stop()
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    stats = plan.stats
    assert stats is not None
    aim = AIMS.get(n)
    gap = f"{stats.mip_gap:.3%}" if stats.mip_gap == stats.mip_gap else "unknown"
    lower = getattr(stats, "lower_bound", math.nan)  # absent before the bound existed (timing an older checkout)
    bound = f"{lower:.2f}" if lower == lower else "-"
    cost = f"{plan.total_cost_per_hour:.2f}" if plan.total_cost_per_hour is not None else "-"
    worst = min((b.saving for b in plan.baselines if b.saving is not None), default=None)
    phases = " | ".join(f"{clock.times[p]:.2f}" for p in PHASES)
    return (
        f"| {n} | {'on' if defaults else 'off'} | {stats.options} | {stats.variables} | {phases} | {total:.2f} | "
        f"{cpu:.2f} | {aim or '-'} | {f'{total / aim:.2f}' if aim else '-'} | {cost} | {bound} | {gap} | "
        f"{'-' if worst is None else f'{worst:.1%}'} | {load} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--core-only",
        action="store_true",
        help="also time each size with baselines and sensitivity off (the solve the aims used to time)",
    )
    parser.add_argument("--verbose", action="store_true", help="echo the solver's progress lines")
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.platform()}; python {platform.python_version()}; {os.cpu_count()} CPUs; "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        "| workloads | defaults | options | MILP vars | "
        + " | ".join(f"{p} (s)" for p in PHASES)
        + " | solve() wall (s) | CPU (s) | aim (s) | wall / aim | $/h | lower bound $/h | gap | least saving "
        "vs a baseline | load before |"
    )
    print("|" + "---|" * (13 + len(PHASES)))
    for n in args.sizes:
        if args.core_only:
            print(run_one(n, args.seed, defaults=False, verbose=args.verbose), flush=True)
        print(run_one(n, args.seed, defaults=True, verbose=args.verbose), flush=True)
    print(f"\ngap aim: < {GAP_AIM:.1%}; gap = (cost - lower bound) / cost, bound: planner.solver.milp.relaxation_bound")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
