"""What a plan gives up by serving a distilled variant (or another model) instead of the one it was distilled from.

A workload may accept several models (`models: [sdxl, sdxl-lightning]`); the cheapest is usually the distilled
one, and its images differ from the base model's by more than any recipe's arithmetic: no quality floor compares
two models pixel by pixel (the floor's PSNR/SSIM are against the same model's fp32 reference). What a capacity
review can show is what papers and model cards published for the two models on the same benchmark, with the
source: the model-level figures of planner/catalog/data/quality_published.yaml (those with `compared_model`).
A served model with no such figure is listed too, saying so: unknown stays unknown (issue 26).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from planner.catalog.quality import PublishedQuality
from planner.catalog.schema import ModelSpec
from planner.solver.plan import Plan
from planner.solver.problem import Problem


def _row(workload: str, model: str, f: PublishedQuality) -> dict[str, Any]:
    return {
        "workload": workload,
        "model": model,
        "compared_model": f.compared_model,
        "metric": f.metric,
        "value": f.value,
        "baseline": f.baseline,
        "against_baseline": f.against_baseline(),
        "compared_with": f.compared_with,
        "conditions": f.conditions,
        "source": f.source,
        "status": f.status,
        "evidence": "published",
    }


def distilled_quality(
    plan: Plan, models: Mapping[str, ModelSpec], published: Iterable[PublishedQuality]
) -> list[dict[str, Any]]:
    """Per workload a distilled variant serves: each published figure against another model, or a row saying none."""
    figures = [f for f in published if f.compared_model is not None]
    rows: list[dict[str, Any]] = []
    for w in plan.workloads:
        spec = models.get(w.model)
        mine = [f for f in figures if f.model == w.model]
        if spec is None or (spec.distilled_from is None and not mine):
            continue
        if not mine:
            rows.append(
                {
                    "workload": w.name,
                    "model": w.model,
                    "compared_model": spec.distilled_from,
                    "metric": None,
                    "value": None,
                    "baseline": None,
                    "against_baseline": None,
                    "compared_with": spec.distilled_from,
                    "conditions": "",
                    "source": "",
                    "status": None,
                    "evidence": "unknown",
                }
            )
            continue
        rows.extend(_row(w.name, w.model, f) for f in mine)
    return rows


def _figure(r: dict[str, Any]) -> str:
    if r["baseline"] is None:
        return f"{r['metric']} {r['value']:g}"
    return f"{r['metric']} {r['value']:g} against {r['baseline']:g} ({r['against_baseline']})"


def warning_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (workload, model): the trade in a sentence, for the plan's warnings."""
    lines: list[str] = []
    seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        seen.setdefault((r["workload"], r["model"]), []).append(r)
    for (workload, model), rs in seen.items():
        base = rs[0]["compared_model"]
        if rs[0]["evidence"] == "unknown":
            lines.append(
                f"{workload}: served by {model}, a distilled variant of {base}; no published or measured quality "
                f"figure compares the two: measure both on real weights before relying on it (docs/agent.md)"
            )
            continue
        figs = ", ".join(_figure(r) for r in rs)
        lines.append(f"{workload}: served by {model}; published against {base}: {figs} (sources: distilled_quality)")
    return lines


def with_distilled_quality(plan: Plan, problem: Problem) -> Plan:
    """The plan with `distilled_quality` filled and one warning per workload a distilled variant serves."""
    if not plan.feasible:
        return plan
    rows = distilled_quality(plan, problem.models, problem.perf.published)
    if not rows:
        return plan
    return replace(plan, distilled_quality=tuple(rows), warnings=(*plan.warnings, *warning_lines(rows)))
