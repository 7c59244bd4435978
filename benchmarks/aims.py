"""The two speed aims, from a measurements file: how far the best measured recipe is from each, per GPU family.

- SDXL 1024x1024, 30 steps: 1.5 images/s per GPU (throughput: the best denoiser recipe and batch);
- Flux-dev 1024x1024, 28 steps: one image in under 2.5 s (latency: batch 1).

Cells combine the way a plan does (docs/benchmarks.md, "The speed aims"): per batch, `steps` denoiser calls of the
recipe, plus the text encoder in bf16 and the VAE decoder in its fastest full-VAE recipe (`bf16` or
`bf16-compile`) measured at that batch. Only `ok` cells count. No GPU needed; reads the shipped reference data
unless given a file:

    PYTHONPATH=. python benchmarks/aims.py [--csv FILE] [--family h100-sxm-80gb]

Prints one line per aim and family: the figure, the ratio to the aim, and the cells it rests on (with when each
was measured), best recipe first, then the runner-up recipes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SDXL_AIM_IMAGES_PER_S = 1.5
FLUX_AIM_S = 2.5
VAE_RECIPES = ("bf16", "bf16-compile")


@dataclass(frozen=True)
class Cell:
    latency_ms: float
    measured_at: str


@dataclass(frozen=True)
class Figure:
    family: str
    recipe: str
    batch: int
    denoiser_ms: float
    text_ms: float
    vae_ms: float
    vae_recipe: str
    batch_s: float
    measured_at: str


Key = tuple[str, str, str, str, int]


def load(path: Path) -> dict[Key, Cell]:
    """(family, model, stage, recipe, batch) -> the ok cell at the model's default size."""
    sizes = {"sdxl": "1024", "flux-dev": "1024"}
    cells: dict[Key, Cell] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r.get("status", "ok") != "ok" or r["model"] not in sizes or r["height"] != sizes[r["model"]]:
                continue
            key = (r["gpu_family"], r["model"], r["stage"], r["recipe"], int(r["batch"]))
            cells[key] = Cell(float(r["latency_ms"]), r.get("measured_at", ""))
    return cells


def figures(cells: dict[Key, Cell], family: str, model: str, steps: int, batches: tuple[int, ...]) -> list[Figure]:
    """Every (denoiser recipe, batch) with its text encoder and VAE cells measured, fastest per image first."""
    out: list[Figure] = []
    for (fam, m, stage, recipe, batch), dn in cells.items():
        if fam != family or m != model or stage != "denoiser" or batch not in batches:
            continue
        te = cells.get((family, model, "text_encoder", "bf16", batch))
        vaes = [
            (cells[k].latency_ms, k[3]) for r in VAE_RECIPES if (k := (family, model, "vae_decoder", r, batch)) in cells
        ]
        if te is None or not vaes:
            continue
        vae_ms, vae_recipe = min(vaes)
        total = steps * dn.latency_ms + te.latency_ms + vae_ms
        out.append(
            Figure(family, recipe, batch, dn.latency_ms, te.latency_ms, vae_ms, vae_recipe, total / 1e3, dn.measured_at)
        )
    return sorted(out, key=lambda f: f.batch_s / f.batch)


def report(cells: dict[Key, Cell], family: str) -> list[str]:
    lines: list[str] = []
    sdxl = figures(cells, family, "sdxl", 30, (1, 2, 4, 8, 16))
    if sdxl:
        best = sdxl[0]
        rate = best.batch / best.batch_s
        lines.append(
            f"{family} SDXL aim ({SDXL_AIM_IMAGES_PER_S} images/s): {rate:.3f} images/s, "
            f"{rate / SDXL_AIM_IMAGES_PER_S:.2f}x the aim: {best.recipe} batch {best.batch} "
            f"(30 x {best.denoiser_ms:.1f} ms + text {best.text_ms:.1f} ms + VAE {best.vae_recipe} {best.vae_ms:.1f} "
            f"ms "
            f"per batch; denoiser cell measured {best.measured_at[:16]})"
        )
        seen = {best.recipe}
        for f in sdxl[1:]:
            if f.recipe not in seen and len(seen) < 4:
                seen.add(f.recipe)
                lines.append(f"  then {f.recipe} batch {f.batch}: {f.batch / f.batch_s:.3f} images/s")
    flux = figures(cells, family, "flux-dev", 28, (1,))
    if flux:
        best = flux[0]
        lines.append(
            f"{family} Flux-dev aim (under {FLUX_AIM_S} s): {best.batch_s:.2f} s, {best.batch_s / FLUX_AIM_S:.2f}x the "
            f"aim: {best.recipe} (28 x {best.denoiser_ms:.2f} ms + text {best.text_ms:.1f} ms + VAE "
            f"{best.vae_recipe} {best.vae_ms:.1f} ms; denoiser cell measured {best.measured_at[:16]})"
        )
        for f in flux[1:4]:
            lines.append(f"  then {f.recipe}: {f.batch_s:.2f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, default=REPO / "planner" / "reference" / "measurements.csv")
    p.add_argument("--family", action="append", default=None, help="GPU family (repeatable; default: every one)")
    args = p.parse_args(argv)
    cells = load(args.csv)
    families = args.family or sorted({k[0] for k in cells})
    for family in families:
        for line in report(cells, family):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
