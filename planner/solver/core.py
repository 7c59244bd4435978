"""One solve's result as the engine passes it between steps (`Core`), and what every step shares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.solver.milp import MilpResult
from planner.solver.options import OptionSet
from planner.solver.plan import SharedGpu, SolverStats, WorkloadPlan
from planner.solver.problem import Problem
from planner.solver.replan import plan_moves, plan_replicas

REPAIR_CREDIT_FACTOR = 0.85
BINDING_TOLERANCE = 2e-3


@dataclass
class Core:
    """One solve of the MILP with its post-processing."""

    feasible: bool
    option_set: OptionSet
    milp: MilpResult | None
    cost: float = math.nan
    workloads: list[WorkloadPlan] = field(default_factory=list)
    shared: list[SharedGpu] = field(default_factory=list)
    gpus: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unserved: dict[int, list[str]] = field(default_factory=dict)
    build_s: float = 0.0
    lower_bound: float = math.nan
    solve_s: float = 0.0
    bound_set: OptionSet | None = None
    """The options the plan's problem offers before latency repair cut credits: the bound's (`engine._with_bound`)."""

    @property
    def gap(self) -> float:
        """(cost - lower bound) / cost: how far from optimal the plan can be; NaN when no valid bound is known."""
        if not math.isfinite(self.lower_bound) or not self.cost > 0:
            return 0.0 if self.cost == 0 else math.nan
        return max(0.0, (self.cost - self.lower_bound) / self.cost)  # `engine._with_bound` checked bound <= cost: noise

    def stats(self) -> SolverStats | None:
        """What the MILP did, for the plan (None when no MILP ran)."""
        if self.milp is None:
            return None
        return SolverStats(
            status=self.milp.status,
            solve_s=self.solve_s,
            build_s=self.build_s,
            options=len(self.option_set.options),
            variables=self.milp.variables,
            constraints=self.milp.constraints,
            mip_gap=self.gap,
            objective=self.milp.objective,
            lower_bound=self.lower_bound,
        )

    def workload_cost(self, name: str) -> float | None:
        for w in self.workloads:
            if w.name == name:
                return w.cost_per_hour
        return None


def progress(problem: Problem, message: str) -> None:
    if problem.options.progress is not None:
        problem.options.progress(message)


def weighted(problem: Problem, core: Core) -> float:
    """A core's $/hour plus, when re-planning from a running plan, the move cost of the replicas it moves."""
    running = problem.options.running
    if running is None or problem.options.move_cost_per_hour <= 0:
        return core.cost
    return core.cost + problem.options.move_cost_per_hour * plan_moves(running, plan_replicas(core.workloads)).total
