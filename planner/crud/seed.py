"""Seed the store from the package's catalogs and shipped reference measurements.

Catalog rows are upserted (a newer package updates them); rows the catalog never had (a family a fleet defined,
a recipe an imported file named) are left alone. The shipped measurements are imported once: their probe runs
have ids derived from the file's content, so seeding twice stores them once. A newer package's file may lack a
row an older one shipped (a measurement withdrawn as wrong, benchmarks/results/withdrawn.csv): reseeding
removes such rows from the runs imported from a shipped file, so the store holds what the package ships; rows
from the agents and from other imported files are never touched.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from planner import catalog
from planner.db import models as m
from planner.db.session import session_scope
from planner.measurements.contract import MeasurementRow

REFERENCE_DIR = Path(str(resources.files("planner") / "reference"))
REFERENCE_CSV = REFERENCE_DIR / "measurements.csv"
REFERENCE_PARTS = ("planner", "reference", "measurements.csv")
"""How a probe run imported from a shipped file (in whichever install of the package) is recognised."""
SEED_KEY = "seed_digest"


def seed_catalogs(session: Session) -> None:
    """Upsert GPU families (with prices), models (with stages) and recipes from the catalog files."""
    for fam in catalog.gpu_families().values():
        row = session.get(m.GpuFamily, fam.id) or m.GpuFamily(id=fam.id)
        row.name = fam.name
        row.vendor = fam.vendor
        row.memory_gib = fam.memory_gib
        row.memory_bandwidth_tbps = fam.memory_bandwidth_tbps
        row.tflops = {str(k): v for k, v in fam.tflops.items()}
        row.tdp_w = fam.tdp_w
        row.nvml_patterns = list(fam.nvml_patterns)
        row.compute_capability = fam.compute_capability
        row.in_catalog = True
        row.unverified = list(fam.unverified)
        row.sources = list(fam.sources)
        session.add(row)
        session.flush()
        existing = {(p.provider, p.offering, p.as_of): p for p in row.prices if not p.is_override}
        for position, price in enumerate(fam.prices):
            key = (price.provider, price.offering, price.as_of)
            prow = existing.pop(key, None) or m.GpuPrice(gpu_family_id=fam.id, is_override=False)
            prow.provider, prow.offering, prow.as_of = key
            prow.price_per_hour = price.price_per_hour
            prow.source = price.source
            prow.status = price.status
            prow.position = position
            if prow not in row.prices:
                row.prices.append(prow)
        for stale in existing.values():
            row.prices.remove(stale)

    for spec in catalog.models().values():
        mrow = session.get(m.Model, spec.id) or m.Model(id=spec.id)
        mrow.name = spec.name
        mrow.architecture = spec.architecture
        mrow.default_steps = spec.default_steps
        mrow.height = spec.height
        mrow.width = spec.width
        mrow.guidance_scale = spec.guidance_scale
        mrow.cfg = spec.cfg
        mrow.text_tokens = spec.text_tokens
        mrow.in_catalog = True
        session.add(mrow)
    session.flush()
    for spec in catalog.models().values():
        mrow = session.get_one(m.Model, spec.id)
        mrow.distilled_from = spec.distilled_from
        have = {s.stage: s for s in mrow.stages}
        for position, stage in enumerate(spec.stages):
            srow = have.get(stage.name) or m.ModelStage(model_id=spec.id, stage=stage.name)
            srow.position = position
            srow.components = [c.model_dump() for c in stage.components]
            srow.tflops_per_call = stage.tflops_per_call
            if srow not in mrow.stages:
                mrow.stages.append(srow)

    for rec in catalog.recipes().values():
        rrow = session.get(m.Recipe, rec.id) or m.Recipe(id=rec.id)
        rrow.description = rec.description
        rrow.stages = list(rec.stages)
        rrow.options = rec.model_dump(exclude={"id", "description", "stages"})
        rrow.in_catalog = True
        session.add(rrow)
    session.flush()


def seed_reference_measurements(session: Session, *, path: Path = REFERENCE_CSV) -> int:
    """Import the shipped reference measurements once; returns how many rows were stored now."""
    if not path.is_file():
        return 0
    from planner.crud.measurements import import_rows, sha256_file
    from planner.measurements.csvio import read_csv

    located = read_csv(path)
    digest = sha256_file(path)
    # A shipped run the store holds stays as stored (its retired cells are handled below), never an error at start-up.
    stored = import_rows(session, rows=located, name=str(path), digest=digest, changed_runs="skip").stored
    retire_unshipped_reference_rows(session, rows=[r.row for r in located], digest=digest)
    return stored


def _from_shipped_file(source_file: str | None) -> bool:
    return source_file is not None and Path(source_file).parts[-3:] == REFERENCE_PARTS


def retire_unshipped_reference_rows(session: Session, *, rows: list[MeasurementRow], digest: str) -> int:
    """Delete the rows of shipped-file runs that the shipped file no longer has (and runs left empty)."""
    from planner.crud.measurements import run_id

    shipped = {
        (run_id(r.probe_run, digest), r.gpu_family, r.model, r.stage, r.recipe, r.batch, r.height, r.width)
        for r in rows
    }
    retired = 0
    for run in session.scalars(select(m.ProbeRun).where(m.ProbeRun.kind == "import")):
        if not _from_shipped_file(run.source_file):
            continue
        stale = [
            meas
            for meas in run.measurements
            if (
                run.id,
                meas.gpu_family_id,
                meas.model_id,
                meas.stage,
                meas.recipe_id,
                meas.batch,
                meas.height,
                meas.width,
            )
            not in shipped
        ]
        retired += len(stale)
        if stale and len(stale) == len(run.measurements) and not run.calibrations:
            session.delete(run)  # its measurements go with it (cascade)
            continue
        for meas in stale:
            session.delete(meas)
    session.flush()
    return retired


def seed_digest(*, reference: bool) -> str:
    """A digest of what seeding would write: the catalog files (and the reference CSV when seeded too)."""
    h = hashlib.sha256()
    files = sorted(p for p in catalog.loader.DATA_DIR.rglob("*") if p.is_file())
    if reference and REFERENCE_CSV.is_file():
        files.append(REFERENCE_CSV)
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def seed(engine: Engine, *, reference: bool = True) -> None:
    """Seed an already-migrated store in one transaction, and remember what it was seeded from."""
    with session_scope(engine) as session:
        seed_catalogs(session)
        if reference:
            seed_reference_measurements(session)
        meta = session.get(m.StoreMeta, SEED_KEY) or m.StoreMeta(key=SEED_KEY)
        meta.value = seed_digest(reference=reference)
        session.add(meta)


def needs_seed(session: Session, *, reference: bool) -> bool:
    """True when the store was never seeded, or seeded from other catalog files than this package's."""
    meta = session.get(m.StoreMeta, SEED_KEY)
    return meta is None or meta.value != seed_digest(reference=reference)
