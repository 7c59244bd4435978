"""MILP values into workload plans: shared GPUs packed, dedicated pools with the latency tie-break, each
group's p95 checked against its budget (planner.solver.engine, steps 3-4)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from planner.solver.core import Core
from planner.solver.latency import Tenant, shared_p95_s
from planner.solver.milp import MilpResult, mixed_pool_p95_s
from planner.solver.options import Group, GroupKey, Option, OptionSet, Topology, topology_name
from planner.solver.plan import Constraint, GroupPlan, SharedGpu, StageCell, WorkloadPlan
from planner.solver.problem import Problem, Workload


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


def prefer_lower_latency(
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


Violations = dict[GroupKey, tuple[set[str], bool]]
"""Groups over their latency budget: the families of their dedicated pools, and whether a shared slot served."""


@dataclass(frozen=True)
class _Slot:
    """A group's slot on a shared GPU: the GPU, the option, its share of the GPU's cost and its p95."""

    gpu: str
    option: Option
    cost: float
    p95: float


def assemble(problem: Problem, option_set: OptionSet, result: MilpResult) -> tuple[Core, Violations]:
    """Turn MILP values into workload plans; return the groups whose p95 exceeds their budget."""
    options = option_set.options
    warnings: list[str] = []
    chosen: set[GroupKey] = {(wi, m, g) for wi, (m, topo) in result.choices.items() for g in topo}
    shared, slots = _shared_gpus(problem, options, result, chosen, warnings)
    dedicated = _dedicated_pools(problem, options, result, chosen, warnings)
    gpus: dict[str, int] = defaultdict(int)
    for pool in dedicated.values():
        for o, n in pool:
            gpus[o.family] += n
    for sg in shared:
        gpus[sg.family] += 1
    violations: Violations = {}
    plans = [
        _workload_plan(problem, option_set, wi, result.choices[wi], dedicated, slots, violations, warnings)
        for wi in range(len(problem.workloads))
        if wi in result.choices
    ]
    core = Core(
        feasible=True,
        option_set=option_set,
        milp=result,
        cost=sum(p.cost_per_hour for p in plans),
        workloads=plans,
        shared=shared,
        gpus=dict(gpus),
        warnings=warnings,
    )
    for fid, count in core.gpus.items():
        avail = problem.families[fid].available
        if avail is not None and count > avail:
            warnings.append(f"{fid}: the plan uses {count} GPUs, the fleet has {avail} (shared packing)")
    return core, violations


def _shared_bins(
    problem: Problem, options: list[Option], result: MilpResult, warnings: list[str]
) -> list[tuple[str, list[Option]]]:
    """Shared GPUs: the MILP's exact bins, and its aggregate (fluid) decisions packed first-fit here."""
    bins: list[tuple[str, list[Option]]] = [(f, [options[i] for i in idx]) for f, idx in result.shared_bins]
    for (fid, _), (count, idx) in result.shared_fluid.items():
        packed = _ffd(problem, fid, [options[i] for i in idx])
        if len(packed) > count:
            warnings.append(
                f"shared {fid}: first-fit packing needed {len(packed)} GPUs where the MILP's fluid packing "
                f"counted {count}"
            )
        bins.extend((fid, p) for p in packed)
    return bins


def _shared_gpus(
    problem: Problem, options: list[Option], result: MilpResult, chosen: set[GroupKey], warnings: list[str]
) -> tuple[list[SharedGpu], dict[GroupKey, _Slot]]:
    """The shared GPUs with their tenants (one slot per chosen group: the MILP may place a group's spare slot
    too, which costs nothing), and each tenant's slot with its cost share and p95."""
    slots: dict[GroupKey, _Slot] = {}
    shared: list[SharedGpu] = []
    counters: dict[str, int] = defaultdict(int)
    for fid, placed in _shared_bins(problem, options, result, warnings):
        tenants: list[Option] = []
        for o in placed:
            if o.key in chosen and o.key not in slots and all(t.key != o.key for t in tenants):
                tenants.append(o)
        if not tenants:
            continue
        counters[fid] += 1
        gid = f"{fid}#{counters[fid]}"
        fam = problem.families[fid]
        cost = fam.price_per_hour + fam.energy_cost_per_hour(None)
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
            slots[o.key] = _Slot(gid, o, cost * (o.fraction / total_phi), p95)
        shared.append(
            SharedGpu(
                id=gid,
                family=fid,
                tenants=tuple((problem.workloads[o.workload].name, o.group) for o in tenants),
                utilization=total_phi,
                memory_gib=sum(o.memory_gib or 0.0 for o in tenants),
            )
        )
    return shared, slots


def _dedicated_pools(
    problem: Problem, options: list[Option], result: MilpResult, chosen: set[GroupKey], warnings: list[str]
) -> dict[GroupKey, list[tuple[Option, int]]]:
    """Each chosen group's dedicated replicas, with the latency tie-break applied (`prefer_lower_latency`);
    replicas of groups no chosen topology uses are dropped with a warning."""
    dedicated: dict[GroupKey, list[tuple[Option, int]]] = defaultdict(list)
    for i, n in result.replicas.items():
        o = options[i]
        if o.key in chosen:
            dedicated[o.key].append((o, n))
        else:
            warnings.append(f"unused replicas of {problem.workloads[o.workload].name} {o.group} dropped")
    kept = problem.options.running.by_group() if problem.options.running is not None else {}
    for key, pool in dedicated.items():
        w = problem.workloads[key[0]]
        running = frozenset((k[2], k[3], k[4]) for k in kept.get((w.name, key[2]), {}))
        dedicated[key] = prefer_lower_latency(w.rate, pool, running)
    return dedicated


def _workload_plan(
    problem: Problem,
    option_set: OptionSet,
    wi: int,
    choice: tuple[str, Topology],
    dedicated: dict[GroupKey, list[tuple[Option, int]]],
    slots: dict[GroupKey, _Slot],
    violations: Violations,
    warnings: list[str],
) -> WorkloadPlan:
    """One workload's plan: its groups' pools and slots, its p95 (the sum over groups of each group's worst),
    and the groups over their budget added to `violations` unless the whole objective is met."""
    w = problem.workloads[wi]
    model_id, topo = choice
    groups: list[GroupPlan] = []
    total_p95 = 0.0
    total_cost = 0.0
    for g in topo:
        gk: GroupKey = (wi, model_id, g)
        used = dedicated.get(gk, [])
        group_p95 = 0.0
        if used:
            pool_plans, group_p95 = _pool_plans(w, g, used)
            groups.extend(pool_plans)
            for gp in pool_plans:
                total_cost += gp.cost_per_hour
            credited = sum(n * o.credit for o, n in used)
            if credited < w.rate * (1 - 1e-6) and gk not in slots:
                warnings.append(f"{w.name} {g}: credited capacity {credited:.4g} below the rate {w.rate:g}")
        if gk in slots:
            slot = slots[gk]
            total_cost += slot.cost
            group_p95 = max(group_p95, slot.p95)
            groups.append(_slot_plan(w, g, slot))
        total_p95 += group_p95
        budget = option_set.budgets.get(gk)
        if budget is not None and group_p95 > budget * (1 + 1e-9):
            violations[gk] = ({o.family for o, _ in used}, gk in slots)
    if w.p95_latency_s is not None and total_p95 <= w.p95_latency_s * (1 + 1e-9):
        for g in topo:
            violations.pop((wi, model_id, g), None)  # the budget split is a device, the objective is what counts
    binding: list[Constraint] = []
    if any(gp.latency_bound for gp in groups):
        binding.append("latency")
    elif any(gp.shared_gpu is None for gp in groups):
        binding.append("capacity")
    return WorkloadPlan(
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


def _pool_plans(w: Workload, g: Group, used: list[tuple[Option, int]]) -> tuple[list[GroupPlan], float]:
    """A group's dedicated pools as plan rows, and the group's pool p95 (one queue over all its replicas)."""
    pool_p95 = mixed_pool_p95_s(w.rate, used)
    capacity = sum(n * o.throughput for o, n in used)
    timeout = float((max(o.batch for o, _ in used) - 1) / w.rate)
    out = []
    for o, n in used:
        out.append(
            GroupPlan(
                stages=g,
                family=o.family,
                recipes=dict(zip(g, o.recipes, strict=True)),
                batch=o.batch,
                replicas=n,
                throughput=n * o.throughput,
                capacity_credited=n * o.credit,
                # The scheduler routes a group's load by throughput (crud/plans.py weights), so every pool of
                # the group runs at the group's rate over its capacity.
                utilization=w.rate / capacity,
                service_time_s=o.service_s,
                service_p95_s=o.service_p95_s,
                p95_s=pool_p95,
                batch_timeout_s=timeout,
                memory_gib=o.memory_gib,
                uncertainty=o.uncertainty,
                cost_per_hour=n * o.cost_per_hour,
                cells=_cells(o),
                latency_bound=o.latency_bound,
                startup_s=o.startup_s,
            )
        )
    return out, max(0.0, pool_p95)


def _slot_plan(w: Workload, g: Group, slot: _Slot) -> GroupPlan:
    """A group's slot on a shared GPU as a plan row."""
    o = slot.option
    return GroupPlan(
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
        p95_s=slot.p95,
        batch_timeout_s=(o.batch - 1) / w.rate,
        memory_gib=o.memory_gib,
        uncertainty=o.uncertainty,
        cost_per_hour=slot.cost,
        cells=_cells(o),
        shared_gpu=slot.gpu,
        gpu_fraction=o.fraction,
        startup_s=o.startup_s,
    )
