"""Write `--report DIR`: run the report's sweeps, draw the plots and save `index.html` (+ `plan.json`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from planner.core.errors import InputError
from planner.perf.model import QualityMetric
from planner.recommend import views as v
from planner.recommend.sweep import (
    Tick,
    builder_for,
    quality_sweep_steps,
    quality_sweeps,
    rate_sweep_steps,
    rate_sweeps,
)
from planner.report import plots
from planner.report.html import Figure, render
from planner.solver import OptionBuilder, Plan, Problem


def report_steps(problem: Problem, metric: QualityMetric) -> int:
    """How many solves `write_report` runs (for a progress bar)."""
    return rate_sweep_steps(problem) + quality_sweep_steps(problem, metric)


def write_report(
    directory: Path,
    *,
    plan: Plan,
    problem: Problem,
    command: str,
    context: v.Context,
    metric: QualityMetric = "ssim_image",
    extra_sections: Sequence[tuple[str, Sequence[v.View]]] = (),
    builder: OptionBuilder | None = None,
    tick: Tick | None = None,
) -> Path:
    """The self-contained report of a feasible plan; returns the HTML file's path."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"--report {directory}: cannot create the directory ({exc}). Fix: give a writable path."
        ) from exc
    builder = builder or builder_for(problem)
    step: Tick = tick or (lambda _: None)
    chosen = {w.name: frozenset(g.family for g in w.groups) for w in plan.workloads}
    rate_figs = [
        Figure(
            f"{s.workload}: $/image against rate",
            plots.rate_plot(s, chosen.get(s.workload, frozenset())),
            f"Each line re-solves {s.workload} alone at 0.1x to 10x its rate ({s.target_rate:g} images/s, dotted) "
            "on one family; the black dashed line lets the solver mix families (measured ones only, unless estimates "
            "are allowed). Solid lines: measured families (thick: in this plan). Thin dashed lines with hollow "
            "markers: families no agent measured, on their roofline estimates: measure before trusting them. Lower "
            "is cheaper." + (f" No plan at any rate on: {', '.join(s.unserved)}." if s.unserved else ""),
        )
        for s in rate_sweeps(problem, builder=builder, tick=step)
    ]
    quality_figs = []
    for s in quality_sweeps(problem, plan, metric, builder=builder, tick=step):
        synthetic = any(p.synthetic for p in s.points)
        quality_figs.append(
            Figure(
                f"{s.workload}: cost against quality",
                plots.quality_plot(s),
                f"The cheapest plan for {s.workload} under a rising floor on {metric} (the worst stage counts); "
                "the step line is the front: nothing is both cheaper and better."
                + (
                    " Hollow markers: quality measured on synthetic (random) weights: drift against the reference "
                    "recipe, not perceptual quality."
                    if synthetic
                    else ""
                ),
            )
        )
    gpus_fig = Figure(
        "GPUs per family",
        plots.gpus_plot(plan),
        "GPUs of this plan and of each baseline, by family (a shared GPU counts once).",
    )
    risk = "Risk: what the plan rests on"
    sections: list[tuple[str, Sequence[v.View], Sequence[Figure]]] = [
        ("Recommendation", [v.workload_view(w) for w in plan.workloads], []),
        (risk, [v.cells_view(plan)], []),
        ("What to probe next", [v.opportunities_view(plan)] if plan.opportunities else [], []),
        ("Prices", [v.prices_view(plan)], []),
        ("Fleet and savings", [v.totals_view(plan), *([v.baselines_view(plan)] if plan.baselines else [])], [gpus_fig]),
        ("$/image against rate", [], rate_figs),
        ("Cost and quality", [v.distilled_view(plan)] if plan.distilled_quality else [], quality_figs),
        *((title, views, []) for title, views in extra_sections),
        ("Binding constraints", [v.binding_view(plan)], []),
    ]
    summary = plan.evidence_summary()
    cost = plan.total_cost_per_hour or 0.0
    rate = sum(w.rate for w in plan.workloads)
    gpus = ", ".join(f"{n} {f}" for f, n in sorted(plan.gpus.items()))
    lead = [
        f"Plan: {gpus} at {v.money(cost)}/hour ({v.unit_cost(cost / (3600 * rate) if rate else None)} per image, "
        f"{v.money(cost * v.HOURS_PER_MONTH)}/month) for {rate:g} images/s.",
        *v.headline_lines(plan),
        *(v.latency_sentence(w) for w in plan.workloads),
    ]
    no_probe = "Every family of the fleet was measured for these models." if not plan.opportunities else ""
    page = render(
        title="Capacity review: " + ", ".join(w.name for w in plan.workloads),
        command=command,
        context_lines=v.context_lines(context),
        sections=sections,
        lead_lines=lead,
        risky=not set(summary["groups"]) <= {"measured", "interpolated", "scaled"},
        section_notes={
            risk: [f"Warning: {w}" for w in plan.warnings] or ["No warnings."],
            "What to probe next": [no_probe] if no_probe else [],
        },
    )
    path = directory / "index.html"
    path.write_text(page, encoding="utf-8")
    (directory / "plan.json").write_text(plan.to_json() + "\n", encoding="utf-8")
    return path
