"""Crediting, the dedicated front and the shared candidates of every (workload, model) that asks one cell table.

The cell table (planner.solver.cells) is workload-independent; what a workload adds is its rate, headroom and
latency budgets. So every request for one table is credited at once, as a (request x row) array, and pruned
with keys sorted by `np.lexsort` (request first), which gives each request exactly the rows, order and values a
request alone would get. The rules (planner.solver.options, module docstring):
- crediting: credit_h = throughput / (1 + headroom + u + spread); under a budget the smallest replica count
  c* whose pool p95 fits it, and credit = lambda / c* where latency binds;
- dedicated front: per segment (a group on a family) the largest credit (ties: cheaper, surer, smaller), the
  cheaper rows on energy-priced families, the running plan's kinds; then dropped across families where an
  unlimited family's option costs no more and credits no less; each kept option's latency tie-break rows;
- shared candidates: per (segment, service-time class) the Pareto front of (GPU share, memory).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from planner.solver.candidates import Alternatives, AlternativeSource, Option, SharedBatch, make_option
from planner.solver.cells import CellTable, FloatArray, IntArray
from planner.solver.diagnostics import Diagnostics, GroupDiagnostics
from planner.solver.latency import (
    min_replicas_for_latency,
    share_class,
    share_class_bound_s,
    shared_check_p95_s,
)
from planner.solver.problem import Problem, Workload
from planner.solver.topology import group_name

SHARE_CLASS_SPAN = 1
"""How many service-time classes above its own a shared tenant may join."""
NO_OBJECTIVE_CLASS = 63
"""The shared pool of tenants without a p95 objective: no co-tenant's latency asks for similar service times
there, so the class rule does not limit their sharing."""
BoolArray = NDArray[np.bool_]


@dataclass
class Request:
    """One (workload, model) to credit against a cell table."""

    wi: int
    workload: Workload
    model: str
    budgets: list[float | None]
    """Per table group, the workload's latency budget for it (None without an objective)."""
    diag: Diagnostics
    reasons: list[str]
    """This model's diagnostic lines, in the order the workload's diagnostics list them."""


@dataclass
class Selected:
    """A request's dedicated options and its shared candidates (None when it has none)."""

    options: list[Option]
    shared: SharedBatch | None


@dataclass(frozen=True)
class _Fleet:
    """The table's families as the problem prices them, per family and per row."""

    free: FloatArray
    price: FloatArray
    unlimited: BoolArray
    cost: FloatArray
    energy: list[int]


@dataclass(frozen=True)
class _Credits:
    """Each request's crediting of each row (arrays are request x row)."""

    lam: FloatArray
    has_budget: BoolArray
    fits: BoolArray
    ok: BoolArray
    credit_h: FloatArray
    c0: FloatArray
    cstar: FloatArray
    credit: FloatArray
    latency_bound: BoolArray
    phi: FloatArray
    floor: FloatArray
    budget: FloatArray
    service: FloatArray
    own: FloatArray


def select(problem: Problem, ignore_memory: bool, share: bool, tbl: CellTable, reqs: list[Request]) -> list[Selected]:
    """Every request's options from one table (module docstring)."""
    fleet = _fleet(problem, tbl)
    for r in reqs:
        r.diag.max_free_gib = max(r.diag.max_free_gib, float(fleet.free.max()))
    cr = _credit(problem, ignore_memory, tbl, fleet, reqs)
    _diagnose(tbl, reqs, cr)
    dedicated = _dedicated(problem, tbl, fleet, reqs, cr)
    shared = _shared(problem, tbl, fleet, reqs, cr) if share else [None] * len(reqs)
    return [Selected(d, s) for d, s in zip(dedicated, shared, strict=True)]


def _fleet(problem: Problem, tbl: CellTable) -> _Fleet:
    fams = [problem.families[f] for f in tbl.families]
    free = np.array([f.memory_gib - problem.options.memory_reserve_gib for f in fams])
    price = np.array([f.price_per_hour for f in fams])
    energy = [k for k, f in enumerate(fams) if f.energy_price_per_kwh]
    cost = price[tbl.seg_family]
    for k in energy:
        rows = np.nonzero(tbl.seg_family == k)[0]
        cost[rows] += [fams[k].energy_cost_per_hour(None if math.isnan(p) else float(p)) for p in tbl.power_w[rows]]
    return _Fleet(free, price, np.array([f.available is None for f in fams]), cost, energy)


def _credit(problem: Problem, ignore_memory: bool, tbl: CellTable, fleet: _Fleet, reqs: list[Request]) -> _Credits:
    """Credit, replicas under the budget and the GPU share of every row for every request."""
    opts = problem.options
    b, t, u, mem = tbl.batch, tbl.service_s, tbl.uncertainty, tbl.memory_gib
    lam = np.array([r.workload.rate for r in reqs])
    headroom = np.array([r.workload.headroom for r in reqs])
    fits = np.empty((len(reqs), b.size), dtype=bool)
    fits[:] = True if ignore_memory else ~(mem > fleet.free[tbl.seg_family])
    for k, r in enumerate(reqs):
        if r.workload.max_startup_s is not None:
            fits[k] &= _starts_in_time(tbl, r.workload, r.model, fits[k], r.reasons)
    service = t * (1 + u)
    own = tbl.p95_s * (1 + u)
    credit_h = (b / t) / ((1 + headroom)[:, None] + u + tbl.spread)
    c0 = np.maximum(1.0, np.ceil(lam[:, None] / credit_h - 1e-9))
    has_budget = np.array([r.workload.p95_latency_s is not None for r in reqs])
    budget = np.array([[math.inf if x is None else x for x in r.budgets] for r in reqs]).reshape(len(reqs), -1)
    budget = budget[:, tbl.seg_group]
    floor = (b - 1) / lam[:, None] + own
    cstar = c0.copy()
    cstar[has_budget] = np.inf
    kk, rr = np.nonzero(fits & has_budget[:, None])
    if kk.size:
        cstar[kk, rr] = min_replicas_for_latency(
            lam[kk], b[rr], service[rr], own[rr], c0[kk, rr], budget[kk, rr], opts.max_latency_extra_replicas
        )
    ok = fits & np.isfinite(cstar)
    latency_bound = np.isfinite(cstar) & (cstar > c0)
    with np.errstate(divide="ignore", invalid="ignore"):
        credit = np.where(latency_bound, lam[:, None] / cstar, credit_h)
    phi = lam[:, None] / credit_h
    return _Credits(
        lam=lam,
        has_budget=has_budget,
        fits=fits,
        ok=ok,
        credit_h=credit_h,
        c0=c0,
        cstar=cstar,
        credit=credit,
        latency_bound=latency_bound,
        phi=phi,
        floor=floor,
        budget=budget,
        service=service,
        own=own,
    )


def _starts_in_time(tbl: CellTable, w: Workload, model_id: str, fits: BoolArray, reasons: list[str]) -> BoolArray:
    """Rows whose replicas start within the workload's `max_startup_s`; when the cap leaves a group that fits in
    memory nothing, a reason says which group and how fast it could start at best."""
    assert w.max_startup_s is not None
    quick = tbl.startup_s <= w.max_startup_s
    for gi, group in enumerate(tbl.groups):
        rows = (tbl.seg_group == gi) & fits
        if np.any(rows) and not np.any(rows & quick):
            best = float(tbl.startup_s[rows].min())
            reasons.append(
                f"{model_id}: every option of its {group_name(group)} group needs at least {best:.0f} s to start a "
                f"replica (weights load + compiling each batch size it runs), over max_startup_s "
                f"{w.max_startup_s:g} s"
            )
    return quick


def _diagnose(tbl: CellTable, reqs: list[Request], cr: _Credits) -> None:
    """Per group, what its best row needs, for the requests where some group has no option."""
    group_ok = np.stack([cr.ok[:, tbl.seg_group == gi].any(axis=1) for gi in range(len(tbl.groups))], axis=1)
    mem = tbl.memory_gib
    for k in np.nonzero(~group_ok.all(axis=1))[0].tolist():
        r = reqs[k]
        for gi, group in enumerate(tbl.groups):
            rows_g = tbl.seg_group == gi
            fit_g = rows_g & cr.fits[k]
            mem_g = mem[rows_g & ~np.isnan(mem)]
            r.diag.groups[(r.model, group)] = GroupDiagnostics(
                has_rows=bool(np.any(rows_g)),
                min_memory_gib=float(mem_g.min()) if mem_g.size else math.inf,
                fits=bool(np.any(fit_g)),
                min_floor_p95_s=float(cr.floor[k][fit_g].min()) if np.any(fit_g) else math.inf,
                budget_s=r.budgets[gi],
                ok=bool(group_ok[k, gi]),
            )


def _segment_order(tbl: CellTable, cr: _Credits, fleet: _Fleet) -> tuple[IntArray, IntArray, BoolArray]:
    """The ok rows of every request sorted by (request, segment, credit descending, cost, u, memory): the
    request and row of each, and whether it starts its (request, segment)."""
    kk, rr = np.nonzero(cr.ok)
    mem0 = np.where(np.isnan(tbl.memory_gib), 0.0, tbl.memory_gib)
    order = np.lexsort(
        (mem0[rr], tbl.uncertainty[rr], fleet.cost[rr], -cr.credit[kk, rr], tbl.seg_family[rr], tbl.seg_group[rr], kk)
    )
    ko, ro = kk[order], rr[order]
    first = _starts(ko, tbl.seg_group[ro], tbl.seg_family[ro])
    return ko, ro, first


def _starts(*keys: IntArray) -> BoolArray:
    """Where a run of equal key tuples begins, in arrays sorted by those keys."""
    out = np.ones(keys[0].size, dtype=bool)
    if keys[0].size:
        out[1:] = np.any(np.stack([k[1:] != k[:-1] for k in keys]), axis=0)
    return out


def _energy_extras(tbl: CellTable, fleet: _Fleet, ko: IntArray, ro: IntArray, first: BoolArray) -> list[int]:
    """Positions (in the segment order) of the rows on energy-priced families that are cheaper per replica than
    every row of larger credit in their segment: the front of credit against $/hour."""
    if not fleet.energy:
        return []
    energy_rows = np.isin(tbl.seg_family[ro], fleet.energy)
    extra = []
    for a, z in itertools.pairwise(np.r_[np.nonzero(first)[0], len(ro)].tolist()):
        if not energy_rows[a]:
            continue
        best_cost = fleet.cost[ro[a]]
        for pos in range(a + 1, z):
            if fleet.cost[ro[pos]] < best_cost - 1e-12:
                best_cost = fleet.cost[ro[pos]]
                extra.append(pos)
    return extra


def _picks(
    problem: Problem, tbl: CellTable, fleet: _Fleet, reqs: list[Request], cr: _Credits
) -> tuple[IntArray, IntArray, BoolArray, IntArray, IntArray, BoolArray]:
    """The dedicated picks of every request, grouped by request in the order a request alone lists them: its
    request, row, and whether the running plan keeps it; plus the segment order (`_segment_order`)."""
    ko, ro, first = _segment_order(tbl, cr, fleet)
    pos = np.r_[np.nonzero(first)[0], np.array(_energy_extras(tbl, fleet, ko, ro, first), dtype=np.int64)]
    pick_k, pick_row = ko[pos], ro[pos]
    by_k = np.argsort(pick_k, kind="stable")
    pick_k, pick_row = pick_k[by_k], pick_row[by_k]
    kept = np.zeros(pick_k.size, dtype=bool)
    if problem.options.running is not None:
        pick_k, pick_row, kept = _with_running(problem, tbl, reqs, cr, pick_k, pick_row)
    return pick_k, pick_row, kept, ko, ro, first


def _with_running(
    problem: Problem, tbl: CellTable, reqs: list[Request], cr: _Credits, pick_k: IntArray, pick_row: IntArray
) -> tuple[IntArray, IntArray, BoolArray]:
    """The picks with the rows of the kinds (group, family, recipes, batch) the running plan uses for each
    request's workload, where they still fit and meet the budget (`ok`); a request with such rows lists its
    picks by row (as `np.union1d` leaves them)."""
    running = problem.options.running
    assert running is not None
    lists = tbl.lists
    ks, rows, kept = [], [], []
    for k, r in enumerate(reqs):
        mine = pick_row[pick_k == k]
        kinds = {(x[1], x[2], x[3], x[4]) for x in running.replicas if x[0] == r.workload.name}
        keep = [
            i
            for i in np.nonzero(cr.ok[k])[0].tolist()
            if (tbl.groups[lists.group[i]], tbl.families[lists.family[i]], lists.recipes[i], lists.batch[i]) in kinds
        ]
        if keep:
            mine = np.union1d(mine, np.array(keep, dtype=np.int64))
        ks.append(np.full(mine.size, k, dtype=np.int64))
        rows.append(mine)
        kept.append(np.isin(mine, keep))
    return np.concatenate(ks), np.concatenate(rows), np.concatenate(kept)


def _dominated(
    tbl: CellTable, fleet: _Fleet, cr: _Credits, pick_k: IntArray, pick_row: IntArray, kept: BoolArray
) -> BoolArray:
    """Picks dropped across families: an earlier-listed or strictly better pick of the same request and group on
    a family without an availability limit costs no more per replica and credits no less."""
    n = int(pick_k.max()) + 1 if pick_k.size else 0
    starts = np.searchsorted(pick_k, np.arange(n))
    local = np.arange(pick_k.size) - starts[pick_k]
    width = int(local.max()) + 1 if pick_k.size else 0
    valid = np.zeros((n, width), dtype=bool)
    group = np.full((n, width), -1, dtype=np.int64)
    credit = np.zeros((n, width))
    cost = np.zeros((n, width))
    valid[pick_k, local] = True
    group[pick_k, local] = tbl.seg_group[pick_row]
    credit[pick_k, local] = cr.credit[pick_k, pick_row]
    cost[pick_k, local] = fleet.cost[pick_row]
    unlimited = valid.copy()
    unlimited[pick_k, local] = fleet.unlimited[tbl.seg_family[pick_row]]
    i_, j_ = (slice(None), slice(None), None), (slice(None), None, slice(None))  # [k, i, j]: does j beat i?
    earlier = np.arange(width)[None, :] < np.arange(width)[:, None]
    better = (cost[j_] < cost[i_]) | (credit[j_] > credit[i_]) | earlier[None]
    beats = (
        (group[j_] == group[i_])
        & unlimited[j_]
        & (cost[j_] <= cost[i_])
        & (credit[j_] >= credit[i_])
        & better
        & ~np.eye(width, dtype=bool)[None]
    )
    out: BoolArray = np.any(beats, axis=2)[pick_k, local] & ~kept
    return out


def _prefix_min(values: FloatArray, starts: BoolArray) -> FloatArray:
    """Per run of `values` (a run begins where `starts`), the least value before each element in its run (inf
    for the run's first)."""
    run = np.cumsum(starts) - 1
    begin = np.nonzero(starts)[0]
    pos = np.arange(values.size) - begin[run]
    table = np.full((begin.size, int(pos.max()) + 2 if values.size else 1), np.inf)
    table[run, pos + 1] = values
    out: FloatArray = np.minimum.accumulate(table, axis=1)[run, pos]
    return out


def _alternatives(
    cr: _Credits, fleet: _Fleet, ko: IntArray, ro: IntArray, first: BoolArray
) -> dict[tuple[int, int], IntArray]:
    """Latency tie-break rows (planner.solver.options, "Latency tie-break") per segment pick, keyed by the
    pick's (request, row): the rows after it (credit descending) that cost no more, need no more replicas
    alone, and beat the p95 floor of every such row before them by 1e-9 of the request's largest floor."""
    if not ko.size:
        return {}
    rank = np.cumsum(first) - 1
    heads = np.nonzero(first)[0]
    floor = cr.floor[ko, ro]
    alone = np.ceil(cr.lam[ko] / cr.credit[ko, ro] - 1e-9)  # replicas the row needs to carry the rate by itself
    cost = fleet.cost[ro]
    cheap = (cost <= cost[heads][rank] + 1e-12) & (alone <= alone[heads][rank])
    k_starts = np.r_[True, ko[1:] != ko[:-1]]
    big = np.maximum.reduceat(floor, np.nonzero(k_starts)[0])[np.cumsum(k_starts) - 1] + 1.0
    before = _prefix_min(np.where(cheap, floor, np.inf), first)
    front = ~first & cheap & (floor < before - 1e-9 * big)
    fpos = np.nonzero(front)[0]
    if not fpos.size:
        return {}
    owners = heads[rank[fpos]]
    cut = np.nonzero(np.r_[True, owners[1:] != owners[:-1]])[0]
    ends = np.r_[cut[1:], owners.size]
    own_k, own_row = ko[owners[cut]].tolist(), ro[owners[cut]].tolist()
    return {(k, i): ro[fpos[a:z]] for k, i, a, z in zip(own_k, own_row, cut.tolist(), ends.tolist(), strict=True)}


def _dedicated(
    problem: Problem, tbl: CellTable, fleet: _Fleet, reqs: list[Request], cr: _Credits
) -> list[list[Option]]:
    """Every request's dedicated options, built from its surviving picks."""
    pick_k, pick_row, kept, ko, ro, first = _picks(problem, tbl, fleet, reqs, cr)
    dominated = _dominated(tbl, fleet, cr, pick_k, pick_row, kept)
    alts = _alternatives(cr, fleet, ko, ro, first)
    lists = tbl.lists
    out: list[list[Option]] = [[] for _ in reqs]
    sources: dict[int, AlternativeSource] = {}
    live = ~dominated
    for k, i, credit, cstar, bound, run in zip(
        pick_k[live].tolist(),
        pick_row[live].tolist(),
        cr.credit[pick_k[live], pick_row[live]].tolist(),
        cr.cstar[pick_k[live], pick_row[live]].tolist(),
        cr.latency_bound[pick_k[live], pick_row[live]].tolist(),
        kept[live].tolist(),
        strict=True,
    ):
        r = reqs[k]
        rows = alts.get((k, i))
        alternatives = None
        if rows is not None:
            if k not in sources:
                sources[k] = AlternativeSource(
                    lists,
                    r.wi,
                    r.model,
                    tbl.families,
                    cr.credit[k],
                    fleet.cost,
                    cr.cstar[k],
                    cr.latency_bound[k],
                    r.budgets,
                    r.workload.rate,
                )
            alternatives = Alternatives(sources[k], rows)
        out[k].append(
            make_option(
                lists,
                i,
                r.wi,
                r.model,
                tbl.families[lists.family[i]],
                credit=credit,
                cost=float(fleet.cost[i]),
                cstar=cstar,
                latency_bound=bound,
                budget=r.budgets[lists.group[i]],
                shared=False,
                fraction=r.workload.rate / credit,
                alternatives=alternatives,
                running=run,
            )
        )
    return out


def _shared_steps(tbl: CellTable, cr: _Credits, base: BoolArray, util: float) -> list[tuple[IntArray, BoolArray]]:
    """The classes a tenant may join (its own and up to `SHARE_CLASS_SPAN` above when its latency allows; the
    no-objective pool for a workload without an objective), each with the requests' rows eligible for it."""
    own_class = share_class(cr.service)
    out = []
    for step in range(SHARE_CLASS_SPAN + 1):
        klass = own_class + step
        p95 = shared_check_p95_s(cr.lam[:, None], tbl.batch, cr.own, share_class_bound_s(klass), util)
        out.append((klass, base & (~cr.has_budget[:, None] | (p95 <= cr.budget))))
    if not cr.has_budget.all():
        out.append((np.full(own_class.shape, NO_OBJECTIVE_CLASS, dtype=np.int64), base & ~cr.has_budget[:, None]))
    return out


def _shared(
    problem: Problem, tbl: CellTable, fleet: _Fleet, reqs: list[Request], cr: _Credits
) -> list[SharedBatch | None]:
    """Every request's shared candidates: per (segment, class) the Pareto front of (GPU share, memory)."""
    opts = problem.options
    util = opts.share_max_utilization
    mem = tbl.memory_gib
    base = cr.ok & (cr.phi <= min(opts.share_max_fraction, util)) & ~np.isnan(mem)
    parts_k, parts_row, parts_class = [], [], []
    for klass, eligible in _shared_steps(tbl, cr, base, util):
        kk, rr = np.nonzero(eligible)
        if not kk.size:
            continue
        order = np.lexsort(
            (tbl.uncertainty[rr], mem[rr], cr.phi[kk, rr], klass[rr], tbl.seg_family[rr], tbl.seg_group[rr], kk)
        )
        kk, rr = kk[order], rr[order]
        cls = klass[rr]
        new_pool = _starts(kk, tbl.seg_group[rr], tbl.seg_family[rr], cls)
        front = new_pool | (mem[rr] < _prefix_min(mem[rr], new_pool) - 1e-9)
        parts_k.append(kk[front])
        parts_row.append(rr[front])
        parts_class.append(cls[front])
    out: list[SharedBatch | None] = [None] * len(reqs)
    if not parts_k:
        return out
    by_k = np.argsort(np.concatenate(parts_k), kind="stable")
    ks = np.concatenate(parts_k)[by_k]
    rows = np.concatenate(parts_row)[by_k]
    klass_rows = np.concatenate(parts_class)[by_k]
    fam = tbl.seg_family[rows]
    phi = cr.phi[ks, rows]
    size = np.maximum(phi / util, mem[rows] / fleet.free[fam])
    credit, cstar = cr.credit_h[ks, rows], cr.c0[ks, rows]
    cost, price, unlimited, group = fleet.cost[rows], fleet.price[fam], fleet.unlimited[fam], tbl.seg_group[rows]
    bounds = np.searchsorted(ks, np.arange(len(reqs) + 1))
    for k, (a, z) in enumerate(itertools.pairwise(bounds.tolist())):
        if a == z:
            continue
        r = reqs[k]
        out[k] = SharedBatch(
            lists=tbl.lists,
            workload=r.wi,
            model=r.model,
            families=tbl.families,
            groups=tbl.groups,
            budgets=r.budgets,
            rows=rows[a:z],
            group=group[a:z],
            family=fam[a:z],
            klass=klass_rows[a:z],
            credit=credit[a:z],
            cost=cost[a:z],
            cstar=cstar[a:z],
            phi=phi[a:z],
            size=size[a:z],
            price=price[a:z],
            unlimited=unlimited[a:z],
        )
    return out
