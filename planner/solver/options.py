"""Options: every way to serve one stage group of one workload, reduced to the few worth a MILP column.

An option o = (workload, model, group, family, recipe per stage, batch b). For the group's stages s:
    T(o)   = sum_s calls_s x latency_s(family, recipe_s, b)        calls = steps (denoiser) else 1
    T95(o) = the same with each cell's p95
    u(o)   = sum_s calls_s latency_s u_s / T(o)                      (time-weighted estimate uncertainty)
    throughput(o) = b / T(o) images/s per replica
    memory(o) = sum_s weights_s + max_s (peak_s - weights_s)         (all weights resident, one stage active)
A group fits a family when memory(o) <= family memory - reserve. Weights come from the catalog's parameter
counts and the recipe's bytes per parameter; a cell without peak memory counts 1.2 x its weights.

Credited throughput (what a replica counts for against the rate lambda):
    credit_h(o) = throughput(o) / (1 + headroom + u(o) + s(o))       (the brief's capacity rule)
    with s(o) the time-weighted `latency_spread` of its measured cells (how far the timed windows' medians
    spread: run-to-run variation the headroom must also absorb).
Start-up (planner.solver.startup): every row carries the seconds a replica takes to become ready; a workload's
`max_startup_s` leaves out the rows slower than that.
    with a p95 objective L, the group gets the budget L x (its stages' share of the fastest per-stage
    service times), so the budgets of any topology's groups add up to L; c*(o) is the smallest replica count
    >= ceil(lambda / credit_h) whose pool p95 (planner.solver.latency) fits the budget, and
    credit(o) = credit_h(o) if that count is already enough, else lambda / c*(o)  (latency binds).
    An option whose batch timeout plus own p95 service exceeds its budget is dropped.
Shared mode (several low-rate groups on one GPU): the fraction of a GPU the group needs is
    phi(o) = lambda / credit_h(o); eligible when phi <= share_max_fraction, the memory is known and the p95
    on a GPU filled to share_max_utilization by tenants of its service-time class fits the budget
    (planner.solver.latency); shared GPUs are packed per (family, class), and a tenant is offered its own
    class and the next one up (`SHARE_CLASS_SPAN`) when its latency allows. A tenant whose workload has no
    objective is also offered its family's `NO_OBJECTIVE_CLASS` pool, shared with any other such tenant
    whatever its service time: the class rule protects co-tenants' objectives, and there are none there.

Pruning before the MILP (exact, not heuristic):
- per (stage, family, batch), a recipe that is no faster at median and p95, no surer, and no smaller in
  weights, peak memory, power, compile time and spread than another is dropped (it cannot improve any group
  containing it);
- per (workload, model, group, family), dedicated replicas all cost the family's price, and memory only has to
  fit, so the option with the largest credit dominates the others (with energy prices, the Pareto front of
  credit vs $/replica-hour); the latency objective is already inside the credit;
- across families, a dedicated option is dropped when an option of the same group on a family without an
  availability limit costs no more per replica and credits no less (replace it replica by replica);
- for shared mode the Pareto front of (phi, memory) per (group, family, class) is kept; past
  `exact_packing_max_items` candidates only the smallest slot per pool matters (fluid packing).

Latency tie-break. Keeping only the largest credit per segment is exact for cost, but at a low rate it keeps
latency nobody pays to avoid: at lambda = 0.05/s a batch-16 option needs the same single replica as batch 1,
and its batch timeout (b - 1) / lambda = 300 s ends up in the plan. So each kept dedicated option o carries
`alternatives`: the rows a of its segment with
    price_a <= price_o,  ceil(lambda / credit_a) = ceil(lambda / credit_o)  and  floor_a < floor_b for every
    such row b of the segment with credit_b >= credit_a,   floor = (b - 1) / lambda + T95 (1 + u)
(the p95 without queueing: the Pareto front of credit against p95 floor, largest credit first, among the rows
that carry the rate alone with as few replicas as o; one that needs more could only be swapped in where
another pool of the group leaves room, rare enough not to build thousands of them for). They are not MILP
columns, so the MILP, its bound and its optimal cost are unchanged; after the solve (`planner.solver.engine`),
a pool's n replicas of o are swapped for n replicas of an alternative when the group still covers its rate,
    sum_pool n credit - n (credit_o - credit_a) >= lambda,
and the pool's predicted p95 drops: same replicas, same or lower price, so the cost never rises.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from planner.catalog.schema import ModelSpec, Recipe
from planner.perf.model import CellEstimate, PerfModel
from planner.solver.latency import (
    min_replicas_for_latency,
    share_class,
    share_class_bound_s,
    shared_check_p95_s,
)
from planner.solver.problem import Problem, SolverOptions, Workload
from planner.solver.quality import evidence_for, judge
from planner.solver.startup import startup_seconds

Group = tuple[str, ...]
"""Consecutive stages served together on one GPU."""
Topology = tuple[Group, ...]
"""A split of a model's ordered stages into consecutive groups."""
GroupKey = tuple[int, str, Group]
"""(workload index, model id, group)."""
ChoiceKey = tuple[int, str, Topology]
"""(workload index, model id, topology): one assignment a workload may get."""

STAGE_ABBREV: dict[str, str] = {"text_encoder": "te", "denoiser": "dn", "vae_decoder": "vae"}
UNKNOWN_MEMORY_FACTOR = 1.2
SHARE_CLASS_SPAN = 1
"""How many service-time classes above its own a shared tenant may join."""
NO_OBJECTIVE_CLASS = 63
"""The shared pool of tenants without a p95 objective: no co-tenant's latency asks for similar service times
there, so the class rule does not limit their sharing (pool keys are segment x 64 + class)."""
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def topologies(stages: Sequence[str]) -> list[Topology]:
    """Every split of the ordered stages into consecutive groups (2^(n-1) of them)."""
    n = len(stages)
    out: list[Topology] = []
    for cuts in itertools.product((False, True), repeat=max(n - 1, 0)):
        groups: list[Group] = []
        start = 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(tuple(stages[start:i]))
                start = i
        groups.append(tuple(stages[start:]))
        out.append(tuple(groups))
    out.sort(key=len)
    return out


def group_name(group: Group) -> str:
    return "[" + "+".join(STAGE_ABBREV.get(s, s) for s in group) + "]"


def topology_name(topology: Topology) -> str:
    """`[te][dn+vae]`, DESIGN.md's notation."""
    return "".join(group_name(g) for g in topology)


def default_recipe(stage: str, recipes: Mapping[str, Recipe]) -> str:
    """The recipe the naive baseline uses: the catalog's reference recipe for the stage, else bf16."""
    for rid, recipe in recipes.items():
        if recipe.reference and stage in recipe.stages:
            return rid
    return "bf16"


@dataclass(frozen=True, slots=True)
class Option:
    """One MILP column: a dedicated replica kind, or a shared-GPU slot, of one group of one workload."""

    workload: int
    model: str
    group: Group
    family: str
    recipes: tuple[str, ...]
    batch: int
    service_s: float
    service_p95_s: float
    throughput: float
    credit: float
    memory_gib: float | None
    uncertainty: float
    power_w: float | None
    cost_per_hour: float
    cells: tuple[CellEstimate, ...]
    calls: tuple[int, ...]
    shared: bool
    fraction: float
    min_replicas: int
    latency_bound: bool
    budget_s: float | None
    share_class: int = -1
    alternatives: Alternatives | None = field(default=None, compare=False, repr=False)
    """Same-segment dedicated options that cost no more per replica, credit less and have a lower p95 floor
    (module docstring, "Latency tie-break"); not MILP columns, only swapped in after the solve."""
    startup_s: float = 0.0
    """Seconds a replica takes to become ready (planner.solver.startup)."""
    running: bool = False
    """A kind (family, recipes, batch) the running plan uses for this group: kept as a column even where
    dominated, so a re-plan can keep it (planner.solver.replan)."""

    @property
    def key(self) -> GroupKey:
        return (self.workload, self.model, self.group)

    @property
    def pool(self) -> tuple[str, int]:
        """Where a shared-mode option may be packed: (family, service-time class)."""
        return (self.family, self.share_class)


@dataclass(frozen=True)
class _AlternativeSource:
    """What building an alternative Option needs from one `_select` call (shared by its options)."""

    lists: _RowLists
    workload: int
    model: str
    families: list[str]
    credit: FloatArray
    cost: FloatArray
    cstar: FloatArray
    latency_bound: NDArray[np.bool_]
    budgets: list[float | None]
    rate: float


@dataclass(frozen=True, slots=True)
class Alternatives:
    """An option's latency tie-break candidates, built into Options only when the engine asks: most options are
    never chosen, and building tens of thousands of Options up front doubled the time to build a large set."""

    source: _AlternativeSource
    rows: IntArray
    credit_scale: float = 1.0

    def options(self) -> list[Option]:
        src = self.source
        out = []
        for i in self.rows.tolist():
            credit = float(src.credit[i]) * self.credit_scale
            out.append(
                src.lists.option(
                    i,
                    src.workload,
                    src.model,
                    src.families[src.lists.family[i]],
                    credit=credit,
                    cost=float(src.cost[i]),
                    cstar=float(src.cstar[i]),
                    latency_bound=bool(src.latency_bound[i]) or self.credit_scale < 1.0,
                    budget=src.budgets[src.lists.group[i]],
                    shared=False,
                    fraction=src.rate / credit,
                )
            )
        return out


@dataclass(frozen=True)
class OptionFilter:
    """Restrictions used by the baselines and the what-if solves."""

    families: frozenset[str] | None = None
    together_only: bool = False
    batch_one: bool = False
    default_recipes: bool = False
    share: bool | None = None
    ignore_memory: bool = False
    no_shared_keys: frozenset[GroupKey] = frozenset()
    credit_scale: Mapping[tuple[GroupKey, str], float] = field(default_factory=dict)


@dataclass
class GroupDiagnostics:
    """One group of one model: what its best row needs, to say which group blocks a workload and why."""

    has_rows: bool = False
    min_memory_gib: float = math.inf
    """The least memory any of its rows needs (NaN-memory rows left out)."""
    fits: bool = False
    min_floor_p95_s: float = math.inf
    """Over the rows that fit: batch formation (b - 1) / rate + own p95 service, the p95 without queueing."""
    budget_s: float | None = None
    ok: bool = False
    """Some row fits and meets the group's latency budget."""


@dataclass
class Diagnostics:
    """Why a workload has few or no options, to explain an infeasible answer."""

    reasons: list[str] = field(default_factory=list)
    max_free_gib: float = 0.0
    objective_s: float | None = None
    groups: dict[tuple[str, Group], GroupDiagnostics] = field(default_factory=dict)
    """Per (model, group), filled only for a model some of whose groups have no option."""


@dataclass
class OptionSet:
    """The options of a problem, indexed for the MILP."""

    options: list[Option]
    choices: dict[int, list[tuple[str, Topology]]]
    by_group: dict[GroupKey, list[int]]
    diagnostics: dict[int, Diagnostics]
    budgets: dict[GroupKey, float | None]
    shared_candidates: int = 0
    """Shared-mode slots before the fluid packing kept the smallest per pool (how big exact packing would be)."""

    def feasible_workloads(self) -> set[int]:
        return {w for w, c in self.choices.items() if c}


@dataclass
class _WorkloadOptions:
    """One workload's part of an option set (`OptionBuilder._build_workload`)."""

    options: list[Option]
    shared: list[_SharedBatch]
    choices: list[tuple[str, Topology]]
    diagnostics: Diagnostics
    budgets: dict[GroupKey, float | None]


WORKLOAD_CACHE_FACTOR = 8
"""The workload cache is cleared past this many entries per workload (about as many option sets)."""


@dataclass(frozen=True)
class _Table:
    """Every recipe x batch combination of every group on every family for one (model, resolution, steps,
    allow-lists): workload-independent, cached, one row per combination."""

    groups: list[Group]
    families: list[str]
    seg_group: IntArray
    seg_family: IntArray
    segment: IntArray
    batch: FloatArray
    service_s: FloatArray
    p95_s: FloatArray
    uncertainty: FloatArray
    memory_gib: FloatArray
    power_w: FloatArray
    startup_s: FloatArray
    spread: FloatArray
    combos: list[tuple[CellEstimate, ...]]
    fastest: dict[str, float]
    steps: int


def _pareto(items: list[tuple[tuple[float, ...], CellEstimate]]) -> list[CellEstimate]:
    """Items not weakly dominated in every criterion by another (ties keep the first)."""
    keep: list[CellEstimate] = []
    for i, (crit, cell) in enumerate(items):
        dominated = False
        for j, (other, _) in enumerate(items):
            if j == i:
                continue
            if all(o <= c for o, c in zip(other, crit, strict=True)) and (other != crit or j < i):
                dominated = True
                break
        if not dominated:
            keep.append(cell)
    return keep


class OptionBuilder:
    """Builds option sets; caches the workload-independent group candidates across solves of one problem."""

    def __init__(self, perf: PerfModel, models: Mapping[str, ModelSpec], recipes: Mapping[str, Recipe]) -> None:
        self.perf = perf
        self.models = models
        self.recipes = recipes
        self._stage_cache: dict[tuple[object, ...], list[CellEstimate]] = {}
        self._tables: dict[tuple[object, ...], _Table | None] = {}
        self._row_lists: dict[int, _RowLists] = {}
        self._workload_cache: dict[tuple[object, ...], _WorkloadOptions] = {}

    # ---- recipes a workload may use ---------------------------------------------------------------
    def allowed_recipes(self, w: Workload, model: str, stage: str, flt: OptionFilter) -> tuple[list[str], str]:
        """Recipes of a stage after allow-list, stage applicability and quality floor; plus why, if none."""
        h, wd = w.resolution[model]
        have = self.perf.recipes_for(model, stage, h, wd)
        names = sorted(have)
        if flt.default_recipes:
            names = [r for r in names if r == default_recipe(stage, self.recipes)]
        if w.recipes is not None and stage in w.recipes:
            names = [r for r in names if r in w.recipes[stage]]
        names = [r for r in names if r not in self.recipes or stage in self.recipes[r].stages]
        if not names:
            if not have:
                sizes = ", ".join(f"{sh}x{sw}" for sh, sw in self.perf.sizes_for(model, stage))
                if not sizes:
                    return [], f"{model}: no cells for stage {stage} at any size (this model has not been measured)"
                return [], (
                    f"{model}: no cells for stage {stage} at {h}x{wd} (height x width; measured sizes: {sizes}); "
                    "cells are not scaled between sizes"
                )
            measured = ", ".join(sorted(have))
            return [], f"{model}: no allowed recipe of stage {stage} has cells (measured: {measured})"
        passed = [r for r in names if self._quality_ok(w, model, stage, r)]
        if not passed:
            return (
                [],
                f"{model}: the quality floor excludes every recipe of stage {stage} ({', '.join(names)})",
            )
        return passed, ""

    def _quality_ok(self, w: Workload, model: str, stage: str, recipe: str) -> bool:
        h, wd = w.resolution[model]
        if w.quality is not None:
            evidence = evidence_for(self.perf, w.quality, model, stage, recipe, (h, wd))
            if judge(w.quality, evidence)[0] == "excluded":
                return False
        if w.quality_scores is not None:
            score = w.quality_scores.score(model, recipe)
            if score is None:
                ref = self.recipes.get(recipe)
                is_reference = ref is not None and ref.reference
                if not is_reference and w.quality_scores.missing == "exclude":
                    return False
            elif score < w.quality_scores.min_score:
                return False
        return True

    # ---- per-stage cells ---------------------------------------------------------------------------
    def _stage_cells(
        self, family: str, model: str, stage: str, recipes: tuple[str, ...], batch: int, h: int, w: int
    ) -> list[CellEstimate]:
        key = (family, model, stage, recipes, batch, h, w)
        hit = self._stage_cache.get(key)
        if hit is not None:
            return hit
        items: list[tuple[tuple[float, ...], CellEstimate]] = []
        for r in recipes:
            cell = self.perf.latency(family, model, stage, r, batch, h, w)
            if cell is None:
                continue
            weights = self.perf.weight_gib(model, stage, r)
            peak = cell.peak_mem_gib
            crit = (
                cell.latency_ms,
                cell.latency_p95_ms,
                cell.uncertainty,
                math.inf if peak is None else peak,
                math.inf if weights is None else weights,
                math.inf if cell.power_w is None else cell.power_w,
                cell.compile_s or 0.0,  # a slower start can matter (max_startup_s): keep the eager recipe
                cell.spread or 0.0,
            )
            items.append((crit, cell))
        kept = _pareto(items)
        self._stage_cache[key] = kept
        return kept

    def _combos(
        self,
        family: str,
        model: str,
        group: Group,
        allowed: Mapping[str, tuple[str, ...]],
        batches: Sequence[int],
        steps: int,
        h: int,
        w: int,
        rows: list[tuple[float, float, float, float, float, float, float, float]],
        combos: list[tuple[CellEstimate, ...]],
    ) -> None:
        """Append one (group, family)'s rows: T, T95, u, memory and power of each recipe x batch combo."""
        for b in batches:
            per_stage = [self._stage_cells(family, model, s, allowed[s], b, h, w) for s in group]
            if any(not cells for cells in per_stage):
                continue
            for combo in itertools.product(*per_stage):
                t = p95 = weighted_u = weighted_spread = weights = act = power_num = 0.0
                power_known = mem_known = True
                for cell in combo:
                    calls = steps if cell.stage == "denoiser" else 1
                    t += calls * cell.latency_ms
                    p95 += calls * cell.latency_p95_ms
                    weighted_u += calls * cell.latency_ms * cell.uncertainty
                    weighted_spread += calls * cell.latency_ms * (cell.spread or 0.0)
                    wgt = self.perf.weight_gib(model, cell.stage, cell.recipe)
                    peak = cell.peak_mem_gib
                    if peak is None:
                        if wgt is None:
                            mem_known = False
                            continue
                        peak = wgt * UNKNOWN_MEMORY_FACTOR
                    if wgt is None or wgt > peak:
                        wgt = peak
                    weights += wgt
                    act = max(act, peak - wgt)
                    if cell.power_w is None:
                        power_known = False
                    else:
                        power_num += calls * cell.latency_ms * cell.power_w
                rows.append(
                    (
                        float(b),
                        t / 1e3,
                        p95 / 1e3,
                        weighted_u / t if t > 0 else 0.0,
                        weights + act if mem_known else math.nan,
                        power_num / t if power_known and t > 0 else math.nan,
                        startup_seconds(self.perf, combo, b),
                        weighted_spread / t if t > 0 else 0.0,
                    )
                )
                combos.append(combo)

    def _table(
        self,
        model: ModelSpec,
        allowed: Mapping[str, tuple[str, ...]],
        batches: Mapping[str, frozenset[int]],
        families: tuple[str, ...],
        steps: int,
        h: int,
        w: int,
        together_only: bool,
    ) -> _Table | None:
        stages = model.stage_names
        key = (
            model.id,
            tuple(allowed[s] for s in stages),
            tuple(tuple(sorted(batches[s])) for s in stages),
            families,
            steps,
            h,
            w,
            together_only,
        )
        if key in self._tables:
            return self._tables[key]
        groups = sorted({g for t in topologies(stages) for g in t}, key=lambda g: (stages.index(g[0]), len(g)))
        if together_only:
            groups = [g for g in groups if len(g) == len(stages)]
        fastest: dict[str, float] = {}
        for stage in stages:
            calls = steps if stage == "denoiser" else 1
            best = math.inf
            for fam in families:
                for b in sorted(batches[stage]):
                    for cell in self._stage_cells(fam, model.id, stage, allowed[stage], b, h, w):
                        best = min(best, calls * cell.latency_p95_ms * (1 + cell.uncertainty) / 1e3)
            fastest[stage] = best
        rows: list[tuple[float, float, float, float, float, float, float, float]] = []
        combos: list[tuple[CellEstimate, ...]] = []
        seg_group: list[int] = []
        seg_family: list[int] = []
        for gi, group in enumerate(groups):
            common = sorted(frozenset.intersection(*(batches[s] for s in group)))
            for fi, fam in enumerate(families):
                before = len(rows)
                self._combos(fam, model.id, group, allowed, common, steps, h, w, rows, combos)
                seg_group.extend([gi] * (len(rows) - before))
                seg_family.extend([fi] * (len(rows) - before))
        if not rows:
            self._tables[key] = None
            return None
        arr = np.array(rows, dtype=np.float64)
        sg = np.array(seg_group, dtype=np.int64)
        sf = np.array(seg_family, dtype=np.int64)
        table = _Table(
            groups=groups,
            families=list(families),
            seg_group=sg,
            seg_family=sf,
            segment=sg * len(families) + sf,
            batch=arr[:, 0],
            service_s=arr[:, 1],
            p95_s=arr[:, 2],
            uncertainty=arr[:, 3],
            memory_gib=arr[:, 4],
            power_w=arr[:, 5],
            startup_s=arr[:, 6],
            spread=arr[:, 7],
            combos=combos,
            fastest=fastest,
            steps=steps,
        )
        self._tables[key] = table
        return table

    # ---- one workload's options (cached across the re-solves of one problem) -------------------------
    def _context_key(self, problem: Problem, flt: OptionFilter) -> tuple[object, ...] | None:
        """What a workload's options depend on besides the workload: the fleet and the option knobs; None (no
        caching) under a baseline's filter, whose option sets are each built once."""
        if flt != OptionFilter():
            return None
        opts = problem.options
        fleet = tuple(
            (k, f.price_per_hour, f.available, f.memory_gib, f.energy_price_per_kwh, f.power_w)
            for k, f in problem.families.items()
        )
        knobs = (
            opts.memory_reserve_gib,
            opts.share_gpus,
            opts.share_max_utilization,
            opts.share_max_fraction,
            opts.max_latency_extra_replicas,
            opts.exact_packing_max_items,
            id(opts.running),  # a re-plan keeps the running kinds as extra rows (`_running_rows`)
        )
        return (fleet, knobs)

    def _workload_options(
        self, problem: Problem, flt: OptionFilter, wi: int, w: Workload, context: tuple[object, ...] | None
    ) -> _WorkloadOptions:
        """A workload's options, reused where the same workload at the same index was built in the same context
        (the engine's hold re-solves with a few objectives tightened: only those workloads are built again)."""
        key = None if context is None else (context, wi, repr(w))
        hit = self._workload_cache.get(key) if key is not None else None
        if hit is not None:
            return hit
        built = self._build_workload(problem, flt, wi, w)
        if key is not None:
            if len(self._workload_cache) > WORKLOAD_CACHE_FACTOR * max(len(problem.workloads), 1):
                self._workload_cache.clear()
            self._workload_cache[key] = built
        return built

    def _build_workload(self, problem: Problem, flt: OptionFilter, wi: int, w: Workload) -> _WorkloadOptions:
        opts = problem.options
        diag = Diagnostics()
        out = _WorkloadOptions(options=[], shared=[], choices=[], diagnostics=diag, budgets={})
        for model_id in w.models:
            spec = self.models.get(model_id)
            if spec is None:
                diag.reasons.append(f"{model_id}: not in the model catalog")
                continue
            found, shared = self._build_model(problem, flt, wi, w, spec, diag, out.budgets)
            out.options.extend(found)
            groups_with_options = {o.group for o in found}
            if shared is not None:
                out.shared.append(shared)
                groups_with_options |= {shared.groups[g] for g in set(shared.group.tolist())}
            tops = [t for t in topologies(spec.stage_names) if not flt.together_only or len(t) == 1]
            usable = [t for t in tops if all(g in groups_with_options for g in t)]
            out.choices.extend((model_id, t) for t in usable)
            if not usable and not any(r.startswith(f"{model_id}:") for r in diag.reasons):
                diag.reasons.append(self._why_none(model_id, spec.stage_names, diag, opts))
        return out

    # ---- a whole option set ------------------------------------------------------------------------
    def build(
        self, problem: Problem, flt: OptionFilter | None = None, *, stop_when_unserved: bool = False
    ) -> OptionSet:
        """Options of every workload (module docstring), pruned; `flt` restricts them for baselines.

        `stop_when_unserved`: stop at the first workload without an option (the rest get none, with a reason
        saying so): a baseline that cannot serve one workload is infeasible, and building the others is waste."""
        flt = flt or OptionFilter()
        options: list[Option] = []
        choices: dict[int, list[tuple[str, Topology]]] = {}
        diagnostics: dict[int, Diagnostics] = {}
        budgets: dict[GroupKey, float | None] = {}
        shared_rows: list[_SharedBatch] = []
        context = self._context_key(problem, flt)
        for wi, w in enumerate(problem.workloads):
            built = self._workload_options(problem, flt, wi, w, context)
            options.extend(built.options)
            shared_rows.extend(built.shared)
            choices[wi] = list(built.choices)
            diagnostics[wi] = built.diagnostics
            budgets.update(built.budgets)
            if stop_when_unserved and not built.choices:
                for wj in range(wi + 1, len(problem.workloads)):
                    choices[wj] = []
                    diagnostics[wj] = Diagnostics(reasons=["not built: an earlier workload has no option here"])
                break
        options.extend(self._shared_options(problem, shared_rows))
        shared_candidates = sum(len(sb.rows) for sb in shared_rows)
        by_group: dict[GroupKey, list[int]] = defaultdict(list)
        for i, o in enumerate(options):
            by_group[o.key].append(i)
        return OptionSet(
            options=options,
            choices=choices,
            by_group=dict(by_group),
            diagnostics=diagnostics,
            budgets=budgets,
            shared_candidates=shared_candidates,
        )

    def _shared_options(self, problem: Problem, batches: list[_SharedBatch]) -> list[Option]:
        """Shared-mode options. When there are more candidates than the exact packing takes, the fluid packing
        of planner.solver.milp is used and only the smallest slot per (group, family, class) matters; of those
        a slot priced (price x size) no lower than another of the same group and class on a family without an
        availability limit is dropped too."""
        opts = problem.options
        total = sum(len(sb.rows) for sb in batches)
        out: list[Option] = []
        fluid = total > opts.exact_packing_max_items
        for sb in batches:
            rows = sb.rows
            if fluid and rows.size:
                # smallest size per (group, family, class)
                key = (sb.group * 1000 + sb.family) * 64 + sb.klass
                order = np.lexsort((sb.size, key))
                first = np.r_[True, key[order][1:] != key[order][:-1]]
                keep = order[first]
                price = sb.price[keep] * sb.size[keep]
                unlimited = sb.unlimited[keep]
                gk = (sb.group[keep] * 64 + sb.klass[keep])[:, None]
                same = gk == gk.T
                cheaper = (price[None, :] < price[:, None]) | (
                    (price[None, :] == price[:, None]) & (np.arange(keep.size)[None, :] < np.arange(keep.size)[:, None])
                )
                dominated = np.any(same & unlimited[None, :] & cheaper, axis=1)
                chosen = keep[~dominated]
            else:
                chosen = np.arange(rows.size)
            for k in chosen.tolist():
                out.append(
                    sb.lists.option(
                        int(rows[k]),
                        sb.workload,
                        sb.model,
                        sb.families[int(sb.family[k])],
                        credit=float(sb.credit[k]),
                        cost=float(sb.cost[k]),
                        cstar=float(sb.cstar[k]),
                        latency_bound=False,
                        budget=sb.budgets[int(sb.group[k])],
                        shared=True,
                        fraction=float(sb.phi[k]),
                        share_class=int(sb.klass[k]),
                    )
                )
        return out

    def _lists(self, tbl: _Table) -> _RowLists:
        hit = self._row_lists.get(id(tbl))
        if hit is None or hit.tbl is not tbl:
            hit = _RowLists(tbl)
            self._row_lists[id(tbl)] = hit
        return hit

    def _why_none(self, model_id: str, stages: Sequence[str], diag: Diagnostics, opts: SolverOptions) -> str:
        """Why no topology of a model has an option for every group, told of the group that blocks it.

        A topology t is blocked by its groups g without an option. When some topology is blocked by memory
        alone, the memory that would unblock one is min_t max_{g in t} need_g (need_g: the least any row of g
        needs); that value and its group are named, so the number is what a GPU must have free. Otherwise,
        when some topology is blocked by latency alone, the one nearest to its budgets (least max over its
        blocked groups of floor_g / budget_g) is named with that group's p95 floor and budget. Otherwise each
        blocked group of the topology with the fewest (and narrowest) blocked groups gets its own reason.
        """
        info = {g: diag.groups.get((model_id, g), GroupDiagnostics()) for t in topologies(stages) for g in t}

        def why(g: Group) -> str:
            d = info[g]
            return "cells" if not d.has_rows else "memory" if not d.fits else "latency"

        def memory(g: Group) -> str:
            return (
                f"its {group_name(g)} group needs at least {info[g].min_memory_gib:.1f} GiB, the largest allowed "
                f"GPU has {diag.max_free_gib:.1f} GiB after the {opts.memory_reserve_gib:g} GiB reserve"
            )

        def latency(g: Group) -> str:
            d = info[g]
            budget = d.budget_s if d.budget_s is not None else math.inf
            whole = len(g) == len(stages) or diag.objective_s is None
            of = "" if whole else f", its share of the {diag.objective_s:g} s objective"
            if d.min_floor_p95_s > budget:
                return (
                    f"the fastest option of its {group_name(g)} group has a p95 of {d.min_floor_p95_s:.2f} s "
                    f"before any queueing, over that group's latency budget ({budget:.2f} s{of})"
                )
            return (
                f"its {group_name(g)} group's p95 with queueing stays over that group's latency budget "
                f"({budget:.2f} s{of}) even with {opts.max_latency_extra_replicas} replicas more than the rate needs"
            )

        blocked = {t: [g for g in t if not info[g].ok] for t in topologies(stages)}
        blocked = {t: gs for t, gs in blocked.items() if gs}
        if not blocked or not any(d.has_rows for d in info.values()):
            return f"{model_id}: no family in the fleet has cells (measured or estimated) for every stage"
        by_memory = [t for t, gs in blocked.items() if all(why(g) == "memory" for g in gs)]
        if by_memory:
            t = min(by_memory, key=lambda t: max(info[g].min_memory_gib for g in blocked[t]))
            g = max(blocked[t], key=lambda g: info[g].min_memory_gib)
            split = f" (split as {topology_name(t)})" if len(t) > 1 else ""
            return f"{model_id}: {memory(g)}{split}"
        by_latency = [t for t, gs in blocked.items() if all(why(g) == "latency" for g in gs)]

        def ratio(g: Group) -> float:
            budget = info[g].budget_s
            return info[g].min_floor_p95_s / budget if budget else math.inf

        if by_latency:
            t = min(by_latency, key=lambda t: max(ratio(g) for g in blocked[t]))
            return f"{model_id}: {latency(max(blocked[t], key=ratio))}"
        t = min(blocked, key=lambda t: (len(blocked[t]), sum(len(g) for g in blocked[t])))
        parts = []
        for g in blocked[t]:
            kind = why(g)
            if kind == "memory":
                parts.append(memory(g))
            elif kind == "latency":
                parts.append(latency(g))
            else:
                parts.append(f"its {group_name(g)} group has no cells (measured or estimated) on the allowed families")
        return f"{model_id}: " + "; ".join(parts)

    def _build_model(
        self,
        problem: Problem,
        flt: OptionFilter,
        wi: int,
        w: Workload,
        spec: ModelSpec,
        diag: Diagnostics,
        budgets: dict[GroupKey, float | None],
    ) -> tuple[list[Option], _SharedBatch | None]:
        opts = problem.options
        model_id = spec.id
        h, wd = w.resolution[model_id]
        steps = w.steps[model_id]
        stages = spec.stage_names
        allowed: dict[str, tuple[str, ...]] = {}
        for stage in stages:
            names, why = self.allowed_recipes(w, model_id, stage, flt)
            if not names:
                diag.reasons.append(why)
                return [], None
            allowed[stage] = tuple(names)
        families = tuple(
            fid
            for fid in problem.families
            if (w.families is None or fid in w.families) and (flt.families is None or fid in flt.families)
        )
        batches: dict[str, frozenset[int]] = {}
        for stage in stages:
            found: set[int] = set()
            for r in allowed[stage]:
                found.update(self.perf.batches_for(model_id, stage, r, h, wd))
            if w.batches is not None:
                found &= set(w.batches)
            if flt.batch_one:
                found &= {1}
            batches[stage] = frozenset(found)
        table = self._table(spec, allowed, batches, families, steps, h, wd, flt.together_only)
        group_budget: list[float | None] = []
        groups = table.groups if table is not None else []
        fastest = table.fastest if table is not None else {}
        total_fastest = sum(fastest.values()) if fastest else math.inf
        for group in groups:
            budget: float | None = None
            if w.p95_latency_s is not None:
                if math.isfinite(total_fastest) and total_fastest > 0:
                    share = sum(fastest[s] for s in group) / total_fastest
                else:
                    share = len(group) / len(stages)
                budget = w.p95_latency_s * share
                diag.objective_s = w.p95_latency_s
            budgets[(wi, model_id, group)] = budget
            group_budget.append(budget)
        if table is None:
            return [], None
        return self._select(problem, flt, wi, w, model_id, table, group_budget, diag, opts)

    def _select(
        self,
        problem: Problem,
        flt: OptionFilter,
        wi: int,
        w: Workload,
        model_id: str,
        tbl: _Table,
        group_budget: list[float | None],
        diag: Diagnostics,
        opts: SolverOptions,
    ) -> tuple[list[Option], _SharedBatch | None]:
        """Credit every row of a table for this workload and keep the non-dominated rows per segment."""
        fams = [problem.families[f] for f in tbl.families]
        lam = w.rate
        b, t, u, mem = tbl.batch, tbl.service_s, tbl.uncertainty, tbl.memory_gib
        free_by_family = np.array([f.memory_gib - opts.memory_reserve_gib for f in fams])
        diag.max_free_gib = max(diag.max_free_gib, float(free_by_family.max()))
        free = free_by_family[tbl.seg_family]
        fits = np.ones(b.shape, dtype=bool) if flt.ignore_memory else ~(mem > free)
        fits &= _starts_in_time(tbl, w, model_id, fits, diag)
        thr = b / t
        service = t * (1 + u)
        own = tbl.p95_s * (1 + u)
        credit_h = thr / (1 + w.headroom + u + tbl.spread)
        c0 = np.maximum(1.0, np.ceil(lam / credit_h - 1e-9))
        has_budget = w.p95_latency_s is not None
        budget = np.array([math.inf if x is None else x for x in group_budget])[tbl.seg_group]
        floor = (b - 1) / lam + own
        if has_budget:
            cstar = np.full(b.shape, np.inf)
            idx = np.nonzero(fits)[0]
            if idx.size:
                cstar[idx] = min_replicas_for_latency(
                    lam, b[idx], service[idx], own[idx], c0[idx], budget[idx], opts.max_latency_extra_replicas
                )
            ok = fits & np.isfinite(cstar)
        else:
            cstar = c0
            ok = fits
        if np.unique(tbl.seg_group[ok]).size < len(tbl.groups):  # some group has no option: say why, per group
            for gi, group in enumerate(tbl.groups):
                rows_g = tbl.seg_group == gi
                fit_g = rows_g & fits
                mem_g = mem[rows_g & ~np.isnan(mem)]
                diag.groups[(model_id, group)] = GroupDiagnostics(
                    has_rows=bool(np.any(rows_g)),
                    min_memory_gib=float(mem_g.min()) if mem_g.size else math.inf,
                    fits=bool(np.any(fit_g)),
                    min_floor_p95_s=float(floor[fit_g].min()) if np.any(fit_g) else math.inf,
                    budget_s=group_budget[gi],
                    ok=bool(np.any(rows_g & ok)),
                )
        if not np.any(ok):
            return [], None
        latency_bound = np.isfinite(cstar) & (cstar > c0)
        with np.errstate(divide="ignore", invalid="ignore"):
            credit = np.where(latency_bound, lam / cstar, credit_h)
        phi = lam / credit_h
        no_shared = np.zeros(b.shape, dtype=bool)
        for (gk, fid), factor in flt.credit_scale.items():
            if gk[0] == wi and gk[1] == model_id and gk[2] in tbl.groups and fid in tbl.families:
                rows = (tbl.seg_group == tbl.groups.index(gk[2])) & (tbl.seg_family == tbl.families.index(fid))
                credit = np.where(rows, credit * factor, credit)
        for gk in flt.no_shared_keys:
            if gk[0] == wi and gk[1] == model_id and gk[2] in tbl.groups:
                no_shared |= tbl.seg_group == tbl.groups.index(gk[2])
        price = np.array([f.price_per_hour for f in fams])[tbl.seg_family]
        energy_fams = [k for k, f in enumerate(fams) if f.energy_price_per_kwh]
        cost = price.copy()
        for k in energy_fams:
            rows = np.nonzero(tbl.seg_family == k)[0]
            cost[rows] += [fams[k].energy_cost_per_hour(None if math.isnan(p) else float(p)) for p in tbl.power_w[rows]]
        mem0 = np.where(np.isnan(mem), 0.0, mem)
        lists = self._lists(tbl)
        unlimited_by_family = np.array([f.available is None for f in fams])
        out: list[Option] = []
        # Dedicated: per segment the largest credit (ties: cheaper, surer, smaller) ...
        idx = np.nonzero(ok)[0]
        order = idx[np.lexsort((mem0[idx], u[idx], cost[idx], -credit[idx], tbl.segment[idx]))]
        seg_sorted = tbl.segment[order]
        first = np.r_[True, seg_sorted[1:] != seg_sorted[:-1]]
        picks = order[first]
        if energy_fams:  # ... or, on families with an energy price, the front of credit vs $/hour
            energy_rows = np.isin(tbl.seg_family[order], energy_fams)
            extra = []
            for a, z in itertools.pairwise(np.r_[np.nonzero(first)[0], len(order)]):
                seg_rows = order[a:z]
                if not energy_rows[a]:
                    continue
                best_cost = cost[seg_rows[0]]
                for i in seg_rows[1:]:
                    if cost[i] < best_cost - 1e-12:
                        best_cost = cost[i]
                        extra.append(int(i))
            picks = np.r_[picks, np.array(extra, dtype=np.int64)]
        kept = _running_rows(problem, w, tbl, lists, ok)
        if kept.size:
            picks = np.union1d(picks, kept)
        # ... and across families: dropped when an option of the same group on a family without an
        # availability limit costs no more per replica and credits no less (replace it replica by replica).
        pg = tbl.seg_group[picks]
        pc, pk = credit[picks], cost[picks]
        pu = unlimited_by_family[tbl.seg_family[picks]]
        n = picks.size
        later = np.arange(n)[None, :] < np.arange(n)[:, None]
        better = (pk[None, :] < pk[:, None]) | (pc[None, :] > pc[:, None]) | later
        dominated = np.any(
            (pg[None, :] == pg[:, None])
            & pu[None, :]
            & (pk[None, :] <= pk[:, None])
            & (pc[None, :] >= pc[:, None])
            & better
            & ~np.eye(n, dtype=bool),
            axis=1,
        ) & ~np.isin(picks, kept)
        # Latency tie-break (module docstring): per segment, the rows after its pick (credit descending) that
        # cost no more and beat the p95 floor of every row before them. Offsetting each segment's floors by
        # its rank lets one running minimum over `order` restart at every segment.
        rank = np.cumsum(first) - 1
        floor_o = floor[order]
        alone = np.ceil(lam / credit[order] - 1e-9)  # replicas the row needs to carry the rate by itself
        cheap = (cost[order] <= cost[order[first]][rank] + 1e-12) & (alone <= alone[first][rank])
        big = float(np.max(floor_o)) + 1.0
        key = np.where(cheap, floor_o, np.inf) - rank * big
        running = np.minimum.accumulate(np.r_[np.inf, key])[:-1]
        front = ~first & cheap & (key < running - 1e-9 * big)
        fpos = np.nonzero(front)[0]
        alt_rows: dict[int, IntArray] = {}
        if fpos.size:
            owners = order[np.nonzero(first)[0][rank[fpos]]]  # the segment's pick, contiguous per segment
            starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
            ends = np.r_[starts[1:], owners.size]
            alts_all = order[fpos]
            alt_rows = {
                i: alts_all[a:z]
                for i, a, z in zip(owners[starts].tolist(), starts.tolist(), ends.tolist(), strict=True)
            }
        source = _AlternativeSource(
            lists, wi, model_id, tbl.families, credit, cost, cstar, latency_bound, group_budget, lam
        )
        for i in picks[~dominated].tolist():
            rows_i = alt_rows.get(i)
            out.append(
                lists.option(
                    i,
                    wi,
                    model_id,
                    tbl.families[lists.family[i]],
                    credit=float(credit[i]),
                    cost=float(cost[i]),
                    cstar=float(cstar[i]),
                    latency_bound=bool(latency_bound[i]),
                    budget=group_budget[lists.group[i]],
                    shared=False,
                    fraction=float(lam / credit[i]),
                    alternatives=None if rows_i is None else Alternatives(source, rows_i),
                    running=bool(kept.size) and i in kept,
                )
            )
        share = opts.share_gpus if flt.share is None else flt.share
        if not share:
            return out, None
        cap = min(opts.share_max_fraction, opts.share_max_utilization)
        base = ok & ~no_shared & (phi <= cap) & ~np.isnan(mem)
        if not np.any(base):
            return out, None
        own_class = share_class(service)
        parts: list[tuple[IntArray, IntArray]] = []
        # A tenant may join its own service-time class or a higher one (longer co-tenants) when its latency
        # still fits: the extra pools give the packing small fillers to round GPUs up with. A tenant without an
        # objective may also join the family's pool of such tenants, where service times are not limited.
        steps = [own_class + step for step in range(SHARE_CLASS_SPAN + 1)]
        if not has_budget:
            steps.append(np.full(b.shape, NO_OBJECTIVE_CLASS, dtype=np.int64))
        for klass in steps:
            eligible = base.copy()
            if has_budget:
                bound = share_class_bound_s(klass)
                p95 = shared_check_p95_s(np.full(b.shape, lam), b, own, bound, opts.share_max_utilization)
                eligible &= p95 <= budget
            sidx = np.nonzero(eligible)[0]
            if not sidx.size:
                continue
            # Pareto front of (phi, memory) per (segment, class): a row is kept when its memory is below every
            # earlier row's of its pool; offsetting by pool lets one running minimum serve all.
            pool = tbl.segment[sidx] * 64 + klass[sidx]
            order = np.lexsort((u[sidx], mem[sidx], phi[sidx], pool))
            rows, pools = sidx[order], pool[order]
            big = float(np.nanmax(mem[rows])) + 1.0
            key = mem[rows] - pools * big
            running = np.minimum.accumulate(np.r_[np.inf, key])[:-1]
            front = np.r_[True, pools[1:] != pools[:-1]] | (key < running - 1e-9)
            parts.append((rows[front], klass[rows[front]]))
        if not parts:
            return out, None
        rows = np.concatenate([p[0] for p in parts])
        klass_rows = np.concatenate([p[1] for p in parts])
        fam_rows = tbl.seg_family[rows]
        size = np.maximum(phi[rows] / opts.share_max_utilization, mem[rows] / free_by_family[fam_rows])
        price = np.array([f.price_per_hour for f in fams])
        batch = _SharedBatch(
            lists=lists,
            workload=wi,
            model=model_id,
            families=tbl.families,
            groups=tbl.groups,
            budgets=group_budget,
            rows=rows,
            group=tbl.seg_group[rows],
            family=fam_rows,
            klass=klass_rows,
            credit=credit_h[rows],
            cost=cost[rows],
            cstar=c0[rows],
            phi=phi[rows],
            size=size,
            price=price[fam_rows],
            unlimited=unlimited_by_family[fam_rows],
        )
        return out, batch


def _starts_in_time(
    tbl: _Table, w: Workload, model_id: str, fits: NDArray[np.bool_], diag: Diagnostics
) -> NDArray[np.bool_]:
    """Rows whose replicas start within the workload's `max_startup_s` (all rows without a cap); when the cap
    leaves a group that fits in memory nothing, the workload's diagnostics say which group and how fast it could
    start at best."""
    if w.max_startup_s is None:
        return np.ones(tbl.startup_s.shape, dtype=bool)
    quick = tbl.startup_s <= w.max_startup_s
    for gi, group in enumerate(tbl.groups):
        rows = (tbl.seg_group == gi) & fits
        if np.any(rows) and not np.any(rows & quick):
            best = float(tbl.startup_s[rows].min())
            diag.reasons.append(
                f"{model_id}: every option of its {group_name(group)} group needs at least {best:.0f} s to start a "
                f"replica (weights load + compiling each batch size it runs), over max_startup_s "
                f"{w.max_startup_s:g} s"
            )
    return quick


def _running_rows(problem: Problem, w: Workload, tbl: _Table, lists: _RowLists, ok: NDArray[np.bool_]) -> IntArray:
    """Rows of the kinds (group, family, recipes, batch) the running plan uses for this workload, where they
    still fit and meet the latency budget (`ok`); empty without a running plan."""
    running = problem.options.running
    if running is None:
        return np.zeros(0, dtype=np.int64)
    kinds = {(k[1], k[2], k[3], k[4]) for k in running.replicas if k[0] == w.name}
    if not kinds:
        return np.zeros(0, dtype=np.int64)
    rows = [
        i
        for i in np.nonzero(ok)[0].tolist()
        if (tbl.groups[lists.group[i]], tbl.families[lists.family[i]], lists.recipes[i], lists.batch[i]) in kinds
    ]
    return np.array(rows, dtype=np.int64)


class _RowLists:
    """A table's columns as Python lists (and per-row tuples), so building an Option costs no numpy."""

    def __init__(self, tbl: _Table) -> None:
        self.tbl = tbl
        self.batch = [int(b) for b in tbl.batch.tolist()]
        self.service = tbl.service_s.tolist()
        self.p95 = tbl.p95_s.tolist()
        self.u = tbl.uncertainty.tolist()
        self.mem = [None if math.isnan(m) else m for m in tbl.memory_gib.tolist()]
        self.power = [None if math.isnan(p) else p for p in tbl.power_w.tolist()]
        self.group = tbl.seg_group.tolist()
        self.family = tbl.seg_family.tolist()
        self.startup = tbl.startup_s.tolist()
        self.recipes = [tuple(c.recipe for c in combo) for combo in tbl.combos]
        steps = tbl.steps
        self.calls = [tuple(steps if c.stage == "denoiser" else 1 for c in combo) for combo in tbl.combos]

    def option(
        self,
        i: int,
        wi: int,
        model_id: str,
        family: str,
        *,
        credit: float,
        cost: float,
        cstar: float,
        latency_bound: bool,
        budget: float | None,
        shared: bool,
        fraction: float,
        share_class: int = -1,
        alternatives: Alternatives | None = None,
        running: bool = False,
    ) -> Option:
        return Option(
            wi,
            model_id,
            self.tbl.groups[self.group[i]],
            family,
            self.recipes[i],
            self.batch[i],
            self.service[i],
            self.p95[i],
            self.batch[i] / self.service[i],
            credit,
            self.mem[i],
            self.u[i],
            self.power[i],
            cost,
            self.tbl.combos[i],
            self.calls[i],
            shared,
            fraction,
            int(cstar) if math.isfinite(cstar) else 0,
            latency_bound,
            budget,
            share_class,
            alternatives,
            self.startup[i],
            running,
        )


@dataclass(frozen=True)
class _SharedBatch:
    """The shared-mode candidates of one (workload, model), as arrays, before the builder decides how many
    of them the MILP needs."""

    lists: _RowLists
    workload: int
    model: str
    families: list[str]
    groups: list[Group]
    budgets: list[float | None]
    rows: IntArray
    group: IntArray
    family: IntArray
    klass: IntArray
    credit: FloatArray
    cost: FloatArray
    cstar: FloatArray
    phi: FloatArray
    size: FloatArray
    price: FloatArray
    unlimited: NDArray[np.bool_]


def iter_group_options(option_set: OptionSet, key: GroupKey) -> Iterable[Option]:
    for i in option_set.by_group.get(key, []):
        yield option_set.options[i]
