"""The reference-data report: images/s and $/image per model x recipe x batch, roofline shares, fastest recipes.

Reads the shipped measurements (planner/reference/measurements.csv) and prints markdown (docs/benchmarks.md
carries its fastest-recipe table);
with --plot FILE it also draws images/s against batch per model and denoiser recipe.

A pipeline at batch b with denoiser recipe r takes
    T(b, r) = te(b) + steps x dn(r, b) + vae(b)            (seconds for b images; images/s = b / T)
where te and vae use the same recipe when it was measured for that stage and bf16 otherwise (the table says
which). Roofline: FLOPs per image = te + steps x (2 if CFG else 1) x dn + vae (catalog tflops_per_call, from
../shared/reference/diffusion-facts.md §6a), over a bf16 matmul ceiling; share = ideal time / measured time.

    python benchmarks/reference_report.py [--csv FILE] [--plot docs/img/reference-h100.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from planner import catalog  # noqa: E402
from planner.measurements.contract import MeasurementRow  # noqa: E402
from planner.measurements.csvio import read_csv  # noqa: E402

Key = tuple[str, str, str, int]  # (model, stage, recipe, batch) on one family
PIPELINE_COLUMNS = ("model", "recipe", "batch", "seconds", "images_per_s", "cost_per_image", "recipes", "steps")

BURST_TFLOPS = {"h100-sxm-80gb": 786.2}
"""A short burst of bf16 matmuls before the clocks settle (../shared/reference/h100-baseline.json); families
without one are compared with their calibrated (sustained) figure only."""


def flops_per_image_tflop(model_id: str) -> float | None:
    spec = catalog.models()[model_id]
    total = 0.0
    for stage in spec.stages:
        if stage.tflops_per_call is None:
            return None
        calls = spec.default_steps * (2 if spec.cfg else 1) if stage.name == "denoiser" else 1
        total += calls * stage.tflops_per_call
    return total


def pipeline_rows(rows: list[MeasurementRow], family: str) -> pd.DataFrame:
    """One row per (model, denoiser recipe, batch) whose every stage was measured, sorted by those three."""
    cells: dict[Key, MeasurementRow] = {}
    for r in rows:
        if r.gpu_family == family and r.status == "ok" and r.latency_ms is not None:
            cells[(r.model, r.stage, r.recipe, r.batch)] = r
    fam = catalog.gpu_families()[family]
    price = fam.default_price.price_per_hour if fam.default_price else None
    out: list[dict[str, object]] = []
    combos = sorted({(m, rec, b) for (m, st, rec, b) in cells if st == "denoiser"})
    for model, recipe, batch in combos:
        spec = catalog.models()[model]
        parts: dict[str, tuple[str, float]] = {}
        for stage in spec.stage_names:
            cell = cells.get((model, stage, recipe, batch)) or cells.get((model, stage, "bf16", batch))
            if cell is None or cell.latency_ms is None:
                break
            calls = spec.default_steps if stage == "denoiser" else 1
            parts[stage] = (cell.recipe, calls * cell.latency_ms / 1000.0)
        if len(parts) != len(spec.stages):
            continue
        seconds = sum(t for _, t in parts.values())
        ips = batch / seconds
        out.append(
            {
                "model": model,
                "recipe": recipe,
                "batch": batch,
                "seconds": seconds,
                "images_per_s": ips,
                "cost_per_image": price / 3600.0 / ips if price else None,
                "recipes": {s: rec for s, (rec, _) in parts.items()},
                "steps": spec.default_steps,
            }
        )
    return pd.DataFrame(out, columns=list(PIPELINE_COLUMNS))


def markdown(rows: list[MeasurementRow], family: str, ceilings: dict[str, float]) -> str:
    table = pipeline_rows(rows, family)
    fam = catalog.gpu_families()[family]
    price = fam.default_price
    lines = [
        f"Family `{family}` ({fam.name}); price {price.price_per_hour if price else '-'} $/h "
        f"({price.provider + ' ' + price.offering if price else 'none'}). Whole pipeline at the model's default "
        "steps and resolution; te/vae in the same recipe where measured, else bf16.",
        "",
        "| model | denoiser recipe | batch | s per batch | images/s | $/image | $/1000 images |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in table.itertuples():
        cpi = t.cost_per_image
        lines.append(
            f"| {t.model} | {t.recipe} | {t.batch} | {t.seconds:.2f} | {t.images_per_s:.3f} | "
            + (f"{cpi:.5f} | {1000 * cpi:.2f} |" if isinstance(cpi, float) and not pd.isna(cpi) else "- | - |")
        )
    lines += [
        "",
        "Fastest recipe per model (highest images/s over recipes and batches), and its share of the bf16 roofline "
        "(FLOPs per image over the bf16 matmul ceiling; 'calibrated' is the agent's sustained figure on this GPU, "
        f"{ceilings['calibrated']:.0f} TFLOP/s"
        + (
            f"; 'burst' the {ceilings['burst']:.0f} TFLOP/s of ../shared/reference/h100-baseline.json"
            if "burst" in ceilings
            else ""
        )
        + "):",
        "",
        "| model | steps | recipe | batch | images/s | TFLOP per image | roofline images/s ("
        + " / ".join(ceilings)
        + ") | share ("
        + " / ".join(ceilings)
        + ") |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    best = table.loc[table.groupby("model")["images_per_s"].idxmax()] if len(table) else table  # first of ties
    for top in best.sort_values("model").to_dict("records"):
        tf = flops_per_image_tflop(str(top["model"]))
        ips = float(top["images_per_s"])
        if tf is None:
            continue
        roof = [c / tf for c in ceilings.values()]
        lines.append(
            f"| {top['model']} | {top['steps']} | {top['recipe']} | {top['batch']} | {ips:.3f} | {tf:.0f} | "
            + " / ".join(f"{r:.3f}" for r in roof)
            + " | "
            + " / ".join(f"{ips / r:.0%}" for r in roof)
            + " |"
        )
    return "\n".join(lines)


def plot(rows: list[MeasurementRow], family: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pipeline_rows(rows, family)
    models = sorted(table["model"].unique())
    recipes = sorted(table["recipe"].unique())
    colors = plt.get_cmap("tab20")
    color = {r: colors(i % 20) for i, r in enumerate(recipes)}  # one colour per recipe across panels
    ncols = 4
    nrows = -(-len(models) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat[len(models) :]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models, strict=False):
        series = table[table["model"] == model].pivot(index="batch", columns="recipe", values="images_per_s")
        for recipe in sorted(series.columns):
            pts = series[recipe].dropna()
            ax.plot(pts.index, pts.to_numpy(), marker="o", label=recipe, color=color[recipe])
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model} on {family}")
        ax.set_xlabel("batch")
        ax.set_ylabel("images/s (whole pipeline)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncols=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, default=REPO / "planner/reference/measurements.csv")
    p.add_argument("--provenance", type=Path, default=REPO / "planner/reference/provenance.json")
    p.add_argument("--family", default="h100-sxm-80gb")
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [located.row for located in read_csv(args.csv)]
    prov = json.loads(args.provenance.read_text())
    calls = prov["calls"]
    calibrated = [
        c["calibration"]["bf16_tflops"]
        for c in calls.values()
        if c.get("calibration") and c["calibration"].get("gpu_family") == args.family
    ]
    if not calibrated:
        print(f"no calibration for family {args.family!r} in {args.provenance}: measure it first (campaign.md)")
        return 1
    ceilings = {"calibrated": max(calibrated)}
    if args.family in BURST_TFLOPS:
        ceilings["burst"] = BURST_TFLOPS[args.family]
    print(markdown(rows, args.family, ceilings))
    if args.plot:
        target = args.plot.resolve()
        plot(rows, args.family, target)
        shown = target.relative_to(REPO / "docs") if target.is_relative_to(REPO / "docs") else target
        print(f"\n![images/s per batch]({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
