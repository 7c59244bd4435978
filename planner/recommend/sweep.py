"""Re-solves of one Problem for the capacity review: what-if rates, $/image against rate per family, and the
cost/quality front.

Every sweep solves the same Problem (same measurements, fleet and knobs) with one thing changed, without
baselines or sensitivity (they answer other questions), sharing one OptionBuilder so the cells are estimated
once. `tick` is called after each solve so the caller can show progress; `*_steps` say how many there will be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from planner.perf.model import QualityMetric
from planner.recommend.quick import WhatIfPoint
from planner.scenario import QualityFloor
from planner.solver import OptionBuilder, Plan, Problem, Workload, solve
from planner.solver.evidence import unmeasured_families
from planner.solver.plan import WorkloadPlan

Tick = Callable[[str], None]
RATE_FACTORS: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
ANY_FAMILY = "any (the plan's choice)"


def _noop(_: str) -> None:
    return None


def quick(problem: Problem) -> Problem:
    """The problem without baselines and sensitivity: a sweep point needs only the plan's cost."""
    return problem.with_options(baselines=False, sensitivity=False, progress=None)


def builder_for(problem: Problem) -> OptionBuilder:
    return OptionBuilder(problem.perf, problem.models, problem.recipes)


def total_rate(workloads: Sequence[Workload]) -> float:
    return sum(w.rate for w in workloads)


# ---- what-if rates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhatIfResult:
    """The cheapest plan at one what-if point (None cost: the fleet cannot carry it)."""

    label: str
    rate: float
    cost_per_hour: float | None
    gpus: dict[str, int]
    carried: float | None = None
    note: str = ""

    @property
    def cost_per_image(self) -> float | None:
        return None if self.cost_per_hour is None else self.cost_per_hour / (3600.0 * self.rate)


def what_if_steps(points: Sequence[WhatIfPoint]) -> int:
    return len(points)


def what_if(
    problem: Problem, points: Sequence[WhatIfPoint], *, builder: OptionBuilder | None = None, tick: Tick = _noop
) -> list[WhatIfResult]:
    """Every workload's rate scaled (a multiplier, or to an absolute total in the same proportions)."""
    builder = builder or builder_for(problem)
    base = quick(problem)
    current = total_rate(problem.workloads)
    out: list[WhatIfResult] = []
    for point in points:
        factor = point.factor_for(current)
        scaled = base.with_workloads([replace(w, rate=w.rate * factor) for w in base.workloads])
        plan = solve(scaled, builder=builder)
        rate = current * factor
        if plan.feasible:
            out.append(WhatIfResult(point.label, rate, plan.total_cost_per_hour, dict(plan.gpus)))
        else:
            carried = min((i.carried_fraction for i in plan.infeasible), default=0.0)
            note = "; ".join(i.message for i in plan.infeasible)
            out.append(WhatIfResult(point.label, rate, None, {}, carried=carried, note=note))
        tick(f"what-if {point.label}")
    return out


# ---- $/image against rate, per family -----------------------------------------------------------------


@dataclass(frozen=True)
class RateCurve:
    """$/image of one workload at each rate, on one family (or the plan's free choice)."""

    family: str
    rates: list[float]
    cost_per_image: list[float | None]
    estimated: bool = False
    """No agent measured the family for this workload's model: the curve rests on its estimates (drawn apart)."""
    uncertainty: float = 0.0
    """The largest uncertainty of the estimated plans' groups."""


@dataclass(frozen=True)
class RateSweep:
    workload: str
    target_rate: float
    curves: list[RateCurve]
    unserved: list[str] = field(default_factory=list)


def _families_of(problem: Problem, w: Workload) -> list[str]:
    return sorted(f for f in problem.families if w.families is None or f in w.families)


def rate_sweep_steps(problem: Problem, factors: Sequence[float] = RATE_FACTORS) -> int:
    return sum((len(_families_of(problem, w)) + 1) * len(factors) for w in problem.workloads)


def rate_sweeps(
    problem: Problem,
    *,
    factors: Sequence[float] = RATE_FACTORS,
    builder: OptionBuilder | None = None,
    tick: Tick = _noop,
) -> list[RateSweep]:
    """Each workload alone, at `factors` x its rate, restricted to one family at a time (and unrestricted).

    A family no agent measured for the workload's model is swept on its estimates (roofline transfer), whether or
    not the plan allows them, and its curve is marked `estimated` so the plot draws it apart from measured ones."""
    builder = builder or builder_for(problem)
    base = quick(problem)
    estimates = replace(base, perf=base.perf.with_settings(estimates=True))
    estimate_builder = builder_for(estimates)
    unmeasured = set(unmeasured_families(problem))
    out: list[RateSweep] = []
    for w in base.workloads:
        rates = [w.rate * f for f in factors]
        curves: list[RateCurve] = []
        unserved: list[str] = []
        for fam in [None, *_families_of(base, w)]:
            guess = fam is not None and fam in unmeasured
            on, by = (estimates, estimate_builder) if guess else (base, builder)
            costs: list[float | None] = []
            worst = 0.0
            for rate in rates:
                variant = replace(w, rate=rate, families=(fam,) if fam is not None else w.families)
                plan = solve(on.with_workloads([variant]), builder=by)
                costs.append(plan.workloads[0].cost_per_image if plan.feasible else None)
                if plan.feasible:
                    worst = max([worst, *(g.uncertainty for g in plan.workloads[0].groups)])
                tick(f"{w.name}: {fam or 'any family'} at {rate:.3g} images/s")
            if any(c is not None for c in costs):
                curves.append(RateCurve(fam or ANY_FAMILY, rates, costs, estimated=guess, uncertainty=worst))
            elif fam is not None:
                unserved.append(fam)
        out.append(RateSweep(w.name, w.rate, curves, unserved))
    return out


# ---- cost against quality -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityPoint:
    """The cheapest plan whose every stage's recipe meets a floor: its $/image and its quality (the worst stage).

    `synthetic`: some stage's value was measured on synthetic weights only: a drift figure, not perceptual
    quality (DESIGN.md)."""

    floor: float | None
    cost_per_image: float
    quality: float | None
    synthetic: bool
    model: str
    recipes: str


@dataclass(frozen=True)
class QualitySweep:
    workload: str
    metric: QualityMetric
    points: list[QualityPoint]
    current: QualityPoint | None


def plan_quality(problem: Problem, w: Workload, wp: WorkloadPlan, metric: QualityMetric) -> tuple[float | None, bool]:
    """The worst quality over a workload plan's stage recipes (None if one is unknown), and whether a value
    rests on synthetic weights only."""
    height, width = w.resolution[wp.model]
    worst = math.inf
    synthetic = False
    for g in wp.groups:
        for stage, recipe in g.recipes.items():
            any_w = problem.perf.quality(
                wp.model, stage, recipe, metric, height=height, width=width, real_weights_only=False
            )
            real = problem.perf.quality(wp.model, stage, recipe, metric, height=height, width=width)
            if any_w is None:
                return None, synthetic
            if real is None or real > any_w:
                synthetic = True
            worst = min(worst, any_w)
    return worst, synthetic


def recipes_label(wp: WorkloadPlan) -> str:
    short = {"text_encoder": "te", "denoiser": "dn", "vae_decoder": "vae"}
    seen: dict[str, str] = {}
    for g in wp.groups:
        for stage, recipe in g.recipes.items():
            seen.setdefault(stage, recipe)
    return " ".join(f"{short.get(s, s)}={r}" for s, r in seen.items())


def _thresholds(problem: Problem, w: Workload, metric: QualityMetric) -> list[float]:
    values: set[float] = set()
    for model_id in w.models:
        height, width = w.resolution[model_id]
        for stage in problem.models[model_id].stage_names:
            for recipe in problem.perf.recipes_for(model_id, stage, height, width):
                q = problem.perf.quality(
                    model_id, stage, recipe, metric, height=height, width=width, real_weights_only=False
                )
                if q is not None and math.isfinite(q):
                    values.add(round(q, 6))
    return sorted(values)


def quality_sweep_steps(problem: Problem, metric: QualityMetric) -> int:
    return sum(len(_thresholds(problem, w, metric)) + 1 for w in problem.workloads)


def quality_sweeps(
    problem: Problem, plan: Plan, metric: QualityMetric, *, builder: OptionBuilder | None = None, tick: Tick = _noop
) -> list[QualitySweep]:
    """Each workload alone under a rising floor on `metric` (every measured value in turn, synthetic counted and
    labelled): the cheapest plan at each floor traces the cost/quality front."""
    builder = builder or builder_for(problem)
    base = quick(problem)
    out: list[QualitySweep] = []
    for w in base.workloads:
        points: list[QualityPoint] = []
        floors: list[float | None] = [None, *_thresholds(base, w, metric)]
        for floor in floors:
            quality = None
            if floor is not None:
                quality = QualityFloor(metric=metric, min=floor, weights="any", missing="exclude")
            variant = replace(w, quality=quality, quality_scores=None)
            solved = solve(base.with_workloads([variant]), builder=builder)
            tick(f"{w.name}: {metric} >= {floor:g}" if floor is not None else f"{w.name}: no quality floor")
            if not solved.feasible:
                continue
            wp = solved.workloads[0]
            value, synthetic = plan_quality(base, w, wp, metric)
            points.append(QualityPoint(floor, wp.cost_per_image, value, synthetic, wp.model, recipes_label(wp)))
        current = None
        if plan.feasible:
            wp = plan.workload(w.name)
            value, synthetic = plan_quality(base, w, wp, metric)
            current = QualityPoint(None, wp.cost_per_image, value, synthetic, wp.model, recipes_label(wp))
        out.append(QualitySweep(w.name, metric, points, current))
    return out


def pareto(points: Sequence[QualityPoint]) -> list[QualityPoint]:
    """The points no other point beats on both cost (lower) and quality (higher), by rising quality."""
    known = [p for p in points if p.quality is not None]
    front: list[QualityPoint] = []
    for p in sorted(known, key=lambda p: (p.cost_per_image, -(p.quality or 0.0))):
        if not front or (p.quality or 0.0) > (front[-1].quality or 0.0):
            front.append(p)
    return front
