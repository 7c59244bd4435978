"""The report's plots as PNG bytes: $/image against rate per family, the cost/quality front, GPUs per family.

Figures are made with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state), at a
low DPI so the self-contained HTML stays a few hundred KB.
"""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from planner.recommend.sweep import ANY_FAMILY, QualitySweep, RateSweep, pareto
from planner.solver.plan import Plan

DPI = 90
METRIC_LABEL = {
    "ssim_image": "SSIM of the image",
    "psnr_image": "PSNR of the image (dB)",
    "psnr_latent": "PSNR of the latent (dB)",
}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def rate_plot(sweep: RateSweep, chosen: frozenset[str] = frozenset()) -> bytes:
    """`rate_figure` as PNG bytes."""
    return _png(rate_figure(sweep, chosen))


def rate_figure(sweep: RateSweep, chosen: frozenset[str] = frozenset()) -> Figure:
    """$/image against the rate, one line per family (the workload restricted to it) and the free choice.

    Measured families are solid lines with filled markers; families resting on estimates are thin dashed lines
    with hollow markers, labelled with their uncertainty; the plan's own families are drawn thick, under the
    free choice's dashed black line, so both stay visible. The legend sits outside the axes."""
    fig = Figure(figsize=(8.5, 4.5))
    ax = fig.add_subplot()
    palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
        "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
    ]  # fmt: skip
    k = 0
    for curve in sweep.curves:
        pts = [(r, c) for r, c in zip(curve.rates, curve.cost_per_image, strict=True) if c is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        color = palette[k % len(palette)]
        if curve.family == ANY_FAMILY:
            ax.plot(
                xs, ys, color="black", linewidth=1.6, linestyle="--", label="best mix (this plan's choice)", zorder=6
            )
            continue
        k += 1
        if curve.estimated:
            ax.plot(
                xs, ys, marker="o", markersize=4, markerfacecolor="none", linewidth=1.0, linestyle=(0, (4, 3)),
                alpha=0.75, color=color, label=f"{curve.family} (estimate ±{curve.uncertainty:.0%}, not measured)",
            )  # fmt: skip
        else:
            thick = curve.family in chosen
            ax.plot(
                xs, ys, marker="o", markersize=5 if thick else 3, linewidth=4.0 if thick else 1.4, color=color,
                label=f"{curve.family} (measured{', in the plan' if thick else ''})", zorder=5 if thick else 3,
            )  # fmt: skip
    ax.axvline(sweep.target_rate, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rate (images/s)")
    ax.set_ylabel("$ per image")
    ax.set_title(f"{sweep.workload}: $/image against rate, per GPU family")
    ax.grid(True, which="both", linewidth=0.3, alpha=0.6)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def quality_plot(sweep: QualitySweep) -> bytes:
    """`quality_figure` as PNG bytes."""
    return _png(quality_figure(sweep))


def quality_figure(sweep: QualitySweep) -> Figure:
    """$/image against quality: the cheapest plan at each floor; hollow markers rest on synthetic weights."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    finite = [p.quality for p in sweep.points if p.quality is not None and math.isfinite(p.quality)]
    cap = (max(finite) + 5.0 if finite else 100.0) if sweep.metric != "ssim_image" else 1.0

    def q(value: float | None) -> float:
        return cap if value is None or not math.isfinite(value) else value

    known = [p for p in sweep.points if p.quality is not None]
    for synthetic in (False, True):
        pts = [p for p in known if p.synthetic == synthetic]
        if pts:
            ax.scatter(
                [q(p.quality) for p in pts],
                [p.cost_per_image for p in pts],
                s=36,
                facecolors="none" if synthetic else "tab:blue",
                edgecolors="tab:blue",
                label="measured on synthetic weights (drift, not perceptual quality)" if synthetic else "real weights",
                zorder=3,
            )
    front = pareto(known)
    if front:
        ax.step(
            [q(p.quality) for p in front],
            [p.cost_per_image for p in front],
            where="post",
            color="tab:blue",
            linewidth=1,
        )
        for p in front:
            ax.annotate(
                f"{p.model}: {p.recipes}",
                (q(p.quality), p.cost_per_image),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=6,
            )
    current = sweep.current
    if current is not None and current.quality is not None:
        ax.scatter(
            [q(current.quality)], [current.cost_per_image], marker="*", s=160, color="tab:red",
            label="this plan", zorder=4,
        )  # fmt: skip
    elif current is not None:
        ax.axhline(
            current.cost_per_image, color="tab:red", linestyle="--", linewidth=1,
            label=f"this plan ({current.recipes}): {sweep.metric} not measured for every stage",
        )  # fmt: skip
    if not known and current is None:
        ax.text(0.5, 0.5, f"no {sweep.metric} measurements", transform=ax.transAxes, ha="center")
    ax.set_xlabel(
        METRIC_LABEL.get(sweep.metric, sweep.metric)
        + (" (exact at the right edge)" if sweep.metric != "ssim_image" else "")
    )
    ax.set_ylabel("$ per image")
    ax.set_title(f"{sweep.workload}: cost against quality (cheapest plan at each floor)")
    ax.grid(True, linewidth=0.3, alpha=0.6)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside: never on data
    return fig


def gpus_plot(plan: Plan) -> bytes:
    """`gpus_figure` as PNG bytes."""
    return _png(gpus_figure(plan))


def gpus_figure(plan: Plan) -> Figure:
    """GPUs per family: the plan next to each baseline."""
    series: list[tuple[str, dict[str, int]]] = [("this plan", dict(plan.gpus))]
    series += [(b.name, dict(b.gpus)) for b in plan.baselines if b.feasible]
    families = sorted({f for _, gpus in series for f in gpus})
    fig = Figure(figsize=(7.5, 3.8))
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, (name, gpus) in enumerate(series):
        xs = [j + i * width for j in range(len(families))]
        bars = ax.bar(xs, [gpus.get(f, 0) for f in families], width=width, label=name)
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(families))], families, fontsize=8)
    ax.set_ylabel("GPUs")
    ax.set_title("GPUs per family: this plan and the baselines")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(True, axis="y", linewidth=0.3, alpha=0.6)
    return fig


def legend_overlaps_axes(fig: Figure) -> bool:
    """Whether any legend of a figure covers part of its axes (where the data is drawn)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # type: ignore[no-untyped-call]
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        if box.overlaps(area):
            return True
    return False
