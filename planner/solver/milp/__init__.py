r"""The plan as a mixed-integer linear program, solved with scipy.optimize.milp (HiGHS).

Sets
    W                 workloads; lambda_w its rate (images/s)
    K(w)              its choices k = (model, topology) that have options for every group
    G                 group keys (w, model, group); G(k) the groups of choice k
    D(G), S(G)        dedicated and shared-mode options of group key G (planner.solver.options)
    P(G)              cover patterns of G: integer replica counts n_p,o >= 0 over D(G) with
                      sum_o credit_o n_p,o >= lambda_w (see "Patterns" below)
    F                 fleet families; A_f availability (None = unlimited), M_f memory less the reserve
Parameters
    credit_o          credited images/s of one dedicated replica (headroom, uncertainty, latency applied)
    price_o           $/replica-hour (family price + energy where the fleet sets $/kWh)
    cost_p = sum_o price_o n_p,o ;  use_p,f = sum_{o of family f} n_p,o
    phi_o, mem_o      share of a GPU's time and GiB that a shared-mode option needs
Variables
    z_k  in {0,1}     workload w gets choice k
    y_p  in {0,1}     group G is served by dedicated pattern p
    n_o  in Z+        dedicated replicas of option o, for a group whose patterns were too many to list
    shared GPUs are pooled by (family f, service-time class) so co-tenants' batches take similar times;
    shared, exact (problems with at most `exact_packing_max_items` shared candidates in all):
      x_ob in {0,1}   option o placed on shared GPU b of its pool; u_b in {0,1} GPU b is used
    shared, fluid (problems with more):
      q_o in {0,1}    group served by shared-mode option o;  s_pool in Z+ shared GPUs of the pool
Constraints
    (assign)    sum_{k in K(w)} z_k = 1                                             for every w
    (cover)     sum_{p in P(G)} y_p + sum_{o in S(G)} (q_o or sum_b x_ob) - sum_{k : G in G(k)} z_k >= 0
                (a group under a p95 objective has its pure patterns, c* replicas of one option, and the
                mixed covers whose pool p95 meets the group's budget: an objective that cannot bind leaves
                the patterns as they are without it; `group_patterns`)
                (a group without patterns: sum_o min(1, credit_o / lambda_w) n_o in place of sum_p y_p)
    (avail)     sum_p use_p,f y_p + sum_o n_o + (s_f or sum_b u_fb) <= A_f          for f with a limit
    (pack, exact)  sum_b x_ob <= 1;  sum_o phi_o x_ob <= U u_fb;  sum_o mem_o x_ob <= M_f u_fb;
                   u_fb <= u_f(b-1)  (symmetry)
    (pack, fluid)  sum_{o in pool} size_o q_o <= s_pool,   size_o = max(phi_o / U, mem_o / M_f);
                   q_o <= s_pool  (valid: an open pool has a whole GPU; it tightens the LP bound);
                   sum_{o: phi_o / U > 1/2} q_o <= s_pool, and the same for memory (valid: two such
                   tenants never share a GPU; keeps the fluid count from under-counting first-fit)
Objective
    minimise  sum_p cost_p y_p + sum_o price_o n_o + sum_f price_f (s_f or sum_b u_fb)     [$ / hour]

Patterns (`patterns`): a group's integer covers listed up front, exact, so the LP relaxation no longer rounds
replicas fractionally.

Packing. The exact model is bin packing; the tests compare it with brute force. The fluid model charges each
shared slot the larger of its time and memory share of a GPU: a restriction of two-dimensional packing that
ignores complementary tenants, near-exact for the small slots sharing is for; `planner.solver.engine` packs
its result first-fit-decreasing and reports any GPU it had to add. Rounding each fluid pool up to whole GPUs
is what makes a large exact MILP slow (branch and bound must prove that no choice of tenants fills the pools
better), so large problems are solved in two stages (`solve_with_availability`): stage 1 with continuous
pool counts s_pool (plus q_o <= s_pool, so an opened pool still costs a whole GPU) gives a plan and a lower
bound on the fluid model's cost; stage 2 (`rounding`) rounds each pool down or
up greedily, filling the room a round-up leaves or moving tenants out to round down.
Stage 1 itself solves the LP relaxation first (with pattern covers it is nearly integral: 16 fractional
columns of 28,000 at 1,000 workloads), fixes every workload whose columns came out integral, and solves the
MILP of the rest; the LP value is stage 1's bound. That bound is the fluid model's, not the problem's
(the fluid size undercounts complementary tenants, and first-fit can then beat it), so the plan's reported gap
is against `relaxation_bound`: a relaxed packing every plan from the options satisfies.

Columns left out before the solve (`columns.select_columns`): a dedicated option when another option of the same
group on a family without an availability limit costs no more per replica and credits no less (exact
dominance); in fluid pools, all but the smallest slot of a (group, pool), and a slot when a no-more-expensive
slot (price x size) of the same group and class exists on a family without a limit. The last is a heuristic
(a pool's first GPU is a fixed cost the price x size ignores), one reason the engine retries a fluid solve with
exact packing where the candidates are few enough (planner.solver.engine).

Coverage mode (for an infeasible fleet): integer n_o columns everywhere, z_k bounds a continuous coverage
v_k in [0, 1] that replaces z_k in (cover), (assign) becomes sum_k z_k <= 1, and the objective maximises
sum_k v_k - epsilon x cost: how much of each workload's rate the fleet can carry.

Modules: `model` (a named-row/column model over scipy.optimize.milp that dumps as LP text or JSON), `patterns`
(cover patterns), `columns` (which options get columns; choice and dedicated columns), `packing` (shared columns
and packing rows), `moves` (re-plan move costs), `solve` (formulation, solve, the two-stage and availability
loops), `rounding` (stage 2), `bound` (the relaxation the gap is measured against), `result` (`MilpResult`).
"""

from __future__ import annotations

from planner.solver.milp.bound import BOUND_INTEGRAL_MAX_VARS, bound_model, relaxation_bound
from planner.solver.milp.columns import select_columns
from planner.solver.milp.model import Model
from planner.solver.milp.moves import MoveCosts, move_costs
from planner.solver.milp.patterns import PATTERN_LIMIT, Pattern, cover_patterns, group_patterns, mixed_pool_p95_s
from planner.solver.milp.result import MilpResult, Pool, usage
from planner.solver.milp.solve import PRESOLVE_CHECK_MAX_COLUMNS, formulate, solve_milp, solve_with_availability

__all__ = [
    "BOUND_INTEGRAL_MAX_VARS",
    "PATTERN_LIMIT",
    "PRESOLVE_CHECK_MAX_COLUMNS",
    "MilpResult",
    "Model",
    "MoveCosts",
    "Pattern",
    "Pool",
    "bound_model",
    "cover_patterns",
    "formulate",
    "group_patterns",
    "mixed_pool_p95_s",
    "move_costs",
    "relaxation_bound",
    "select_columns",
    "solve_milp",
    "solve_with_availability",
    "usage",
]
