"""What-if rates and quality floors, and each constraint relaxed: what the plan's cost depends on."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from planner.scenario import QualityFloor, QualityScores
from planner.solver.core import BINDING_TOLERANCE, Core
from planner.solver.options import OptionBuilder, OptionFilter
from planner.solver.plan import Constraint, Sensitivity, WhatIf
from planner.solver.problem import Problem, Workload
from planner.solver.solve_loop import solve_core


def _stricter(w: Workload) -> Workload:
    quality = w.quality
    scores = w.quality_scores
    if quality is not None:
        step = 0.01 if quality.metric == "ssim_image" else 1.0
        quality = QualityFloor.model_validate(
            quality.model_dump() | {"min": min(quality.min + step, 1.0) if step < 1 else quality.min + step}
        )
    if scores is not None:
        scores = QualityScores.model_validate(scores.model_dump() | {"min_score": scores.min_score + 0.05})
    return replace(w, quality=quality, quality_scores=scores)


def what_if(problem: Problem, builder: OptionBuilder, flt: OptionFilter | None = None) -> Core:
    quick = problem.with_options(baselines=False, sensitivity=False, running=None)
    return solve_core(quick, builder, flt or OptionFilter())


def sensitivity_analysis(
    problem: Problem, builder: OptionBuilder, core: Core
) -> tuple[Sensitivity, dict[str, set[Constraint]]]:
    """What-if rates and floors, and each constraint relaxed: its cost, whether it binds the plan (the relaxed
    plan is cheaper by more than `BINDING_TOLERANCE`), and for which workloads."""
    rates = []
    for factor in problem.options.what_if_rates:
        scaled = problem.with_workloads([replace(w, rate=w.rate * factor) for w in problem.workloads])
        alt = what_if(scaled, builder)
        rates.append(WhatIf(f"rates x{factor:g}", alt.cost if alt.feasible else None))
    solved: dict[tuple[int, OptionFilter | None], Core] = {}  # the no-floor what-if answers its relaxation too

    def once(alt_problem: Problem, flt: OptionFilter | None = None) -> Core:
        key = (id(alt_problem), flt)
        if key not in solved:
            solved[key] = what_if(alt_problem, builder, flt)
        return solved[key]

    has_floor = any(w.quality is not None or w.quality_scores is not None for w in problem.workloads)
    no_floor = problem.with_workloads([replace(w, quality=None, quality_scores=None) for w in problem.workloads])
    quality: list[WhatIf] = []
    if has_floor:
        alt = once(no_floor)
        quality.append(WhatIf("no quality floor", alt.cost if alt.feasible else None))
        alt = once(problem.with_workloads([_stricter(w) for w in problem.workloads]))
        quality.append(
            WhatIf("stricter floor (SSIM +0.01, PSNR +1 dB, score +0.05)", alt.cost if alt.feasible else None)
        )
    relaxed: list[tuple[Constraint, WhatIf]] = []
    binding: list[Constraint] = ["capacity"]
    per_workload: dict[str, set[Constraint]] = defaultdict(set)
    for constraint, alt_problem, flt in _relaxations(problem, no_floor if has_floor else None):
        alt = once(alt_problem, flt)
        relaxed.append((constraint, WhatIf(f"without the {constraint} constraint", alt.cost if alt.feasible else None)))
        if alt.feasible and alt.cost < core.cost * (1 - BINDING_TOLERANCE):
            binding.append(constraint)
            for w in core.workloads:
                other = alt.workload_cost(w.name)
                if other is not None and other < w.cost_per_hour * (1 - BINDING_TOLERANCE):
                    per_workload[w.name].add(constraint)
    return Sensitivity(
        rates=tuple(rates), quality=tuple(quality), relaxed=tuple(relaxed), binding=tuple(binding)
    ), per_workload


def _relaxations(problem: Problem, no_floor: Problem | None) -> list[tuple[Constraint, Problem, OptionFilter | None]]:
    """The problem with each constraint that can bind removed (availability, latency, memory, quality)."""
    out: list[tuple[Constraint, Problem, OptionFilter | None]] = []
    if any(f.available is not None for f in problem.families.values()):
        unlimited = {k: replace(f, available=None) for k, f in problem.families.items()}
        out.append(("availability", replace(problem, families=unlimited), None))
    if any(w.p95_latency_s is not None for w in problem.workloads):
        out.append(
            ("latency", problem.with_workloads([replace(w, p95_latency_s=None) for w in problem.workloads]), None)
        )
    out.append(("memory", problem, OptionFilter(ignore_memory=True)))
    if no_floor is not None:
        out.append(("quality", no_floor, None))
    return out
