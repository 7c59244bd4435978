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
    class and the next one up (`selection.SHARE_CLASS_SPAN`) when its latency allows. A tenant whose workload has no
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

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.catalog.schema import ModelSpec, Recipe
from planner.perf.model import PerfModel
from planner.solver.admission import allowed_recipes, default_recipe
from planner.solver.candidates import Alternatives, Option, SharedBatch, make_option
from planner.solver.cells import CellTable, CellTables, IntArray
from planner.solver.diagnostics import Diagnostics, GroupDiagnostics, why_none
from planner.solver.problem import Problem, Workload
from planner.solver.selection import Request, Selected, select
from planner.solver.topology import ChoiceKey, Group, GroupKey, Topology, group_name, topologies, topology_name

__all__ = [
    "Alternatives",
    "ChoiceKey",
    "Diagnostics",
    "Group",
    "GroupDiagnostics",
    "GroupKey",
    "Option",
    "OptionBuilder",
    "OptionFilter",
    "OptionSet",
    "Topology",
    "default_recipe",
    "group_name",
    "iter_group_options",
    "topologies",
    "topology_name",
]

WORKLOAD_CACHE_FACTOR = 8
"""The workload cache is cleared past this many entries per workload (about as many option sets)."""
FIRST_CHUNK = 8
"""Workloads credited together first when a build stops at the first unserved one (doubling after)."""


@dataclass(frozen=True)
class OptionFilter:
    """Restrictions used by the baselines and the what-if solves."""

    families: frozenset[str] | None = None
    together_only: bool = False
    batch_one: bool = False
    default_recipes: bool = False
    share: bool | None = None
    ignore_memory: bool = False


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
    memo: dict[tuple[object, ...], object] = field(default_factory=dict, repr=False, compare=False)
    """What the MILP remembers across the option sets of one builder (planner.solver.milp, cover patterns):
    its builder's, so it lives as long as one `solve`."""

    def feasible_workloads(self) -> set[int]:
        return {w for w, c in self.choices.items() if c}


@dataclass
class _WorkloadOptions:
    """One workload's part of an option set."""

    options: list[Option] = field(default_factory=list)
    shared: list[SharedBatch] = field(default_factory=list)
    choices: list[tuple[str, Topology]] = field(default_factory=list)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    budgets: dict[GroupKey, float | None] = field(default_factory=dict)


@dataclass
class _Pending:
    """A (workload, model) on its way through the builder: its request (None where it never reaches a table)."""

    wi: int
    model: str
    spec: ModelSpec | None
    request: Request | None
    reasons: list[str]
    table: CellTable | None = None
    selected: Selected | None = None


class OptionBuilder:
    """Builds option sets; caches cell tables and each workload's options across the solves of one problem."""

    def __init__(self, perf: PerfModel, models: Mapping[str, ModelSpec], recipes: Mapping[str, Recipe]) -> None:
        self.perf = perf
        self.models = models
        self.recipes = recipes
        self.cells = CellTables(perf)
        self._workload_cache: dict[tuple[object, ...], _WorkloadOptions] = {}
        self.memo: dict[tuple[object, ...], object] = {}
        """Handed to every option set built here (`OptionSet.memo`)."""
        self._lookups: dict[tuple[object, ...], tuple[str, CellTable | None]] = {}
        self._shared_cache: dict[int, tuple[SharedBatch, bool, list[Option]]] = {}
        """Per shared batch (by identity: a cached workload keeps its batches), its options per packing mode."""

    def allowed_recipes(self, w: Workload, model: str, stage: str, flt: OptionFilter) -> tuple[list[str], str]:
        """Recipes of a stage after allow-list, stage applicability and quality floor; plus why, if none."""
        return allowed_recipes(self.perf, self.recipes, w, model, stage, default_only=flt.default_recipes)

    # ---- a whole option set ------------------------------------------------------------------------
    def build(
        self, problem: Problem, flt: OptionFilter | None = None, *, stop_when_unserved: bool = False
    ) -> OptionSet:
        """Options of every workload (module docstring), pruned; `flt` restricts them for baselines.

        `stop_when_unserved`: stop at the first workload without an option (the rest get none, with a reason
        saying so): a baseline that cannot serve one workload is infeasible, and building the others is waste."""
        flt = flt or OptionFilter()
        parts = self._parts(problem, flt, stop_when_unserved)
        options: list[Option] = []
        shared_rows: list[SharedBatch] = []
        choices: dict[int, list[tuple[str, Topology]]] = {}
        diagnostics: dict[int, Diagnostics] = {}
        budgets: dict[GroupKey, float | None] = {}
        for wi, built in enumerate(parts):
            options.extend(built.options)
            shared_rows.extend(built.shared)
            choices[wi] = list(built.choices)
            diagnostics[wi] = built.diagnostics
            budgets.update(built.budgets)
        for wj in range(len(parts), len(problem.workloads)):
            choices[wj] = []
            diagnostics[wj] = Diagnostics(reasons=["not built: an earlier workload has no option here"])
        options.extend(self._shared_options(problem, shared_rows))
        by_group: dict[GroupKey, list[int]] = defaultdict(list)
        for i, o in enumerate(options):
            by_group[o.key].append(i)
        return OptionSet(
            options=options,
            choices=choices,
            by_group=dict(by_group),
            diagnostics=diagnostics,
            budgets=budgets,
            shared_candidates=sum(len(sb.rows) for sb in shared_rows),
            memo=self.memo,
        )

    def _parts(self, problem: Problem, flt: OptionFilter, stop_when_unserved: bool) -> list[_WorkloadOptions]:
        """Each workload's options in order, from the cache where the same workload was built in the same
        context; stopping after the first unserved workload when asked (built in doubling chunks until then)."""
        context = self._context_key(problem, flt)
        n = len(problem.workloads)
        parts: list[_WorkloadOptions] = []
        chunk = FIRST_CHUNK if stop_when_unserved else max(n, 1)
        while len(parts) < n:
            span = range(len(parts), min(n, len(parts) + chunk))
            keys = {wi: self._cache_key(context, wi, problem.workloads[wi]) for wi in span}
            todo = [wi for wi in span if keys[wi] is None or keys[wi] not in self._workload_cache]
            built = self._build_workloads(problem, flt, todo)
            # Every part of the span is taken before the cache changes: clearing it below must not drop a hit.
            span_parts = {wi: built[wi] if wi in built else self._workload_cache[keys[wi]] for wi in span}  # type: ignore[index]
            for wi in span:
                key, part = keys[wi], span_parts[wi]
                if key is not None and wi in built:
                    if len(self._workload_cache) > WORKLOAD_CACHE_FACTOR * max(n, 1):
                        self._workload_cache.clear()
                    self._workload_cache[key] = part
                parts.append(part)
                if stop_when_unserved and not part.choices:
                    return parts
            chunk *= 2
        return parts

    @staticmethod
    def _cache_key(context: tuple[object, ...] | None, wi: int, w: Workload) -> tuple[object, ...] | None:
        return None if context is None else (context, wi, repr(w))

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
            id(opts.running),  # a re-plan keeps the running kinds as extra rows (selection._with_running)
        )
        return (fleet, knobs)

    # ---- the workloads of one build, credited together per table ----------------------------------
    def _build_workloads(self, problem: Problem, flt: OptionFilter, wis: Sequence[int]) -> dict[int, _WorkloadOptions]:
        """The options of workloads `wis`: each (workload, model) finds its table, the requests of one table
        are credited together (planner.solver.selection), and each workload's choices are read off."""
        out = {wi: _WorkloadOptions() for wi in wis}
        pending = [
            self._pending(problem, flt, wi, model_id, out[wi])
            for wi in wis
            for model_id in problem.workloads[wi].models
        ]
        share = problem.options.share_gpus if flt.share is None else flt.share
        by_table: dict[int, list[_Pending]] = defaultdict(list)
        for p in pending:
            if p.table is not None and p.request is not None:
                by_table[id(p.table)].append(p)
        for group in by_table.values():
            tbl = group[0].table
            assert tbl is not None
            selected = select(problem, flt.ignore_memory, share, tbl, [p.request for p in group if p.request])
            for p, sel in zip(group, selected, strict=True):
                p.selected = sel
        for p in pending:
            self._read_choices(problem, flt, p, out[p.wi])
        return out

    def _pending(self, problem: Problem, flt: OptionFilter, wi: int, model_id: str, part: _WorkloadOptions) -> _Pending:
        """A (workload, model) with its allowed recipes, table and latency budgets; its reasons where it has
        no table."""
        w = problem.workloads[wi]
        spec = self.models.get(model_id)
        pending = _Pending(wi, model_id, spec, None, [])
        if spec is None:
            pending.reasons.append(f"{model_id}: not in the model catalog")
            return pending
        why, table = self._table_for(problem, flt, w, spec)
        if why:
            pending.reasons.append(why)
            return pending
        budgets = _budgets(w, wi, spec, table, part)
        if table is not None:
            request = Request(wi, w, model_id, budgets, part.diagnostics, pending.reasons)
            pending.request, pending.table = request, table
        return pending

    def _table_for(
        self, problem: Problem, flt: OptionFilter, w: Workload, spec: ModelSpec
    ) -> tuple[str, CellTable | None]:
        """The cell table a (workload, model) asks for, or why no recipe of some stage is allowed; remembered
        by what it depends on (size, steps, allow-lists, quality floors, filter, fleet), which most workloads
        of a large problem share."""
        model_id = spec.id
        key = (
            model_id,
            w.resolution[model_id],
            w.steps[model_id],
            None if w.recipes is None else tuple(sorted(w.recipes.items())),
            w.batches,
            w.families,
            repr(w.quality),
            repr(w.quality_scores),
            flt,
            tuple(problem.families),
        )
        hit = self._lookups.get(key)
        if hit is not None:
            return hit
        found: tuple[str, CellTable | None] = ("", None)
        allowed: dict[str, tuple[str, ...]] = {}
        for stage in spec.stage_names:
            names, why = self.allowed_recipes(w, model_id, stage, flt)
            if not names:
                found = (why, None)
                break
            allowed[stage] = tuple(names)
        else:
            h, wd = w.resolution[model_id]
            families = tuple(
                fid
                for fid in problem.families
                if (w.families is None or fid in w.families) and (flt.families is None or fid in flt.families)
            )
            batches = {stage: self._batches(w, flt, model_id, stage, allowed[stage]) for stage in spec.stage_names}
            found = (
                "",
                self.cells.table(spec, allowed, batches, families, w.steps[model_id], h, wd, flt.together_only),
            )
        self._lookups[key] = found
        return found

    def _batches(
        self, w: Workload, flt: OptionFilter, model_id: str, stage: str, allowed: Sequence[str]
    ) -> frozenset[int]:
        h, wd = w.resolution[model_id]
        found: set[int] = set()
        for r in allowed:
            found.update(self.perf.batches_for(model_id, stage, r, h, wd))
        if w.batches is not None:
            found &= set(w.batches)
        if flt.batch_one:
            found &= {1}
        return frozenset(found)

    def _read_choices(self, problem: Problem, flt: OptionFilter, p: _Pending, part: _WorkloadOptions) -> None:
        """A (workload, model)'s options into its workload's part, with the topologies they make usable and,
        where none is, why."""
        diag = part.diagnostics
        diag.reasons.extend(p.reasons)
        if p.spec is None:
            return
        found = p.selected.options if p.selected is not None else []
        shared = p.selected.shared if p.selected is not None else None
        part.options.extend(found)
        groups_with_options = {o.group for o in found}
        if shared is not None:
            part.shared.append(shared)
            groups_with_options |= {shared.groups[g] for g in set(shared.group.tolist())}
        tops = [t for t in topologies(p.spec.stage_names) if not flt.together_only or len(t) == 1]
        usable = [t for t in tops if all(g in groups_with_options for g in t)]
        part.choices.extend((p.model, t) for t in usable)
        if not usable and not any(r.startswith(f"{p.model}:") for r in diag.reasons):
            diag.reasons.append(why_none(p.model, p.spec.stage_names, diag, problem.options))

    def _shared_options(self, problem: Problem, batches: list[SharedBatch]) -> list[Option]:
        """Shared-mode options. When there are more candidates than the exact packing takes, the fluid packing
        of planner.solver.milp is used and only the smallest slot per (group, family, class) matters; of those
        a slot priced (price x size) no lower than another of the same group and class on a family without an
        availability limit is dropped too (`_fluid_slots`). A batch's options depend on the batch and the mode
        alone, so a workload built in an earlier solve reuses them."""
        fluid = sum(len(sb.rows) for sb in batches) > problem.options.exact_packing_max_items
        # The hits are taken first: clearing the cache below must not drop one of this call's batches.
        found_for = {id(sb): self._shared_cache[id(sb)][2] for sb in batches if self._cached_shared(sb, fluid)}
        todo = [sb for sb in batches if id(sb) not in found_for]
        if todo:
            sizes = [len(sb.rows) for sb in todo]
            owner = np.repeat(np.arange(len(todo)), sizes)
            local = np.concatenate([np.arange(n) for n in sizes])
            if fluid:
                owner, local = _fluid_slots(todo, owner, local)
            made: list[list[Option]] = [[] for _ in todo]
            for b, k in zip(owner.tolist(), local.tolist(), strict=True):
                made[b].append(_shared_option(todo[b], k))
            if len(self._shared_cache) > WORKLOAD_CACHE_FACTOR * max(len(problem.workloads), 1):
                self._shared_cache.clear()
            for sb, found in zip(todo, made, strict=True):
                self._shared_cache[id(sb)] = (sb, fluid, found)
                found_for[id(sb)] = found
        return [o for sb in batches for o in found_for[id(sb)]]

    def _cached_shared(self, sb: SharedBatch, fluid: bool) -> bool:
        hit = self._shared_cache.get(id(sb))
        return hit is not None and hit[0] is sb and hit[1] == fluid


def _shared_option(sb: SharedBatch, k: int) -> Option:
    """Candidate `k` of a shared batch as a shared-GPU slot option."""
    return make_option(
        sb.lists,
        int(sb.rows[k]),
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


def _fluid_slots(batches: list[SharedBatch], owner: IntArray, local: IntArray) -> tuple[IntArray, IntArray]:
    """The slots the fluid packing needs, as (batch, index in batch), in each batch's (group, family, class)
    order: the smallest per (group, family, class); then dropped where a slot of the same batch, group and
    class on a family without an availability limit is priced (price x size) lower, or equal and listed
    earlier. Sorted by (batch, group, class, price, listing), a slot is dropped exactly when an unlimited
    slot comes before it in its (batch, group, class)."""
    cat = {
        name: np.concatenate([getattr(sb, name) for sb in batches])
        for name in ("group", "family", "klass", "size", "price", "unlimited")
    }
    order = np.lexsort((cat["size"], cat["klass"], cat["family"], cat["group"], owner))
    key = np.stack([owner[order], cat["group"][order], cat["family"][order], cat["klass"][order]])
    keep = order[np.r_[True, np.any(key[:, 1:] != key[:, :-1], axis=0)]]
    priced = cat["price"][keep] * cat["size"][keep]
    listing = np.arange(keep.size)
    by_price = np.lexsort((listing, priced, cat["klass"][keep], cat["group"][keep], owner[keep]))
    block = np.stack([owner[keep][by_price], cat["group"][keep][by_price], cat["klass"][keep][by_price]])
    starts = np.r_[True, np.any(block[:, 1:] != block[:, :-1], axis=0)]
    unlimited = cat["unlimited"][keep][by_price].astype(np.int64)
    seen = np.cumsum(unlimited) - unlimited  # unlimited slots before each, since the start of the whole array
    dominated = np.empty(keep.size, dtype=bool)
    dominated[by_price] = seen > seen[np.nonzero(starts)[0]][np.cumsum(starts) - 1]
    chosen = keep[~dominated]
    return owner[chosen], local[chosen]


def _budgets(
    w: Workload, wi: int, spec: ModelSpec, table: CellTable | None, part: _WorkloadOptions
) -> list[float | None]:
    """Each table group's share of the workload's p95 objective: its stages' share of the fastest per-stage
    service times (`CellTable.fastest`), so the budgets of any topology's groups add up to the objective."""
    out: list[float | None] = []
    stages = spec.stage_names
    fastest = table.fastest if table is not None else {}
    total_fastest = sum(fastest.values()) if fastest else math.inf
    for group in table.groups if table is not None else []:
        budget: float | None = None
        if w.p95_latency_s is not None:
            if math.isfinite(total_fastest) and total_fastest > 0:
                share = sum(fastest[s] for s in group) / total_fastest
            else:
                share = len(group) / len(stages)
            budget = w.p95_latency_s * share
            part.diagnostics.objective_s = w.p95_latency_s
        part.budgets[(wi, spec.id, group)] = budget
        out.append(budget)
    return out


def iter_group_options(option_set: OptionSet, key: GroupKey) -> Iterable[Option]:
    for i in option_set.by_group.get(key, []):
        yield option_set.options[i]
