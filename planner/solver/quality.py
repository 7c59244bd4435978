"""What a plan's quality floor rests on: for each recipe a floor judged, its quality, the source of that
number, and whether the floor let it in (issue 26: "the plan says which source each recipe's quality came from,
and what it excluded and why").

Sources, best first (planner.perf.model.PerfModel.quality_evidence): `measured` on real weights, `published` (a
cited figure, planner/catalog/data/quality_published.yaml), `synthetic` drift only when the floor asks for it
(`weights: any`, `--synthetic-quality`), `reference` (the stage's highest-precision plain recipe, exact), else
`unknown`: excluded (or let in, with `missing: allow`), never compared as a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from planner.perf.model import PerfModel, QualityEvidence
from planner.scenario import QualityFloor

Verdict = Literal["allowed", "excluded"]


@dataclass(frozen=True)
class QualityLine:
    """One (workload, model, stage, recipe) the quality floor judged."""

    workload: str
    model: str
    stage: str
    recipe: str
    metric: str
    value: float | None
    source: str
    detail: str
    verdict: Verdict
    why: str

    def to_dict(self) -> dict[str, Any]:
        exact = self.value is not None and math.isinf(self.value)
        return {
            "workload": self.workload,
            "model": self.model,
            "stage": self.stage,
            "recipe": self.recipe,
            "metric": self.metric,
            "value": None if self.value is None or exact else self.value,
            "exact": exact,
            "source": self.source,
            "detail": self.detail,
            "verdict": self.verdict,
            "why": self.why,
        }


def judge(floor: QualityFloor, evidence: QualityEvidence) -> tuple[Verdict, str]:
    """Whether a recipe passes a floor on this evidence, and why (a pure function of the two)."""
    if evidence.value is None:
        if floor.missing == "exclude":
            return "excluded", "quality unknown (no real-weight measurement or published figure on this metric)"
        return "allowed", "quality unknown, let in by `missing: allow`"
    shown = "exact" if math.isinf(evidence.value) else f"{evidence.value:g}"
    if evidence.value < floor.min:
        return "excluded", f"{floor.metric} {shown} ({evidence.source}) is below the floor {floor.min:g}"
    return "allowed", f"{floor.metric} {shown} ({evidence.source}) meets the floor {floor.min:g}"


def evidence_for(
    perf: PerfModel, floor: QualityFloor, model: str, stage: str, recipe: str, size: tuple[int, int]
) -> QualityEvidence:
    return perf.quality_evidence(
        model, stage, recipe, floor.metric, height=size[0], width=size[1], real_weights_only=floor.weights == "real"
    )


def ledger(perf: PerfModel, workloads: Any, recipes: Any) -> tuple[QualityLine, ...]:
    """Every recipe with cells that a workload's floor judged (allow-lists applied first), in a stable order."""
    lines: list[QualityLine] = []
    for w in workloads:
        floor: QualityFloor | None = w.quality
        if floor is None:
            continue
        for model in w.models:
            h, wd = w.resolution[model]
            for stage in ("text_encoder", "denoiser", "vae_decoder"):
                for recipe in sorted(perf.recipes_for(model, stage, h, wd)):
                    if w.recipes is not None and stage in w.recipes and recipe not in w.recipes[stage]:
                        continue
                    if recipe in recipes and stage not in recipes[recipe].stages:
                        continue
                    ev = evidence_for(perf, floor, model, stage, recipe, (h, wd))
                    verdict, why = judge(floor, ev)
                    lines.append(
                        QualityLine(w.name, model, stage, recipe, floor.metric, ev.value, ev.source, ev.detail,
                                    verdict, why)
                    )  # fmt: skip
    return tuple(lines)
