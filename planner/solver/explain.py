"""Why an infeasible input has no plan, per workload, and what would carry it (planner.solver.engine, step 6)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from planner.solver.core import Core
from planner.solver.evidence import left_out_line
from planner.solver.milp import solve_milp
from planner.solver.options import OptionBuilder
from planner.solver.plan import Infeasibility, Plan
from planner.solver.problem import Problem
from planner.solver.quality import ledger
from planner.solver.sensitivity import what_if

# ---- infeasible -------------------------------------------------------------------------------------


KNOBS: dict[str, tuple[str, str]] = {
    "p95": ("the workload's `p95_latency_s`", "--p95"),
    "family": ("a `fleet:` entry", "--family"),
    "memory": ("`memory_gib` of the fleet entry, if the GPU has more", "--family with a larger GPU"),
    "recipes": ("the workload's `recipes:` allow-list", "--recipe"),
    "quality": ("the workload's `quality:` floor", "--quality"),
    "size": ("the workload's `height`/`width`", "--height/--width"),
}
"""Where a fix is made: (scenario key, recommend flag); `SolverOptions.inputs` says which the user used."""


def _knob(problem: Problem, name: str) -> str:
    key, flag = KNOBS[name]
    inputs = problem.options.inputs
    return key if inputs == "scenario" else flag if inputs == "flags" else f"{key} (or {flag})"


def _suggest(problem: Problem, reasons: list[str]) -> str:
    """What to change, named as the user gave the input (scenario key or flag; both when unknown)."""
    text = " ".join(reasons)
    tips = []
    if "GiB" in text:
        tips.append(
            f"add a family with more memory ({_knob(problem, 'family')}) or allow a lighter recipe (fp8/int8 "
            f"weights, {_knob(problem, 'recipes')})"
            + (f", or raise {KNOBS['memory'][0]}" if problem.options.inputs != "flags" else "")
        )
    if "latency budget" in text:
        tips.append(f"relax {_knob(problem, 'p95')} or add a faster family ({_knob(problem, 'family')})")
    if "measured sizes" in text:
        tips.append(
            f"use a measured size ({_knob(problem, 'size')}), or probe the model at this size (agent probe "
            "with height and width) and import the cells"
        )
    elif "no cells" in text or "no family" in text:
        tips.append(
            f"probe the model on a fleet family (agent probe) or add a family with measurements "
            f"({_knob(problem, 'family')})"
        )
    if "quality floor" in text:
        tips.append(f"lower {_knob(problem, 'quality')} or measure the quality of more recipes")
    if "allowed recipe" in text:
        tips.append(f"widen {_knob(problem, 'recipes')}")
    return "; ".join(tips) or "see the reasons"


def describe_gpus(counts: dict[str, int]) -> str:
    return " + ".join(f"{n} {f}" for f, n in sorted(counts.items())) or "no GPUs"


def infeasible_plan(problem: Problem, builder: OptionBuilder, core: Core) -> Plan:
    problems: list[Infeasibility] = []
    warnings = list(core.warnings)
    for wi, reasons in core.unserved.items():
        w = problem.workloads[wi]
        problems.append(
            Infeasibility(
                workload=w.name,
                carried_fraction=0.0,
                message=f"{w.name} cannot be served: " + "; ".join(reasons),
                suggestion=_suggest(problem, reasons),
            )
        )
    rest = [w for wi, w in enumerate(problem.workloads) if wi not in core.unserved]
    if rest:
        sub = problem.with_workloads(rest)
        option_set = builder.build(sub)
        cover = solve_milp(sub, option_set, coverage=True)
        unlimited = replace(sub, families={k: replace(f, available=None) for k, f in sub.families.items()})
        need = what_if(unlimited, builder)
        for wi, w in enumerate(rest):
            frac = cover.coverage.get(wi, 0.0) if cover.feasible else 0.0
            if frac >= 1 - 1e-6:
                continue
            used: dict[str, int] = defaultdict(int)
            for i, n in cover.replicas.items():
                if option_set.options[i].workload == wi:
                    used[option_set.options[i].family] += n
            carried = f"the fleet's {describe_gpus(used)}" if used else "the fleet"
            message = (
                f"{carried} carry {frac:.0%} of {w.name}'s rate ({frac * w.rate:.3g} of {w.rate:g} images/s) "
                "after the other workloads"
            )
            suggestion = "no plan even with unlimited GPUs"
            if need.feasible:
                wp = next((p for p in need.workloads if p.name == w.name), None)
                short = []
                for fid, count in sorted(need.gpus.items()):
                    avail = problem.families[fid].available
                    if avail is not None and count > avail:
                        short.append(f"{count} {fid} (the fleet has {avail}: add {count - avail})")
                if wp is not None:
                    suggestion = (
                        f"with unlimited GPUs all workloads fit at ${need.cost:.2f}/h using "
                        f"{describe_gpus(need.gpus)}"
                        + (f"; needs {', '.join(short)}" if short else "")
                        + f"; {w.name} alone: {wp.topology} on "
                        + ", ".join(sorted({g.family for g in wp.groups}))
                    )
            problems.append(Infeasibility(w.name, frac, message, suggestion))
        if not problems and core.milp is not None:
            warnings.append(f"the MILP ended with status {core.milp.status!r} without a plan")
    return Plan(
        feasible=False,
        total_cost_per_hour=None,
        gpus={},
        workloads=(),
        infeasible=tuple(problems),
        warnings=(*left_out_line(problem), *warnings),
        stats=core.stats(),
        quality=ledger(problem.perf, problem.workloads, problem.recipes),
        prices={fid: fam.price_dict() for fid, fam in problem.families.items()},
        offering=problem.offering,
        allow_estimates=problem.allow_estimates,
    )
