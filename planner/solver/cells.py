"""The cell table: every recipe x batch combination of every stage group on every family, for one (model,
resolution, steps, allow-lists), built once and shared by every workload that asks for it.

For a group's stages s (calls = steps for the denoiser, else 1):
    T   = sum_s calls_s x latency_s            T95 the same with each cell's p95
    u   = sum_s calls_s latency_s u_s / T      (time-weighted estimate uncertainty; `spread` likewise)
    memory = sum_s weights_s + max_s (peak_s - weights_s)   (all weights resident, one stage active)
A cell without peak memory counts `UNKNOWN_MEMORY_FACTOR` x its weights. Per (stage, family, batch), a recipe
no better in any criterion than another is dropped first (`pareto`): it cannot improve a group containing it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from planner.catalog.schema import ModelSpec
from planner.perf.model import CellEstimate, PerfModel
from planner.solver.startup import startup_seconds
from planner.solver.topology import Group, topologies

UNKNOWN_MEMORY_FACTOR = 1.2
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class CellTable:
    """Every recipe x batch combination of every group on every family for one (model, resolution, steps,
    allow-lists): workload-independent, cached, one row per combination."""

    groups: list[Group]
    families: list[str]
    seg_group: IntArray
    seg_family: IntArray
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

    @cached_property
    def lists(self) -> RowLists:
        """The columns as Python lists, built on first use (most tables of a what-if are never credited)."""
        return RowLists(self)


class RowLists:
    """A table's columns as Python lists (and per-row tuples), so building an Option costs no numpy."""

    def __init__(self, tbl: CellTable) -> None:
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


def pareto(items: list[tuple[tuple[float, ...], CellEstimate]]) -> list[CellEstimate]:
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


class CellTables:
    """Builds and caches cell tables (and the per-stage cells they are made of) for one performance model."""

    def __init__(self, perf: PerfModel) -> None:
        self.perf = perf
        self._stage_cache: dict[tuple[object, ...], list[CellEstimate]] = {}
        self._tables: dict[tuple[object, ...], CellTable | None] = {}

    def stage_cells(
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
        kept = pareto(items)
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
            per_stage = [self.stage_cells(family, model, s, allowed[s], b, h, w) for s in group]
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

    def table(
        self,
        model: ModelSpec,
        allowed: Mapping[str, tuple[str, ...]],
        batches: Mapping[str, frozenset[int]],
        families: tuple[str, ...],
        steps: int,
        h: int,
        w: int,
        together_only: bool,
    ) -> CellTable | None:
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
        fastest = {s: self._fastest(families, model.id, s, allowed[s], batches[s], steps, h, w) for s in stages}
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
        table = _assembled(groups, families, rows, combos, seg_group, seg_family, fastest, steps) if rows else None
        self._tables[key] = table
        return table

    def _fastest(
        self,
        families: tuple[str, ...],
        model_id: str,
        stage: str,
        allowed: tuple[str, ...],
        batches: frozenset[int],
        steps: int,
        h: int,
        w: int,
    ) -> float:
        """The stage's fastest p95 service (calls x p95 x (1 + u), s) on any family and batch: what the latency
        budget's split weighs the stage by."""
        calls = steps if stage == "denoiser" else 1
        best = math.inf
        for fam in families:
            for b in sorted(batches):
                for cell in self.stage_cells(fam, model_id, stage, allowed, b, h, w):
                    best = min(best, calls * cell.latency_p95_ms * (1 + cell.uncertainty) / 1e3)
        return best


def _assembled(
    groups: list[Group],
    families: tuple[str, ...],
    rows: list[tuple[float, float, float, float, float, float, float, float]],
    combos: list[tuple[CellEstimate, ...]],
    seg_group: list[int],
    seg_family: list[int],
    fastest: dict[str, float],
    steps: int,
) -> CellTable:
    """The table's columns as arrays."""
    arr = np.array(rows, dtype=np.float64)
    sg = np.array(seg_group, dtype=np.int64)
    sf = np.array(seg_family, dtype=np.int64)
    return CellTable(
        groups=groups,
        families=list(families),
        seg_group=sg,
        seg_family=sf,
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
