"""The solver: options, pruning, MILP (scipy.optimize.milp / HiGHS), latency, baselines, the plan."""

from planner.solver.engine import solve
from planner.solver.options import OptionBuilder, OptionFilter, topologies, topology_name
from planner.solver.plan import Plan
from planner.solver.problem import FleetFamily, Problem, SolverOptions, Workload, build_problem

__all__ = [
    "FleetFamily",
    "OptionBuilder",
    "OptionFilter",
    "Plan",
    "Problem",
    "SolverOptions",
    "Workload",
    "build_problem",
    "solve",
    "topologies",
    "topology_name",
]
