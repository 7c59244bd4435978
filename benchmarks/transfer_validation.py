"""Check the roofline transfer against published latencies that nobody here tuned the model to.

Usage:
    PYTHONPATH=. python benchmarks/transfer_validation.py [--measurements FILE.csv]
                                                          [--overhead fixed|bandwidth|compute]

Source cells: the measurements CSV given (planner/reference/measurements.csv, the shipped data), else the
cells of ../shared/reference/h100-baseline.json converted to rows here (one H100 80GB HBM3, random weights,
torch 2.11, diffusers 0.42.1; CUDA-event medians, p95 taken as the run's max). The H100 cells are then
transferred to a10 / a100 / h100 / h200 by `planner.perf.PerfModel` and each pipeline latency is compared
with a published figure (../shared/reference/diffusion-facts.md):
  - SDXL 1024^2 30 steps, PyTorch baseline of the stabilityai TensorRT card (§5): A10 9399, A100 3704,
    H100 2496 ms;
  - SDXL on A100, diffusers fast_diffusion tutorial (§1): bf16 + SDPA 3.31 s (batch 1);
  - Flux-dev 1024^2 28 steps bf16: A100 13.843 s (§2c ParaAttention, steps unverified), H100 6.573 s (§2a).
A pipeline latency is steps x denoiser call + VAE decode; the text encoders are not in the baseline and are
left out (a few ms for SDXL's CLIPs, ~10 ms for Flux's T5 on an H100). The cross-family ratio column divides
by the same source's H100 figure, which removes the software-stack gap between that source and our H100 run.
Prints a markdown table to stdout (for docs/benchmarks.md) and the catalog fallbacks used to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.catalog import loader
from planner.measurements.contract import MeasurementRow
from planner.measurements.csvio import read_csv
from planner.perf import PerfModel, PerfSettings
from planner.perf.roofline import (
    TRANSFER_DISTANCE_UNCERTAINTY,
    TRANSFER_MIN_UNCERTAINTY,
    OverheadScaling,
    family_distance,
)

BASELINE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "h100-baseline.json"
H100 = "h100-sxm-80gb"
GIB = 2**30


def baseline_rows(path: Path) -> list[MeasurementRow]:
    """The h100-baseline.json cells as measurement rows (source: that file; weights synthetic)."""
    data = json.loads(path.read_text())
    rows: list[MeasurementRow] = []

    def add(model: str, stage: str, recipe: str, batch: int, ms: float, **extra: Any) -> None:
        rows.append(
            MeasurementRow(
                gpu_family=H100,
                model=model,
                stage=cast(Any, stage),
                recipe=recipe,
                batch=batch,
                height=1024,
                width=1024,
                latency_ms=ms,
                weights="synthetic",
                source="measured",
                host="h100-baseline.json",
                **extra,
            )
        )

    dtype_recipe = {
        "torch.float32": "fp32",
        "torch.float16": "fp16",
        "torch.bfloat16": "bf16",
        "bf16": "bf16",
    }
    for r in data["rows"]:
        kind, batch, ms = r["model"], int(r["B"]), float(r["step_ms"])
        p95 = max(ms, float(r.get("max", ms)))
        mem = r.get("peak_mem_gb")
        extra: dict[str, Any] = {"latency_p95_ms": p95}
        if mem is not None:
            extra["peak_mem_gib"] = mem * 1e9 / GIB
        if r.get("tflop_per_step") is not None:
            extra["tflops_per_call"] = float(r["tflop_per_step"])
        if kind == "sdxl-unet":
            add("sdxl", "denoiser", dtype_recipe[r["dtype"]], batch, ms, **extra)
        elif kind == "sdxl-unet-compiled":
            add("sdxl", "denoiser", "bf16-compile", batch, ms, **extra)
        elif kind == "vae-kl":
            # The Flux VAE decoder has the SDXL decoder's FLOPs (facts §6a); one timing serves both.
            add("sdxl", "vae_decoder", "bf16", batch, ms, **extra)
            add("flux-dev", "vae_decoder", "bf16", batch, ms, **extra)
        elif kind == "vae-tiny":
            add("sdxl", "vae_decoder", "bf16-tiny-vae", batch, ms, **extra)
        elif kind == "flux-dev":
            add("flux-dev", "denoiser", "bf16", batch, ms, **extra)
    for r in data.get("fp8_and_compile", []):
        recipe = {"bf16+compile": "bf16-compile", "fp8-rowwise eager": "fp8"}.get(r["recipe"])
        if recipe is not None:
            add(
                "flux-dev",
                "denoiser",
                recipe,
                int(r["B"]),
                float(r["step_ms"]),
                latency_p95_ms=float(r["step_ms"]),
            )
    return rows


@dataclass(frozen=True)
class Published:
    label: str
    model: str
    steps: int
    denoiser_recipe: str
    family: str
    ms: float
    source: str
    h100_same_source_ms: float | None = None


PUBLISHED: tuple[Published, ...] = (
    Published(
        "SDXL 30 steps, PyTorch baseline (fp16)",
        "sdxl",
        30,
        "fp16",
        "a10-24gb",
        9399,
        "facts §5 TRT card",
        2496,
    ),
    Published(
        "SDXL 30 steps, PyTorch baseline (fp16)",
        "sdxl",
        30,
        "fp16",
        "a100-80gb",
        3704,
        "facts §5 TRT card",
        2496,
    ),
    Published("SDXL 30 steps, PyTorch baseline (fp16)", "sdxl", 30, "fp16", H100, 2496, "facts §5 TRT card", 2496),
    Published("SDXL 30 steps, bf16 + SDPA", "sdxl", 30, "bf16", "a100-80gb", 3310, "facts §1 fast_diffusion"),
    Published(
        "SDXL 30 steps, bf16 + compile",
        "sdxl",
        30,
        "bf16-compile",
        "a100-80gb",
        2540,
        "facts §1 fast_diffusion",
    ),
    Published("Flux-dev 28 steps, bf16", "flux-dev", 28, "bf16", "a100-80gb", 13843, "facts §2c ParaAttention", 6573),
    Published("Flux-dev 28 steps, bf16", "flux-dev", 28, "bf16", H100, 6573, "facts §2a diffusers-torchao", 6573),
    Published("Flux-dev 28 steps, bf16 + compile", "flux-dev", 28, "bf16-compile", H100, 4209, "facts §2a"),
    Published("Flux-dev 28 steps, bf16 (no published figure)", "flux-dev", 28, "bf16", "h200-141gb", 0, "-"),
    Published("SDXL 30 steps, fp16 (no published figure)", "sdxl", 30, "fp16", "h200-141gb", 0, "-"),
)


def pipeline_ms(perf: PerfModel, family: str, model: str, steps: int, recipe: str) -> tuple[float, float, str] | None:
    """steps x denoiser + VAE decode at batch 1, 1024^2, the larger of the two uncertainties, the method."""
    dn = perf.latency(family, model, "denoiser", recipe, 1, 1024, 1024)
    vae = perf.latency(family, model, "vae_decoder", "bf16", 1, 1024, 1024)
    if dn is None or vae is None:
        return None
    return steps * dn.latency_ms + vae.latency_ms, max(dn.uncertainty, vae.uncertainty), dn.method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measurements", type=Path, help="a measurements CSV (default: h100-baseline.json cells)")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="h100-baseline.json path")
    parser.add_argument("--overhead", choices=["fixed", "bandwidth", "compute"], default=None)
    args = parser.parse_args(argv)
    families, models, recipes = dict(loader.gpu_families()), dict(loader.models()), dict(loader.recipes())
    if args.measurements:
        rows = [located.row for located in read_csv(args.measurements)]
        source = f"measurements CSV {args.measurements}"
    else:
        rows = baseline_rows(args.baseline)
        source = f"{args.baseline.name} cells converted to rows by this script (H100, random weights)"
    scalings: list[OverheadScaling] = [args.overhead] if args.overhead else ["fixed", "bandwidth"]
    perfs = {
        s: PerfModel(rows, families=families, models=models, recipes=recipes, settings=PerfSettings(overhead_scaling=s))
        for s in scalings
    }
    print(f"Source cells: {source}. Pipeline = steps x denoiser call + VAE decode, batch 1, 1024x1024.\n")
    head = "| workload | family | published (ms) | source |"
    sep = "|---|---|---|---|"
    for s in scalings:
        head += f" predicted, overhead {s} (ms) | error | ratio to H100: pub / pred |"
        sep += "---|---|---|"
    print(head + " uncertainty | cell |")
    print(sep + "---|---|")
    errors: dict[str, list[float]] = {s: [] for s in scalings}
    for pub in PUBLISHED:
        line = (
            f"| {pub.label} | {pub.family} | {pub.ms:.0f} | {pub.source} |"
            if pub.ms
            else f"| {pub.label} | {pub.family} | - | - |"
        )
        unc, method = "-", "no source cell"
        for s in scalings:
            perf = perfs[s]
            got = pipeline_ms(perf, pub.family, pub.model, pub.steps, pub.denoiser_recipe)
            if got is None:
                line += " - | - | - |"
                continue
            pred, u, method = got
            unc = f"±{u:.0%}"
            if not pub.ms:
                line += f" {pred:.0f} | - | - |"
                continue
            err = pred / pub.ms - 1
            if pub.family != H100:
                errors[s].append(abs(err))
            ratio = "-"
            if pub.h100_same_source_ms and pub.family != H100:
                h100 = pipeline_ms(perf, H100, pub.model, pub.steps, pub.denoiser_recipe)
                if h100 is not None:
                    ratio = f"{pub.ms / pub.h100_same_source_ms:.2f} / {pred / h100[0]:.2f}"
            line += f" {pred:.0f} | {err:+.0%} | {ratio} |"
        print(line + f" {unc} | {method} |")
    print()
    for s in scalings:
        errs = errors[s]
        if errs:
            print(f"overhead {s}: mean |error| over transferred rows {sum(errs) / len(errs):.0%}, max {max(errs):.0%}")
    print()
    cross_family_ratios(perfs[scalings[0]], rows, families, models, recipes)
    return 0


@dataclass(frozen=True)
class PublishedSet:
    """Latencies one source gives for several families on one workload: a ratio of two of them divides out the
    source's software stack, which our measured H100 does not share (the absolute errors above carry it)."""

    label: str
    model: str
    steps: int
    recipe: str
    """The recipe whose transfer the figures are compared with (the nearest the source's run has here)."""
    part: str
    """"pipeline" (steps x denoiser + VAE decode), "denoiser" (steps x denoiser) or "vae_decoder"."""
    ms: dict[str, float]
    source: str


A10, A100 = "a10-24gb", "a100-80gb"
SAME_SOURCE: tuple[PublishedSet, ...] = (
    PublishedSet(
        "SDXL 30 steps, PyTorch baseline (fp16)",
        "sdxl",
        30,
        "fp16",
        "pipeline",
        {A10: 9399, A100: 3704, H100: 2496},
        "facts §5 TRT card",
    ),
    PublishedSet(
        "SDXL 30 steps, TensorRT (vs the fp16 transfer)",
        "sdxl",
        30,
        "fp16",
        "pipeline",
        {A10: 8160, A100: 2742, H100: 1471},
        "facts §5 TRT card",
    ),
    PublishedSet(
        "SDXL UNet 40 steps + CLIP, TensorRT (earlier card revision)",
        "sdxl",
        40,
        "fp16",
        "denoiser",
        {A10: 12588, A100: 3367, H100: 1779},
        "facts §5 TRT card",
    ),
    PublishedSet(
        "SDXL-LCM UNet 4 steps, TensorRT (vs sdxl-lightning bf16: no CFG)",
        "sdxl-lightning",
        4,
        "bf16",
        "denoiser",
        {A100: 192.02, H100: 102.8},
        "facts §4 TRT card",
    ),
    PublishedSet(
        "SDXL VAE decode 1024^2, TensorRT (LCM card)",
        "sdxl",
        1,
        "bf16",
        "vae_decoder",
        {A100: 228.34, H100: 126.95},
        "facts §4 TRT card",
    ),
)
"""Every pair of per-GPU figures one source in ../shared/reference/diffusion-facts.md gives. None for the L4, L40S
or A10G: the reference has none, and no citable same-source figure was found for them (a search of public pages
found pages naming such benchmarks, none whose figures could be read and cited)."""
CROSS_SOURCE: tuple[tuple[str, str, int, str, tuple[str, float, str], tuple[str, float, str]], ...] = (
    (
        "Flux-dev 28 steps, bf16",
        "flux-dev",
        28,
        "bf16",
        (A100, 13843, "facts §2c ParaAttention"),
        (H100, 6573, "facts §2a diffusers-torchao"),
    ),
    (
        "SDXL 30 steps, bf16 + SDPA / fp16 baseline",
        "sdxl",
        30,
        "bf16",
        (A100, 3310, "facts §1 fast_diffusion"),
        (H100, 2496, "facts §5 TRT card"),
    ),
)
"""Pairs of figures from two sources: their software stacks differ, so the ratio is printed, not checked."""


@dataclass(frozen=True)
class RatioCheck:
    """One predicted / actual cross-family ratio and the uncertainty the model attaches to it."""

    label: str
    slow: str
    fast: str
    actual: float
    predicted: float
    uncertainty: float
    kind: str
    source_of_slow: str
    distance: float | None
    """The roofline distance of the slow family's transfer, where the fast family is its measured source."""

    @property
    def error(self) -> float:
        return self.predicted / self.actual - 1

    @property
    def inside(self) -> bool:
        return abs(self.error) <= self.uncertainty + 1e-9


def part_ms(perf: PerfModel, family: str, pub: PublishedSet) -> tuple[float, float, str] | None:
    """The latency of `pub`'s part on `family` at batch 1, 1024^2: ms, uncertainty, basis."""
    if pub.part == "pipeline":
        got = pipeline_ms(perf, family, pub.model, pub.steps, pub.recipe)
        if got is None:
            return None
        cell = perf.latency(family, pub.model, "denoiser", pub.recipe, 1, 1024, 1024)
        return got[0], got[1], cell.basis if cell is not None else got[2]
    stage = "denoiser" if pub.part == "denoiser" else "vae_decoder"
    cell = perf.latency(family, pub.model, stage, pub.recipe, 1, 1024, 1024)
    if cell is None:
        return None
    calls = pub.steps if stage == "denoiser" else 1
    return calls * cell.latency_ms, cell.uncertainty, cell.basis


def ratio_checks(perf: PerfModel, rows: list[MeasurementRow], families: dict[str, Any]) -> list[RatioCheck]:
    """Every same-source published pair (slower / faster family), then each measured family other than the H100
    predicted from the H100's cells alone (its own rows left out)."""
    checks: list[RatioCheck] = []
    for pub in SAME_SOURCE:
        ranked = sorted(pub.ms, key=lambda f: -pub.ms[f])
        for k, slow in enumerate(ranked):
            for fast in ranked[k + 1 :]:
                check = _check(perf, pub, slow, fast, pub.ms[slow] / pub.ms[fast], "published", families)
                if check is not None:
                    checks.append(check)
    measured = {r.gpu_family for r in rows} - {H100}
    for fam in sorted(measured):
        alone = replace_rows(perf, [r for r in rows if r.gpu_family != fam])
        for label, model, steps, recipe in (
            ("SDXL 30 steps, fp16", "sdxl", 30, "fp16"),
            ("Flux-dev 28 steps, bf16", "flux-dev", 28, "bf16"),
        ):
            pub = PublishedSet(label, model, steps, recipe, "pipeline", {}, "measured")
            have, h100 = part_ms(perf, fam, pub), part_ms(perf, H100, pub)
            if have is None or h100 is None or not have[2].startswith("measured"):
                continue
            check = _check(alone, pub, fam, H100, have[0] / h100[0], "measured", families)
            if check is not None:
                checks.append(check)
    return checks


def replace_rows(perf: PerfModel, rows: list[MeasurementRow]) -> PerfModel:
    return PerfModel(rows, families=perf.families, models=perf.models, recipes=perf.recipes, settings=perf.settings)


def _check(
    perf: PerfModel, pub: PublishedSet, slow: str, fast: str, actual: float, kind: str, families: dict[str, Any]
) -> RatioCheck | None:
    a, b = part_ms(perf, slow, pub), part_ms(perf, fast, pub)
    if a is None or b is None:
        return None
    distance = None
    if a[2].startswith(f"transferred from {fast}") and b[2].startswith("measured"):
        distance = family_distance(perf.ceilings[fast], perf.ceilings[slow], perf.precision_of(pub.recipe) or "bf16")
    return RatioCheck(pub.label, slow, fast, actual, a[0] / b[0], a[1] + b[1], kind, a[2], distance)


def fitted_distance_uncertainty(checks: list[RatioCheck]) -> float | None:
    """The transfer uncertainty per unit of roofline distance that covers every checked error: the largest
    |error| / distance over the checks whose slower family was transferred from the faster, measured one
    (planner.perf.roofline.TRANSFER_DISTANCE_UNCERTAINTY is this, rounded up to 0.01)."""
    slopes = [abs(c.error) / c.distance for c in checks if c.distance]
    return max(slopes) if slopes else None


def fitted_min_uncertainty(checks: list[RatioCheck]) -> float | None:
    """The least transfer uncertainty: the largest |error| among the checks at the smallest distance
    (planner.perf.roofline.TRANSFER_MIN_UNCERTAINTY is this, rounded up to 0.01)."""
    near = [c for c in checks if c.distance]
    if not near:
        return None
    nearest = min(c.distance for c in near if c.distance)
    return max(abs(c.error) for c in near if c.distance is not None and c.distance <= nearest + 1e-9)


def cross_family_ratios(
    perf: PerfModel,
    rows: list[MeasurementRow],
    families: dict[str, Any],
    models: dict[str, Any],
    recipes: dict[str, Any],
) -> list[RatioCheck]:
    """Print every cross-family ratio the reference gives, predicted against published or measured, each with the
    uncertainty the model attaches (the sum of the two cells'); then the pairs from two sources, unchecked; then
    the distance slope the checked errors call for against the model's."""
    checks = ratio_checks(perf, rows, families)
    print("Cross-family ratios (slower / faster family, one source for both):\n")
    head = "| workload | pair | published or measured | predicted | predicted / actual | uncertainty | inside |"
    print(head + " slower from |")
    print("|---|---|---|---|---|---|---|---|")
    for c in checks:
        print(
            f"| {c.label} | {c.slow} / {c.fast} | {c.actual:.3f} ({c.kind}) | {c.predicted:.3f} | {c.error:+.1%} | "
            f"±{c.uncertainty:.1%} | {'yes' if c.inside else 'NO'} | {c.source_of_slow} |"
        )
    print("\nPairs from two sources (software stacks differ; printed, not checked):\n")
    print("| workload | pair | published | predicted | predicted / published |")
    print("|---|---|---|---|---|")
    for label, model, steps, recipe, (slow, slow_ms, slow_src), (fast, fast_ms, fast_src) in CROSS_SOURCE:
        pub = PublishedSet(label, model, steps, recipe, "pipeline", {}, "")
        a, b = part_ms(perf, slow, pub), part_ms(perf, fast, pub)
        predicted = "-" if a is None or b is None else f"{a[0] / b[0]:.3f}"
        error = "-" if a is None or b is None else f"{a[0] / b[0] / (slow_ms / fast_ms) - 1:+.1%}"
        print(
            f"| {label} | {slow} / {fast} | {slow_ms / fast_ms:.3f} ({slow_src} / {fast_src}) | {predicted} | {error} |"
        )
    slope, floor = fitted_distance_uncertainty(checks), fitted_min_uncertainty(checks)
    inside = sum(c.inside for c in checks)
    print(f"\n{inside} of {len(checks)} checked ratios inside their uncertainty.")
    if slope is not None and floor is not None:
        print(
            f"Transfer uncertainty = max({TRANSFER_MIN_UNCERTAINTY:.2f}, {TRANSFER_DISTANCE_UNCERTAINTY:.2f} x "
            f"roofline distance) (planner.perf.roofline); the checked errors call for at least max({floor:.3f}, "
            f"{slope:.3f} x distance)."
        )
    return checks


if __name__ == "__main__":
    raise SystemExit(main())
