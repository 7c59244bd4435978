"""Admission of measurements: what a host reports is evidence to weigh, not a command to obey.

A probe run passes four checks, in order, before anything is stored (`admit`); the first three refuse the
whole run, the last holds cells back:

1. ownership (403): an agent reports only for the GPU families its registered GPUs belong to (a host without
   GPUs, a CPU in development, only for families outside the catalog);
2. catalog (422): an agent reports only catalog models and recipes (a recipe the workers cannot build would
   give a plan the workers refuse to run; an operator may still import other recipes as a CSV file);
3. physics (422): no cell may be faster than its family's roofline. With F the cell's FLOPs (the catalog's
   `flops_per_call`: stage FLOPs x batch x CFG x resolution factor) and W its weight bytes, the fastest a
   call can be is
       t_min = max(F / P, W / BW)
   with P the family's dense peak at the recipe's compute precision and BW its memory bandwidth, each the
   larger of the catalog figure and any calibration the agents measured. A cell below `ROOFLINE_SLACK` x t_min
   is refused, naming both numbers. The agent's own `tflops_per_call` is not used: it is the sender's claim.
   Skipped where the catalog FLOPs do not describe the call: step caches (they skip work) and tiny or tiled
   VAEs (another network than the stage's components);
4. consensus (quarantine): a cell whose latency is off by more than `outlier_ratio` (either way) from the
   median of what other sources (other hosts, imports) hold for the same (family, model, stage, recipe,
   batch, resolution) is stored with a `quarantine_reason`: visible in the API and the metrics, used by no
   plan until an operator accepts its run (`POST /v1/probe-runs/{id}/accept`).

Admin submissions skip checks 1 and 2 (the operator is the authority on what a fleet runs) but not 3 and 4.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from planner import catalog as package_catalog
from planner.catalog.schema import GpuFamily, ModelSpec, Recipe
from planner.core.errors import FieldError, ForbiddenError
from planner.db import models as m
from planner.measurements.contract import MeasurementRow
from planner.perf.roofline import compute_precision, flops_per_call, weight_gib

ROOFLINE_SLACK = 0.8
"""A cell may be at most this much faster than t_min: the catalog's stage FLOPs are estimates, not counts."""
DEFAULT_OUTLIER_RATIO = 1.5
"""A cell 1.5x faster or slower than the other sources' median is held back (a 2x lie moved a plan by 40%)."""

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Roofline:
    """The fastest a family can run a cell, and the two bounds it came from (ms)."""

    t_min_ms: float
    compute_ms: float
    memory_ms: float
    peak_tflops: float | None
    tbps: float


def family_ceilings(session: Session, family: GpuFamily) -> tuple[dict[str, float], float]:
    """Peak TFLOP/s per precision and TB/s of a family: the larger of catalog datasheet and any calibration."""
    tflops = {str(p): float(v) for p, v in family.tflops.items()}
    if "fp32" not in tflops and "tf32" in tflops:
        tflops["fp32"] = tflops["tf32"]
    tbps = float(family.memory_bandwidth_tbps)
    cals = session.execute(
        select(m.Calibration.bf16_tflops, m.Calibration.fp8_tflops, m.Calibration.memory_tbps).where(
            m.Calibration.gpu_family_id == family.id
        )
    ).all()
    for bf16, fp8, bw in cals:
        for precision, value in (("bf16", bf16), ("fp16", bf16), ("fp8", fp8)):
            if value and precision in tflops:
                tflops[precision] = max(tflops[precision], float(value))
        if bw:
            tbps = max(tbps, float(bw))
    return tflops, tbps


def roofline(
    row: MeasurementRow,
    *,
    model: ModelSpec | None,
    recipe: Recipe | None,
    tflops: Mapping[str, float],
    tbps: float,
) -> Roofline | None:
    """t_min of a cell (module docstring, 3.), or None where the catalog does not describe the call."""
    if recipe is not None and (recipe.data_dependent or recipe.vae != "full"):
        return None
    precision = compute_precision(row.recipe, recipe)
    flops = flops_per_call(model, row.stage, row.batch, row.height, row.width)
    peak = tflops.get(precision) if precision is not None else None
    compute_ms = flops / peak * 1e3 if (flops is not None and peak) else 0.0
    weights = weight_gib(model, row.stage, row.recipe, recipe)
    memory_ms = weights * 2**30 / (tbps * 1e12) * 1e3 if weights is not None else 0.0
    t_min = max(compute_ms, memory_ms)
    if t_min <= 0:
        return None
    return Roofline(t_min, compute_ms, memory_ms, peak, tbps)


def check_ownership(session: Session, *, host_id: str, families: Iterable[str]) -> None:
    """403 unless every family named is one of the host's registered GPUs' families.

    A host without GPUs (the agent on a CPU, in development) has no family to own: it may report only for
    families outside the catalog, which an operator defined (`PUT /v1/gpu-families/cpu`); the catalog's
    families, which fleets plan on, stay reported only by hosts that have such a GPU.
    """
    gpus = list(session.scalars(select(m.Gpu.gpu_family_id).where(m.Gpu.host_id == host_id)))
    owned = {f for f in gpus if f}
    if not gpus:
        catalog = set(session.scalars(select(m.GpuFamily.id).where(m.GpuFamily.in_catalog.is_(True))))
        foreign = sorted(set(families) & catalog)
    else:
        foreign = sorted(set(families) - owned)
    if foreign:
        mine = ", ".join(sorted(owned)) or "none (it registered no GPU of a known family)"
        raise ForbiddenError(
            f"this host reports for {', '.join(foreign)}, but its registered GPUs are of {mine}; a host reports "
            "only for its own GPUs' families (re-register it with its real GPUs, or import the file as an operator)"
        )


def check_catalog(session: Session, rows: Sequence[MeasurementRow]) -> None:
    """422 for a model or recipe outside the catalog, naming the row and the catalog's ids."""
    models = set(session.scalars(select(m.Model.id).where(m.Model.in_catalog.is_(True))))
    recipes = set(session.scalars(select(m.Recipe.id).where(m.Recipe.in_catalog.is_(True))))
    problems: list[tuple[Loc, str]] = []
    for i, row in enumerate(rows):
        if row.model not in models:
            problems.append(
                (("measurements", i, "model"), f"{row.model!r} is not a catalog model; an agent reports only those")
            )
        if row.recipe not in recipes:
            problems.append(
                (
                    ("measurements", i, "recipe"),
                    f"{row.recipe!r} is not a catalog recipe (GET /v1/recipes); an agent reports only recipes the "
                    "workers can build. An operator may import other recipes with `planner measurements import`",
                )
            )
    if problems:
        raise FieldError(problems)


def check_physics(session: Session, rows: Sequence[MeasurementRow]) -> None:
    """422 for an `ok` cell faster than its family's roofline allows (module docstring, 3.)."""
    families = package_catalog.gpu_families()
    models = package_catalog.models()
    recipes = package_catalog.recipes()
    ceilings: dict[str, tuple[dict[str, float], float]] = {}
    problems: list[tuple[Loc, str]] = []
    for i, row in enumerate(rows):
        family = families.get(row.gpu_family)
        if row.status != "ok" or row.latency_ms is None or family is None:
            continue
        if family.id not in ceilings:
            ceilings[family.id] = family_ceilings(session, family)
        tflops, tbps = ceilings[family.id]
        bound = roofline(row, model=models.get(row.model), recipe=recipes.get(row.recipe), tflops=tflops, tbps=tbps)
        if bound is None or row.latency_ms >= ROOFLINE_SLACK * bound.t_min_ms:
            continue
        problems.append(
            (
                ("measurements", i, "latency_ms"),
                f"{row.latency_ms:g} ms is faster than {row.gpu_family} can run this cell: its roofline allows no "
                f"less than {bound.t_min_ms:.3g} ms (compute {bound.compute_ms:.3g} ms at "
                f"{bound.peak_tflops or 0:g} TFLOP/s, weights {bound.memory_ms:.3g} ms at {bound.tbps:g} TB/s). "
                "Check the timing (synchronise the device before reading the clock) and the family of the GPU",
            )
        )
    if problems:
        raise FieldError(problems)


def peer_latencies(session: Session, row: MeasurementRow, *, host_id: str | None) -> list[float]:
    """Accepted `ok` latencies of the same cell from other sources (other hosts' runs and imports)."""
    query = (
        select(m.Measurement.latency_ms)
        .join(m.ProbeRun, m.ProbeRun.id == m.Measurement.probe_run_id)
        .where(
            m.Measurement.gpu_family_id == row.gpu_family,
            m.Measurement.model_id == row.model,
            m.Measurement.stage == row.stage,
            m.Measurement.recipe_id == row.recipe,
            m.Measurement.batch == row.batch,
            m.Measurement.height == row.height,
            m.Measurement.width == row.width,
            m.Measurement.status == "ok",
            m.Measurement.quarantine_reason.is_(None),
            m.Measurement.latency_ms.is_not(None),
        )
    )
    if host_id is not None:
        query = query.where((m.ProbeRun.host_id != host_id) | m.ProbeRun.host_id.is_(None))
    return [float(v) for v in session.scalars(query) if v is not None]


def outliers(session: Session, rows: Sequence[MeasurementRow], *, host_id: str | None, ratio: float) -> dict[int, str]:
    """Row index -> why it is held back: latency beyond `ratio` of the other sources' median (module docstring, 4.)."""
    held: dict[int, str] = {}
    for i, row in enumerate(rows):
        if row.status != "ok" or row.latency_ms is None:
            continue
        peers = peer_latencies(session, row, host_id=host_id)
        if not peers:
            continue
        median = statistics.median(peers)
        factor = row.latency_ms / median
        if factor > ratio or factor < 1 / ratio:
            way = f"{1 / factor:.3g}x faster" if factor < 1 else f"{factor:.3g}x slower"
            held[i] = (
                f"{row.latency_ms:g} ms is {way} than the median {median:g} ms of {len(peers)} other measurement(s) "
                f"of this cell (allowed: within {ratio:g}x); held back until an operator accepts the run"
            )
    return held


def admit(
    session: Session,
    rows: Sequence[MeasurementRow],
    *,
    host_id: str | None,
    agent: bool,
    outlier_ratio: float = DEFAULT_OUTLIER_RATIO,
) -> dict[int, str]:
    """Run the checks of the module docstring; returns the cells to quarantine (row index -> reason)."""
    if agent and host_id is not None:
        check_ownership(session, host_id=host_id, families={r.gpu_family for r in rows})
        check_catalog(session, rows)
    check_physics(session, rows)
    return outliers(session, rows, host_id=host_id, ratio=outlier_ratio)
