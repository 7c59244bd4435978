"""The solver's defaults that more than one layer states: the solver's options (planner.solver.problem
`SolverOptions`), a scenario's `solver:` section (planner.scenario), the service's settings (planner.core.config)
and its solve request (planner.schemas.plans) all read them here, so a default changes in one place.
The batching policy's defaults live with the policy (planner.core.batching)."""

from __future__ import annotations

from typing import Final

MEMORY_RESERVE_GIB: Final = 2.0
"""GPU memory a plan leaves free on every GPU (CUDA context, allocator fragmentation)."""
SHARE_GPUS: Final = True
SHARE_MAX_UTILIZATION: Final = 0.7
MIP_REL_GAP: Final = 1e-3
TIME_LIMIT_S: Final = 60.0
WHAT_IF_RATES: Final = (0.5, 2.0)
SIMULATED_P95_BINDS: Final = True
