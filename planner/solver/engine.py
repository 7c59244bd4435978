"""`solve(problem) -> Plan`: options, MILP, packing, latency check, baselines, sensitivity, diagnosis.

The steps, and why each is there:
1. options (planner.solver.options): every (model, topology, group, family, recipes, batch) a workload may
   use, pruned to the non-dominated ones;
2. the MILP (planner.solver.milp) picks one (model, topology) per workload and integer replicas per option,
   packing low-rate groups onto shared GPUs;
3. aggregate shared-GPU decisions are packed first-fit-decreasing into real GPUs;
4. a dedicated pool whose rate is covered with room to spare swaps to a lower-latency option of the same
   group and family at the same replica count and no higher price (`_prefer_lower_latency`; the MILP's cost
   is kept, only latency nobody pays for goes);
   every group's p95 is recomputed with the pools the MILP actually chose (mixed pools, shared GPUs); a group
   over its latency budget has its options' credit cut by 15% (or its shared slot forbidden) and the MILP is
   solved again, at most `latency_repair_rounds` times, so an option whose predicted p95 breaks the objective
   is not chosen;
5. the scheduler's greedy batching simulated on each dedicated pool of the plan (planner.solver.simulate) and
   reported next to the analytic p95 (mostly the lower figure; docs/benchmarks.md). Where it misses an
   objective that the bound meets (compiled pools padding short batches at high load), the plan is held to
   both: the workload's bound is held to a tighter objective, searched by re-solving (`_hold_to_simulation`),
   and the plan says what that cost; `simulated_p95_binds=False` plans on the bound alone;
   then baselines on the same data and sensitivity (what-if rates and quality floors, relaxed constraints),
   both for the problem as the plan was solved (tightened bounds included);
6. an infeasible input returns a plan with `feasible=False` and, per workload, how much of its rate the fleet
   can carry (coverage MILP), why, and what would carry it (the same problem with unlimited availability).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from planner.scenario import QualityFloor, QualityScores
from planner.solver.evidence import evidence_warnings, latency_notes, left_out_line
from planner.solver.latency import Tenant, shared_p95_s
from planner.solver.milp import (
    MilpResult,
    mixed_pool_p95_s,
    relaxation_bound,
    solve_milp,
    solve_with_availability,
)
from planner.solver.options import (
    GroupKey,
    Option,
    OptionBuilder,
    OptionFilter,
    OptionSet,
    default_recipe,
    topology_name,
)
from planner.solver.plan import (
    Baseline,
    Constraint,
    GroupPlan,
    Infeasibility,
    Plan,
    Replan,
    Sensitivity,
    SharedGpu,
    SolverStats,
    StageCell,
    WhatIf,
    WorkloadPlan,
)
from planner.solver.problem import Problem, Workload
from planner.solver.quality import ledger
from planner.solver.replan import plan_moves, plan_replicas
from planner.solver.simulate import PoolKey, simulate_workload

REPAIR_CREDIT_FACTOR = 0.85
BINDING_TOLERANCE = 2e-3


@dataclass
class _Core:
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
    """The options the plan's problem offers before latency repair cut credits: the bound's (`_with_bound`)."""

    @property
    def gap(self) -> float:
        """(cost - lower bound) / cost: how far from optimal the plan can be; NaN when no valid bound is known."""
        if not math.isfinite(self.lower_bound) or not self.cost > 0:
            return 0.0 if self.cost == 0 else math.nan
        return max(0.0, (self.cost - self.lower_bound) / self.cost)  # `_with_bound` checked bound <= cost: noise

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


def _progress(problem: Problem, message: str) -> None:
    if problem.options.progress is not None:
        problem.options.progress(message)


def _ffd(problem: Problem, fid: str, items: list[Option]) -> list[list[Option]]:
    """First-fit-decreasing packing of shared-mode options into GPUs of one family."""
    opts = problem.options
    util = opts.share_max_utilization
    mem_cap = problem.families[fid].memory_gib - opts.memory_reserve_gib
    bins: list[tuple[float, float, list[Option]]] = []
    for o in sorted(items, key=lambda o: -max(o.fraction / util, (o.memory_gib or 0.0) / mem_cap)):
        mem = o.memory_gib or 0.0
        for k, (used_u, used_m, placed) in enumerate(bins):
            if used_u + o.fraction <= util + 1e-9 and used_m + mem <= mem_cap + 1e-9:
                placed.append(o)
                bins[k] = (used_u + o.fraction, used_m + mem, placed)
                break
        else:
            bins.append((o.fraction, mem, [o]))
    return [placed for _, _, placed in bins]


def _prefer_lower_latency(
    rate: float, used: list[tuple[Option, int]], running: frozenset[tuple[str, tuple[str, ...], int]] = frozenset()
) -> list[tuple[Option, int]]:
    """The pool with each option swapped for its lowest-p95 alternative that keeps the rate covered.

    The MILP minimises $/hour only, so among covers of equal cost it may keep a batch whose formation time
    (b - 1) / rate is minutes at a low rate. An alternative a of option o (planner.solver.options, "Latency
    tie-break") costs no more per replica; n replicas of a replace n of o when
        sum_pool n' credit' - n (credit_o - credit_a) >= rate   (the MILP's cover still holds)
    and the pool's p95 (`mixed_pool_p95_s`) falls. Replica counts are unchanged and prices do not rise, so the
    plan's cost is the MILP's or lower; the p95 only falls, so no latency objective can break. When re-planning,
    an option of the running plan's kind (`running`: family, recipes, batch) stays, and an alternative of that
    kind is taken first where it covers and its p95 does not rise: the MILP counted no move for it.
    """
    pool = list(used)
    slack = sum(n * o.credit for o, n in pool) - rate
    best_p95 = mixed_pool_p95_s(rate, pool)
    for k, (o, n) in enumerate(used):
        pick: Option | None = None
        if (o.family, o.recipes, o.batch) in running:
            continue
        for a in o.alternatives.options() if o.alternatives is not None else ():
            if a.cost_per_hour > o.cost_per_hour + 1e-12 or n * (o.credit - a.credit) > slack + rate * 1e-9:
                continue
            trial = [*pool[:k], (a, n), *pool[k + 1 :]]
            p95 = mixed_pool_p95_s(rate, trial)
            if (a.family, a.recipes, a.batch) in running and p95 <= best_p95 * (1 + 1e-9):
                pick, best_p95 = a, p95
                break
            if p95 < best_p95 * (1 - 1e-9):
                pick, best_p95 = a, p95
        if pick is not None:
            slack -= n * (o.credit - pick.credit)
            pool[k] = (pick, n)
    return pool


def _cells(o: Option) -> tuple[StageCell, ...]:
    return tuple(
        StageCell(
            stage=c.stage,
            recipe=c.recipe,
            latency_ms=c.latency_ms,
            calls=calls,
            source=c.source,
            method=c.method,
            uncertainty=c.uncertainty,
            basis=c.basis,
            evidence=c.label,
            compile_s=c.compile_s,
        )
        for c, calls in zip(o.cells, o.calls, strict=True)
    )


def _solve_core(problem: Problem, builder: OptionBuilder, flt: OptionFilter) -> _Core:
    """Options + MILP + packing + latency repair (module docstring, steps 1-4), with exact packing tried where
    the fluid packing was used on few enough candidates (`_exact_packing_retry`)."""
    return _exact_packing_retry(problem, builder, flt, _solve_once(problem, builder, flt))


def _exact_packing_retry(problem: Problem, builder: OptionBuilder, flt: OptionFilter, core: _Core) -> _Core:
    """The cheaper of `core` and the same problem packed exactly, where `core` packed fluidly.

    The fluid packing charges each shared slot the larger of its time and memory share and keeps one slot per
    pool, so it can miss complementary tenants and buy a GPU more than the optimum (cheaper than the plan's own
    single-family baseline on small fleets, where that baseline packs exactly). Up to
    `exact_packing_retry_max_items` candidates the exact bin-packing MILP usually proves its optimum in well
    under a second; it gets `exact_packing_retry_s`, and whichever plan is cheaper is kept. A fluid solve that
    found no plan at all is retried too: on a fleet with limited availability its rounding can call a fleet short
    that an exact packing fits (tests/solver/test_milp_exhaustive.py found one). A fluid plan without any shared
    GPU is retried as well: the fluid columns are a heuristic subset (one slot per group, family and class, priced
    by size), so a plan that shares no GPU there can still lose to one that shares (issue 29)."""
    opts = problem.options
    if (
        core.milp is None
        or core.option_set.shared_candidates <= opts.exact_packing_max_items
        or core.option_set.shared_candidates > opts.exact_packing_retry_max_items
        or opts.exact_packing_max_items >= opts.exact_packing_retry_max_items
    ):
        return core
    exact = problem.with_options(
        exact_packing_max_items=opts.exact_packing_retry_max_items,
        time_limit_s=min(opts.time_limit_s, opts.exact_packing_retry_s),
    )
    _progress(problem, f"packing {core.option_set.shared_candidates} shared candidates exactly")
    alt = _solve_once(exact, builder, flt)
    over = core.feasible and _over_availability(problem, core)
    proven_infeasible = not alt.feasible and alt.milp is not None and alt.milp.status == "infeasible"
    if (
        alt.feasible and (not core.feasible or over or _weighted(problem, alt) < _weighted(problem, core) * (1 - 1e-9))
    ) or (
        over and proven_infeasible
    ):  # a fluid plan whose first-fit packing broke availability loses to the exact answer, even "no plan"
        alt.build_s += core.build_s
        alt.solve_s += core.solve_s
        return alt
    return core


def _over_availability(problem: Problem, core: _Core) -> bool:
    """Whether a plan uses more GPUs of a family than the fleet has (first-fit packing past the fluid count)."""
    return any((avail := problem.families[fid].available) is not None and n > avail for fid, n in core.gpus.items())


def _solve_once(problem: Problem, builder: OptionBuilder, flt: OptionFilter) -> _Core:
    """Options + MILP + packing + latency repair (module docstring, steps 1-4)."""
    started = time.perf_counter()
    option_set = builder.build(problem, flt, stop_when_unserved=flt != OptionFilter())  # a baseline's: stop early
    build_s = time.perf_counter() - started
    _progress(problem, f"options: {len(option_set.options)} after pruning ({build_s:.2f} s)")
    unserved = {wi: option_set.diagnostics[wi].reasons for wi, c in option_set.choices.items() if not c}
    if unserved:
        return _Core(feasible=False, option_set=option_set, milp=None, unserved=unserved, build_s=build_s)
    solve_s = 0.0
    bound_set = option_set
    for round_ in range(problem.options.latency_repair_rounds + 1):
        result = solve_with_availability(problem, option_set)
        solve_s += result.solve_s
        _progress(
            problem,
            f"MILP {result.status}: {result.variables} variables, {result.stages} stage(s), {result.solve_s:.2f} s",
        )
        if not result.feasible:
            return _Core(feasible=False, option_set=option_set, milp=result, build_s=build_s, solve_s=solve_s)
        core, violations = _assemble(problem, option_set, result)
        core.build_s = build_s
        core.solve_s = solve_s
        core.bound_set = bound_set  # later rounds solve a restriction of it: its bound is theirs too
        if not violations or round_ == problem.options.latency_repair_rounds:
            if violations:
                core.warnings.append(
                    "predicted p95 still above the objective after latency repair for: "
                    + ", ".join(sorted({problem.workloads[k[0]].name for k in violations}))
                )
            return core
        option_set = _repair(option_set, violations)
    raise AssertionError("unreachable")  # pragma: no cover


def _repair(option_set: OptionSet, violations: dict[GroupKey, tuple[set[str], bool]]) -> OptionSet:
    """Cut the credit of the options a late group used (mixed pools queue worse than the per-option check
    assumed) and drop its shared slots, without rebuilding the other workloads' options."""
    options = list(option_set.options)
    by_group = dict(option_set.by_group)
    for gk, (fams, was_shared) in violations.items():
        kept = []
        for i in by_group.get(gk, []):
            o = options[i]
            if o.shared and was_shared:
                continue
            if not o.shared and o.family in fams:
                alts = o.alternatives
                if alts is not None:
                    alts = replace(alts, credit_scale=alts.credit_scale * REPAIR_CREDIT_FACTOR)
                options[i] = replace(o, credit=o.credit * REPAIR_CREDIT_FACTOR, latency_bound=True, alternatives=alts)
            kept.append(i)
        by_group[gk] = kept
    return replace(option_set, options=options, by_group=by_group)


def _assemble(
    problem: Problem, option_set: OptionSet, result: MilpResult
) -> tuple[_Core, dict[GroupKey, tuple[set[str], bool]]]:
    """Turn MILP values into workload plans; return the groups whose p95 exceeds their budget."""
    options = option_set.options
    fams = problem.families
    warnings: list[str] = []
    # Shared GPUs: exact bins from the MILP, aggregate decisions packed here.
    bins: list[tuple[str, list[Option]]] = [(f, [options[i] for i in idx]) for f, idx in result.shared_bins]
    for (fid, _), (count, idx) in result.shared_fluid.items():
        packed = _ffd(problem, fid, [options[i] for i in idx])
        if len(packed) > count:
            warnings.append(
                f"shared {fid}: first-fit packing needed {len(packed)} GPUs where the MILP's fluid packing "
                f"counted {count}"
            )
        bins.extend((fid, p) for p in packed)
    chosen_groups: set[GroupKey] = set()
    for wi, (model_id, topo) in result.choices.items():
        chosen_groups.update((wi, model_id, g) for g in topo)
    shared_of: dict[GroupKey, tuple[str, Option]] = {}
    shared: list[SharedGpu] = []
    bin_cost: dict[str, float] = {}
    bin_tenant_share: dict[tuple[str, GroupKey], float] = {}
    shared_p95: dict[GroupKey, float] = {}
    counters: dict[str, int] = defaultdict(int)
    for fid, placed in bins:
        tenants: list[Option] = []
        for o in placed:  # one slot per group (the MILP may place a group's spare slot too: it costs nothing)
            if o.key in chosen_groups and o.key not in shared_of and all(t.key != o.key for t in tenants):
                tenants.append(o)
        if not tenants:
            continue
        counters[fid] += 1
        gid = f"{fid}#{counters[fid]}"
        fam = fams[fid]
        cost = fam.price_per_hour + fam.energy_cost_per_hour(None)
        bin_cost[gid] = cost
        total_phi = sum(o.fraction for o in tenants)
        p95s = shared_p95_s(
            [
                Tenant(
                    rate=problem.workloads[o.workload].rate,
                    batch=o.batch,
                    service_s=o.service_s * (1 + o.uncertainty),
                    own_p95_s=o.service_p95_s * (1 + o.uncertainty),
                )
                for o in tenants
            ]
        )
        for o, p95 in zip(tenants, p95s, strict=True):
            shared_of[o.key] = (gid, o)
            bin_tenant_share[(gid, o.key)] = o.fraction / total_phi
            shared_p95[o.key] = p95
        shared.append(
            SharedGpu(
                id=gid,
                family=fid,
                tenants=tuple((problem.workloads[o.workload].name, o.group) for o in tenants),
                utilization=total_phi,
                memory_gib=sum(o.memory_gib or 0.0 for o in tenants),
            )
        )
    dedicated: dict[GroupKey, list[tuple[Option, int]]] = defaultdict(list)
    for i, n in result.replicas.items():
        o = options[i]
        if o.key in chosen_groups:
            dedicated[o.key].append((o, n))
        else:
            warnings.append(f"unused replicas of {problem.workloads[o.workload].name} {o.group} dropped")
    kept = problem.options.running.by_group() if problem.options.running is not None else {}
    for key, pool in dedicated.items():
        w = problem.workloads[key[0]]
        running = frozenset((k[2], k[3], k[4]) for k in kept.get((w.name, key[2]), {}))
        dedicated[key] = _prefer_lower_latency(w.rate, pool, running)
    gpus: dict[str, int] = defaultdict(int)
    for pool in dedicated.values():
        for o, n in pool:
            gpus[o.family] += n
    for s in shared:
        gpus[s.family] += 1
    violations: dict[GroupKey, tuple[set[str], bool]] = {}
    plans: list[WorkloadPlan] = []
    for wi, w in enumerate(problem.workloads):
        if wi not in result.choices:
            continue
        model_id, topo = result.choices[wi]
        groups: list[GroupPlan] = []
        total_p95 = 0.0
        total_cost = 0.0
        for g in topo:
            gk: GroupKey = (wi, model_id, g)
            budget = option_set.budgets.get(gk)
            used = dedicated.get(gk, [])
            group_p95 = 0.0
            if used:
                pool_p95 = mixed_pool_p95_s(w.rate, used)
                group_p95 = max(group_p95, pool_p95)
                capacity = sum(n * o.throughput for o, n in used)
                credited = sum(n * o.credit for o, n in used)
                timeout = float((max(o.batch for o, _ in used) - 1) / w.rate)
                for o, n in used:
                    cost = n * o.cost_per_hour
                    total_cost += cost
                    groups.append(
                        GroupPlan(
                            stages=g,
                            family=o.family,
                            recipes=dict(zip(g, o.recipes, strict=True)),
                            batch=o.batch,
                            replicas=n,
                            throughput=n * o.throughput,
                            capacity_credited=n * o.credit,
                            # The scheduler routes a group's load by throughput (crud/plans.py weights),
                            # so every pool of the group runs at the group's rate over its capacity.
                            utilization=w.rate / capacity,
                            service_time_s=o.service_s,
                            service_p95_s=o.service_p95_s,
                            p95_s=pool_p95,
                            batch_timeout_s=timeout,
                            memory_gib=o.memory_gib,
                            uncertainty=o.uncertainty,
                            cost_per_hour=cost,
                            cells=_cells(o),
                            latency_bound=o.latency_bound,
                            startup_s=o.startup_s,
                        )
                    )
                if credited < w.rate * (1 - 1e-6) and gk not in shared_of:
                    warnings.append(f"{w.name} {g}: credited capacity {credited:.4g} below the rate {w.rate:g}")
            if gk in shared_of:
                gid, o = shared_of[gk]
                share = bin_tenant_share[(gid, gk)]
                cost = bin_cost[gid] * share
                total_cost += cost
                p95 = shared_p95[gk]
                group_p95 = max(group_p95, p95)
                groups.append(
                    GroupPlan(
                        stages=g,
                        family=o.family,
                        recipes=dict(zip(g, o.recipes, strict=True)),
                        batch=o.batch,
                        replicas=1,
                        throughput=o.fraction * o.throughput,
                        capacity_credited=w.rate,
                        utilization=w.rate / o.throughput,
                        service_time_s=o.service_s,
                        service_p95_s=o.service_p95_s,
                        p95_s=p95,
                        batch_timeout_s=(o.batch - 1) / w.rate,
                        memory_gib=o.memory_gib,
                        uncertainty=o.uncertainty,
                        cost_per_hour=cost,
                        cells=_cells(o),
                        shared_gpu=gid,
                        gpu_fraction=o.fraction,
                        startup_s=o.startup_s,
                    )
                )
            total_p95 += group_p95
            if budget is not None and group_p95 > budget * (1 + 1e-9):
                violations[gk] = ({o.family for o, _ in used}, gk in shared_of)
        if w.p95_latency_s is not None and total_p95 <= w.p95_latency_s * (1 + 1e-9):
            for gk in [(wi, model_id, g) for g in topo]:
                violations.pop(gk, None)  # the budget split is a device, the objective is what counts
        binding: list[Constraint] = []
        if any(gp.latency_bound for gp in groups):
            binding.append("latency")
        elif any(gp.shared_gpu is None for gp in groups):
            binding.append("capacity")
        plans.append(
            WorkloadPlan(
                name=w.name,
                model=model_id,
                topology=topology_name(topo),
                topology_groups=topo,
                rate=w.rate,
                headroom=w.headroom,
                p95_objective_s=w.p95_latency_s,
                predicted_p95_s=total_p95,
                cost_per_hour=total_cost,
                groups=tuple(groups),
                binding=tuple(binding),
            )
        )
    total = sum(p.cost_per_hour for p in plans)
    core = _Core(
        feasible=True,
        option_set=option_set,
        milp=result,
        cost=total,
        workloads=plans,
        shared=shared,
        gpus=dict(gpus),
        warnings=warnings,
    )
    for fid, count in core.gpus.items():
        avail = fams[fid].available
        if avail is not None and count > avail:
            warnings.append(f"{fid}: the plan uses {count} GPUs, the fleet has {avail} (shared packing)")
    return core, violations


# ---- baselines --------------------------------------------------------------------------------------


def _cheapest(
    problem: Problem, builder: OptionBuilder, filters: list[tuple[str, OptionFilter]]
) -> tuple[str, _Core | None]:
    best: tuple[str, _Core | None] = ("", None)
    for label, flt in filters:
        core = _solve_core(
            problem.with_options(baselines=False, sensitivity=False, latency_repair_rounds=1, running=None),
            builder,
            flt,
        )
        if core.feasible and (best[1] is None or core.cost < best[1].cost):
            best = (label, core)
    return best


BaselineCore = tuple[str, str, str, "_Core | None"]
"""(name, description, label of the winning filter, its core or None where infeasible)."""


def _baseline_cores(problem: Problem, builder: OptionBuilder) -> list[BaselineCore]:
    """Each baseline of `_baselines` solved on the same data (the cheapest of its filters)."""
    fams = sorted(problem.families)
    out: list[BaselineCore] = []
    recipes = (
        ", ".join(sorted({default_recipe(s, problem.recipes) for m in problem.models.values() for s in m.stage_names}))
        or "bf16"
    )
    specs = [
        (
            "naive",
            f"one family, default recipe ({recipes}), batch 1, stages together, dedicated GPUs",
            [
                (
                    f,
                    OptionFilter(
                        families=frozenset({f}),
                        together_only=True,
                        batch_one=True,
                        default_recipes=True,
                        share=False,
                    ),
                )
                for f in fams
            ],
        ),
        (
            "single-family",
            "the best single family; recipes, batch, topology and sharing free",
            [(f, OptionFilter(families=frozenset({f}))) for f in fams],
        ),
        (
            "gpu-mix-together",
            "a GPU mix with each workload's stages together on one GPU (Melange's formulation)",
            [("mix", OptionFilter(together_only=True))],
        ),
    ]
    for name, description, filters in specs:
        label, core = _cheapest(problem, builder, filters)
        out.append((name, description, label, core))
    return out


def _baselines(found: list[BaselineCore], cost: float) -> list[Baseline]:
    """The baselines as the plan reports them, each with what the plan saves against it."""
    out: list[Baseline] = []
    for name, description, label, core in found:
        if core is None:
            out.append(Baseline(name, description, False, None, None, note="infeasible on this fleet"))
            continue
        saving = 1 - cost / core.cost if core.cost > 0 else 0.0
        note = f"family {label}" if label != "mix" else ""
        out.append(Baseline(name, description, True, core.cost, saving, gpus=dict(core.gpus), note=note))
    return out


def _weighted(problem: Problem, core: _Core) -> float:
    """A core's $/hour plus, when re-planning from a running plan, the move cost of the replicas it moves."""
    running = problem.options.running
    if running is None or problem.options.move_cost_per_hour <= 0:
        return core.cost
    return core.cost + problem.options.move_cost_per_hour * plan_moves(running, plan_replicas(core.workloads)).total


def _replan(problem: Problem, builder: OptionBuilder, core: _Core) -> Replan | None:
    """What a re-plan from the running plan moves, and what a fresh solve would have moved and cost."""
    running = problem.options.running
    if running is None:
        return None
    _progress(problem, "re-plan: solving fresh to say what the moves saved")
    fresh = _solve_core(problem.with_options(running=None, baselines=False, sensitivity=False), builder, OptionFilter())
    return Replan(
        move_cost_per_hour=problem.options.move_cost_per_hour,
        moves=plan_moves(running, plan_replicas(core.workloads)),
        fresh_cost_per_hour=fresh.cost if fresh.feasible else None,
        fresh_moves=plan_moves(running, plan_replicas(fresh.workloads)) if fresh.feasible else None,
        cost_per_hour=core.cost,
    )


def _no_dearer_than_baselines(
    problem: Problem, core: _Core, found: list[BaselineCore], cache: dict[PoolKey, float] | None = None
) -> tuple[_Core, list[str]]:
    """The plan, or the cheapest baseline's plan where that costs less (with a line saying so).

    Every baseline is a restriction of the plan's problem, so the plan's optimum is never dearer; a heuristic
    step (fluid packing past `exact_packing_retry_max_items` candidates, a time limit) can still leave it
    dearer, and a plan that prints a negative saving against its own baseline helps nobody."""
    cheaper = [(_weighted(problem, c), name, label, c) for name, _, label, c in found if c is not None and c.feasible]
    if not cheaper:
        return core, []
    _, name, label, best = min(cheaper, key=lambda t: t[0])
    cost = best.cost
    if _weighted(problem, best) >= _weighted(problem, core) * (1 - 1e-9) or cost >= core.cost * (1 - 1e-9):
        return core, []
    note = (
        f"the solver's plan (${core.cost:.2f}/h) cost more than its {name} baseline"
        + (f" ({label})" if label != "mix" else "")
        + f" (${cost:.2f}/h); that baseline's plan is returned (a heuristic step of the full solve, such as "
        "fluid packing of many shared candidates or a time limit, missed it)"
    )
    # The bound stays the full problem's: the baseline's own options are a restriction of it.
    return replace(_simulated(problem, best, cache), warnings=[*best.warnings], bound_set=core.bound_set), [note]


# ---- sensitivity ------------------------------------------------------------------------------------


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


def _what_if(problem: Problem, builder: OptionBuilder, flt: OptionFilter | None = None) -> _Core:
    quick = problem.with_options(baselines=False, sensitivity=False, running=None)
    return _solve_core(quick, builder, flt or OptionFilter())


def _sensitivity(
    problem: Problem, builder: OptionBuilder, core: _Core
) -> tuple[Sensitivity, dict[str, set[Constraint]]]:
    rates = []
    for factor in problem.options.what_if_rates:
        scaled = problem.with_workloads([replace(w, rate=w.rate * factor) for w in problem.workloads])
        alt = _what_if(scaled, builder)
        rates.append(WhatIf(f"rates x{factor:g}", alt.cost if alt.feasible else None))
    quality: list[WhatIf] = []
    has_floor = any(w.quality is not None or w.quality_scores is not None for w in problem.workloads)
    no_floor = problem.with_workloads([replace(w, quality=None, quality_scores=None) for w in problem.workloads])
    if has_floor:
        alt = _what_if(no_floor, builder)
        quality.append(WhatIf("no quality floor", alt.cost if alt.feasible else None))
        strict = problem.with_workloads([_stricter(w) for w in problem.workloads])
        alt = _what_if(strict, builder)
        quality.append(
            WhatIf("stricter floor (SSIM +0.01, PSNR +1 dB, score +0.05)", alt.cost if alt.feasible else None)
        )
    relaxations: list[tuple[Constraint, Problem, OptionFilter | None]] = []
    if any(f.available is not None for f in problem.families.values()):
        relaxations.append(
            (
                "availability",
                replace(problem, families={k: replace(f, available=None) for k, f in problem.families.items()}),
                None,
            )
        )
    if any(w.p95_latency_s is not None for w in problem.workloads):
        relaxations.append(
            (
                "latency",
                problem.with_workloads([replace(w, p95_latency_s=None) for w in problem.workloads]),
                None,
            )
        )
    relaxations.append(("memory", problem, OptionFilter(ignore_memory=True)))
    if has_floor:
        relaxations.append(("quality", no_floor, None))
    relaxed: list[tuple[Constraint, WhatIf]] = []
    binding: list[Constraint] = ["capacity"]
    per_workload: dict[str, set[Constraint]] = defaultdict(set)
    for constraint, alt_problem, flt in relaxations:
        alt = _what_if(alt_problem, builder, flt)
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


def _describe_gpus(counts: dict[str, int]) -> str:
    return " + ".join(f"{n} {f}" for f, n in sorted(counts.items())) or "no GPUs"


def _infeasible_plan(problem: Problem, builder: OptionBuilder, core: _Core) -> Plan:
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
        need = _what_if(unlimited, builder)
        for wi, w in enumerate(rest):
            frac = cover.coverage.get(wi, 0.0) if cover.feasible else 0.0
            if frac >= 1 - 1e-6:
                continue
            used: dict[str, int] = defaultdict(int)
            for i, n in cover.replicas.items():
                if option_set.options[i].workload == wi:
                    used[option_set.options[i].family] += n
            carried = f"the fleet's {_describe_gpus(used)}" if used else "the fleet"
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
                        f"{_describe_gpus(need.gpus)}"
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


# ---- entry point ------------------------------------------------------------------------------------


def solve(problem: Problem, *, builder: OptionBuilder | None = None) -> Plan:
    """The cheapest plan that carries every workload's rate within its latency objective and quality floor."""
    builder = builder or OptionBuilder(problem.perf, problem.models, problem.recipes)
    core = _solve_core(problem, builder, OptionFilter())
    if not core.feasible:
        return _infeasible_plan(problem, builder, core)
    sim_cache: dict[PoolKey, float] = {}
    core = _simulated(problem, core, sim_cache)
    asked: Problem = problem
    held: list[str] = []
    if problem.options.simulate_p95 and problem.options.simulated_p95_binds:
        asked, core, held = _hold_to_simulation(problem, builder, core, sim_cache)
    # Baselines and sensitivity answer for the problem the plan was solved for (tightened bounds included), so
    # their costs compare with the plan's.
    baselines: list[Baseline] = []
    swapped: list[str] = []
    if problem.options.baselines:
        _progress(problem, "baselines")
        found = _baseline_cores(asked, builder)
        core, swapped = _no_dearer_than_baselines(asked, core, found, sim_cache)
        baselines = _baselines(found, core.cost)
    core = _with_bound(asked, core)
    replan = _replan(asked, builder, core)
    sensitivity = None
    workloads = core.workloads
    if problem.options.sensitivity:
        _progress(problem, "sensitivity")
        sensitivity, per_workload = _sensitivity(asked, builder, core)
        workloads = [
            replace(w, binding=tuple(dict.fromkeys([*w.binding, *sorted(per_workload.get(w.name, set()))])))
            for w in workloads
        ]
    workloads = [_with_users_objective(wp, problem) for wp in workloads]
    return Plan(
        feasible=True,
        batching=problem.options.batching,  # the workers serving the plan run what it was simulated with
        total_cost_per_hour=core.cost,
        gpus=core.gpus,
        workloads=tuple(workloads),
        shared_gpus=tuple(core.shared),
        baselines=tuple(baselines),
        sensitivity=sensitivity,
        # Evidence first (what the plan rests on), then latency stated where there is no objective, then the
        # rest; `held` lines with the bound's own problem back mean the search gave up: say so in the miss's fix.
        warnings=(
            *evidence_warnings(workloads, allow_estimates=problem.allow_estimates),
            *left_out_line(problem),
            *latency_notes(workloads),
            *core.warnings,
            *held,
            *swapped,
            *_simulation_warnings(workloads, tried=bool(held) and asked is problem),
        ),
        stats=core.stats(),
        quality=ledger(problem.perf, problem.workloads, problem.recipes),
        prices={fid: fam.price_dict() for fid, fam in problem.families.items()},
        offering=problem.offering,
        allow_estimates=problem.allow_estimates,
        replan=replan,
    )


def _with_bound(problem: Problem, core: _Core) -> _Core:
    """The core with a lower bound valid for the problem its plan solves (planner.solver.milp.relaxation_bound).

    Computed once, on the final plan: the options before latency repair (a relaxation of every repaired round),
    with the packing relaxed so that first-fit bins, exact bins and dropped replicas all stay feasible in it. A
    bound above the cost means the plan left the options it was solved over (a bug, or an energy-priced
    latency tie-break): the gap is then reported unknown (NaN) with a warning, never clamped to zero."""
    if not core.feasible or core.bound_set is None:
        return core
    _progress(problem, "lower bound (LP relaxation)")
    bound = relaxation_bound(problem, core.bound_set)
    warnings = core.warnings
    if math.isfinite(bound) and bound > core.cost * (1 + 1e-7) + 1e-9:
        warnings = [
            *warnings,
            f"the lower bound ${bound:.2f}/h is above the plan's cost ${core.cost:.2f}/h, so it is not a bound of "
            "the problem this plan solves: the optimality gap is unknown",
        ]
        bound = math.nan
    return replace(core, lower_bound=bound, warnings=warnings)


def _simulated(problem: Problem, core: _Core, cache: dict[PoolKey, float] | None = None) -> _Core:
    """The core with every workload's pools simulated (step 5); unchanged when the simulation is off. `cache`
    (one per `solve`) keeps the pools already simulated, so a re-solve simulates only the pools it changes."""
    if not problem.options.simulate_p95:
        return core
    _progress(problem, "simulating the scheduler's batching")
    by_name = {w.name: w for w in problem.workloads}
    opts = problem.options
    return replace(
        core,
        workloads=[
            simulate_workload(
                problem,
                by_name[wp.name],
                wp,
                wait_s=opts.batch_wait_s,
                compiled_batches=opts.compiled_batches,
                cache=cache,
            )
            for wp in core.workloads
        ],
    )


def _misses(core: _Core, objectives: dict[str, float | None]) -> dict[str, float]:
    """Workloads whose simulated p95 is over their (user's) objective while the bound meets the bound's own."""
    out: dict[str, float] = {}
    for wp in core.workloads:
        objective, sim = objectives.get(wp.name), wp.simulated_p95_s
        if objective is not None and sim is not None and wp.meets_latency and sim > objective * (1 + 1e-9):
            out[wp.name] = sim
    return out


def _hold_to_simulation(
    problem: Problem, builder: OptionBuilder, core: _Core, cache: dict[PoolKey, float] | None = None
) -> tuple[Problem, _Core, list[str]]:
    """The cheapest plan found whose bound and simulated batching both meet every objective (step 5).

    The bound is the MILP's constraint; the simulation has no closed form to put there, so the bound's objective
    is searched instead. Tighten: where the simulation misses objective L with p95 S > L, the workload's bound is
    held to L' = L' x L / S (starting from L' = L) and the problem solved again, at most
    `simulation_repair_rounds` times; the bound's plan at a smaller L' batches less or buys replicas, and its
    simulation falls. Back off: the bound's plans are steps, so the first L' that meets may buy more than
    needed; as many rounds again bisect (geometrically) between the last L' that missed and the best that met,
    keeping a plan that meets at no higher cost (and, where the first tightening left the fleet no plan, looking
    between the two for one). Returns the problem the plan was solved for (the tightened objectives), its core,
    and one line per tightened workload saying what it cost; where no round meets every objective, the bound's
    plan, with a line saying so (and `_simulation_warnings` its miss)."""
    objectives = {w.name: w.p95_latency_s for w in problem.workloads}
    misses = _misses(core, objectives)
    if not misses:
        return problem, core, []
    rounds = problem.options.simulation_repair_rounds

    def attempt(asked: Mapping[str, float | None]) -> tuple[Problem, _Core | None, dict[str, float]]:
        current = problem.with_workloads([replace(w, p95_latency_s=asked[w.name]) for w in problem.workloads])
        _progress(current, "holding the plan to the simulated batching: solving again with tighter bounds")
        alt = _solve_core(current, builder, OptionFilter())
        if not alt.feasible:
            return current, None, {}
        alt = _simulated(current, alt, cache)
        return current, alt, _misses(alt, objectives)

    asked: dict[str, float | None] = dict(objectives)
    missed: dict[str, float] = {}  # per tightened workload, the loosest bound objective known to miss
    tight: dict[str, float | None] | None = None  # the bound objectives known to meet, or to leave no plan
    best: tuple[Problem, _Core, dict[str, float | None]] | None = None
    for _ in range(rounds):
        for name, sim in misses.items():
            objective, bound = objectives[name], asked[name]
            assert objective is not None  # a miss needs an objective
            assert bound is not None
            missed[name] = bound
            asked[name] = bound * objective / sim
        current, alt, misses = attempt(asked)
        if alt is None or not misses:
            tight = dict(asked)
            if alt is not None:
                best = (current, alt, tight)
            break
    for _ in range(rounds):
        if tight is None:
            break
        trial: dict[str, float | None] = dict(tight)
        for name, loose in missed.items():
            bound = tight[name]
            assert bound is not None
            trial[name] = math.sqrt(bound * loose)
        current, alt, misses = attempt(trial)
        if alt is not None and misses:
            missed = {name: trial[name] or loose for name, loose in missed.items()}
            continue
        tight = trial
        if alt is not None and (best is None or alt.cost <= best[1].cost * (1 + 1e-9)):
            best = (current, alt, trial)
    if best is None:
        outcome = "before the fleet ran out of plans" if tight is not None else f"within {rounds} re-solve(s)"
        tried = ", ".join(f"{n} (down to {asked[n]:.3g} s)" for n in sorted(missed))
        return (
            problem,
            core,
            [f"holding the analytic bound to tighter objectives found no plan whose simulated batching meets them "
             f"{outcome}: {tried}; the plan below is the bound's."],
        )  # fmt: skip
    current, alt, met = best
    first = {wp.name: wp for wp in core.workloads}
    notes = []
    for name in sorted(missed):
        was, now = first[name], _workload(alt, name)
        notes.append(
            f"{name}: the scheduler's batching, simulated on the bound's plan, gives a p95 of "
            f"{was.simulated_p95_s or 0:.2f} s against the objective {objectives[name]:g} s; the plan holds "
            f"the analytic bound to {met[name] or 0:.3g} s instead, where the simulation gives "
            f"{now.simulated_p95_s or 0:.2f} s ({_dollars(now.cost_per_hour - was.cost_per_hour)}/h for this "
            "workload). To plan on the bound alone: `solver: {simulated_p95_binds: false}` in a scenario."
        )
    return current, alt, notes


def _dollars(delta: float) -> str:
    return f"{'-' if delta < 0 else '+'}${abs(delta):.2f}"


def _workload(core: _Core, name: str) -> WorkloadPlan:
    return next(w for w in core.workloads if w.name == name)


def _with_users_objective(wp: WorkloadPlan, problem: Problem) -> WorkloadPlan:
    """The workload's plan with the user's objective, and the bound's own where the plan tightened it."""
    objective = next(w.p95_latency_s for w in problem.workloads if w.name == wp.name)
    if wp.p95_objective_s == objective:
        return wp
    return replace(wp, p95_objective_s=objective, bound_objective_s=wp.p95_objective_s)


def _simulation_warnings(workloads: list[WorkloadPlan], *, tried: bool) -> list[str]:
    """Where the workers' batching, simulated, misses an objective that the analytic bound says is met.

    The bound is usually the higher figure; it is not where compiled pools pad short batches up to a warmed
    size (docs/benchmarks.md, the p95 grid), and a reviewer should hear of that before buying. `tried`: the
    solver already held the bound to tighter objectives (`_hold_to_simulation`) and found nothing better."""
    out: list[str] = []
    for w in workloads:
        sim, objective = w.simulated_p95_s, w.p95_objective_s
        if sim is not None and objective is not None and w.meets_latency and sim > objective * (1 + 1e-9):
            fix = (
                "Fix: relax the objective, or allow faster recipes or families"
                if tried
                else f"Fix: ask for about {objective * w.predicted_p95_s / sim:.3g} s (the objective scaled by "
                "bound/simulated) so the solver buys the margin"
            )
            out.append(
                f"{w.name}: the scheduler's batching, simulated on this plan, gives a p95 of {sim:.2f} s, above "
                f"the objective {objective:g} s (the analytic bound says {w.predicted_p95_s:.2f} s). {fix}, or "
                "measure the plan on real workers (benchmarks/e2e_gpu.py)."
            )
    return out
