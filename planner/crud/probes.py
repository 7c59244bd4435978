"""Probe runs from agents: validated against the store, stored whole or not at all, resend-safe.

The measurements go through the same import as a CSV file (`planner.measurements.store.import_rows`), so a
recipe the catalog never heard of is recorded the same way, and the run's fields come from the submission.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from planner.api.schemas.probes import MeasurementIn, ProbeRunIn
from planner.core.errors import ConflictError, FieldError, ForbiddenError, NotFoundError
from planner.db import models as m
from planner.db.base import utcnow
from planner.measurements import admission
from planner.measurements.admission import DEFAULT_OUTLIER_RATIO
from planner.measurements.csvio import LocatedRow
from planner.measurements.store import ANALYZE_AFTER_ROWS, PROVENANCE_FIELDS, analyze_measurements, import_rows

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Submission:
    """What storing a probe run did: the run, and whether it was stored now (False: a resend of a stored run)."""

    run: m.ProbeRun
    created: bool


def payload_digest(payload: ProbeRunIn) -> str:
    """A digest of a submission's content: a resend must carry the same content as the stored run."""
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_against_store(session: Session, payload: ProbeRunIn) -> None:
    """Every family, model and stage must be known to the store; each problem names its field."""
    families = set(session.scalars(select(m.GpuFamily.id)))
    stages: dict[str, set[str]] = defaultdict(set)
    for model_id, stage in session.execute(select(m.ModelStage.model_id, m.ModelStage.stage)):
        stages[model_id].add(stage)
    problems: list[tuple[Loc, str]] = []
    hint = "define it with PUT /v1/gpu-families/{id} or use a catalog id (GET /v1/gpu-families)"
    if payload.gpu_family is not None and payload.gpu_family not in families:
        problems.append((("gpu_family",), f"unknown GPU family {payload.gpu_family!r}; {hint}"))
    seen: dict[tuple[str, str, str, str, int, int, int], int] = {}
    run_id = str(payload.id)
    for i, row in enumerate(payload.measurements):
        if row.gpu_family not in families:
            problems.append((("measurements", i, "gpu_family"), f"unknown GPU family {row.gpu_family!r}; {hint}"))
        if row.model not in stages:
            problems.append(
                (("measurements", i, "model"), f"unknown model {row.model!r}; known: {', '.join(sorted(stages))}")
            )
        elif row.stage not in stages[row.model]:
            problems.append(
                (
                    ("measurements", i, "stage"),
                    f"model {row.model!r} has no stage {row.stage!r}; its stages: {sorted(stages[row.model])}",
                )
            )
        if row.probe_run is not None and row.probe_run.lower() != run_id:
            problems.append((("measurements", i, "probe_run"), "names another run; leave it out or use the run's id"))
        if row.cell in seen:
            problems.append(
                (("measurements", i), f"measures the same cell as measurements.{seen[row.cell]} (one per cell per run)")
            )
        else:
            seen[row.cell] = i
    if problems:
        raise FieldError(problems)


def _check_gpus_belong(session: Session, payload: ProbeRunIn, host_id: str) -> dict[str, m.Gpu]:
    """GPUs the run names must not be another host's; returns the named GPUs that are this host's."""
    named = {c.gpu_uuid for c in payload.calibrations if c.gpu_uuid} | (
        {payload.gpu_uuid} if payload.gpu_uuid else set()
    )
    if not named:
        return {}
    gpus = {g.uuid: g for g in session.scalars(select(m.Gpu).where(m.Gpu.uuid.in_(named)))}
    for gpu in gpus.values():
        if gpu.host_id != host_id:
            raise ForbiddenError(f"GPU {gpu.uuid!r} belongs to another host; a host reports only its own GPUs")
    return gpus


def _same_or_conflict(run: m.ProbeRun, digest: str) -> Submission:
    if run.source_sha256 != digest:
        raise ConflictError(f"probe run {run.id} is already stored with different content; a new run needs a new id")
    return Submission(run=run, created=False)


def submit_probe_run(
    session: Session, *, payload: ProbeRunIn, agent: bool = False, outlier_ratio: float = DEFAULT_OUTLIER_RATIO
) -> Submission:
    """Store a probe run in one transaction (this function commits). Resent: the stored run, created=False.

    Before anything is written the run passes `planner.measurements.admission.admit` (an agent's: ownership,
    catalog, physics, consensus; the admin's: physics, consensus); cells off the consensus are stored
    quarantined.

    Two identical submissions racing both pass the existence check; the second's insert then fails on the
    primary key, and it answers as a resend of the first.
    """
    run_id, host_id = str(payload.id), str(payload.host_id)
    digest = payload_digest(payload)
    existing = session.get(m.ProbeRun, run_id)
    if existing is not None:
        return _same_or_conflict(existing, digest)
    if session.get(m.Host, host_id) is None:
        raise FieldError.at(("host_id",), f"unknown host {host_id}; register it first (POST /v1/hosts)")
    _check_against_store(session, payload)
    gpus = _check_gpus_belong(session, payload, host_id)
    rows = list(payload.measurements)
    if agent:
        named = {r.gpu_family for r in rows} | ({payload.gpu_family} if payload.gpu_family else set())
        admission.check_ownership(session, host_id=host_id, families=named)
    held = admission.admit(session, rows, host_id=host_id, agent=agent, outlier_ratio=outlier_ratio)
    try:
        run = _insert(session, payload=payload, digest=digest, gpus=gpus)
        _quarantine(session, run_id=run_id, rows=rows, held=held)
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = session.get(m.ProbeRun, run_id)
        if existing is None:
            raise
        return _same_or_conflict(existing, digest)
    if len(rows) >= ANALYZE_AFTER_ROWS:
        analyze_measurements(session)
    return Submission(run=run, created=True)


def _quarantine(session: Session, *, run_id: str, rows: Sequence[MeasurementIn], held: dict[int, str]) -> None:
    """Mark the held-back cells of a just-stored run with their reasons."""
    if not held:
        return
    reasons = {rows[i].cell: reason for i, reason in held.items()}
    for meas in session.scalars(select(m.Measurement).where(m.Measurement.probe_run_id == run_id)):
        cell = (meas.gpu_family_id, meas.model_id, meas.stage, meas.recipe_id, meas.batch, meas.height, meas.width)
        if cell in reasons:
            meas.quarantine_reason = reasons[cell]
    session.flush()


def _insert(session: Session, *, payload: ProbeRunIn, digest: str, gpus: dict[str, m.Gpu]) -> m.ProbeRun:
    run_id, host_id = str(payload.id), str(payload.host_id)
    host_name = session.scalar(select(m.Host.name).where(m.Host.id == host_id))
    fill = {k: v for k, v in payload.provenance.items() if k in PROVENANCE_FIELDS and v is not None}
    fill["host"] = host_name or host_id  # the source of the cells (planner.perf.model): not the sender's to name
    rows = [
        LocatedRow(
            i,
            row.model_copy(
                update={
                    "probe_run": run_id,
                    "host": fill["host"],
                    **{k: v for k, v in fill.items() if getattr(row, k) is None},
                }
            ),
        )
        for i, row in enumerate(payload.measurements)
    ]
    if rows:
        # The same import as a CSV file; its run then gets the submission's own fields.
        import_rows(session, rows=rows, name=f"probe run {run_id}", digest=digest, kind=payload.kind, host_id=host_id)
        run = session.get_one(m.ProbeRun, run_id)
    else:
        run = m.ProbeRun(id=run_id, kind=payload.kind, host_id=host_id)
        session.add(run)
    run.gpu_uuid = payload.gpu_uuid
    run.gpu_family_id = payload.gpu_family or run.gpu_family_id
    run.weights = payload.weights or run.weights
    run.provenance = {k: v for k, v in payload.provenance.items() if v is not None}
    run.source_file = None
    run.source_sha256 = digest
    run.notes = payload.notes
    run.started_at = payload.started_at or run.started_at
    run.finished_at = payload.finished_at or run.finished_at
    session.flush()
    for cal in payload.calibrations:
        gpu = gpus.get(cal.gpu_uuid) if cal.gpu_uuid else None
        session.add(
            m.Calibration(
                probe_run_id=run_id,
                gpu_uuid=cal.gpu_uuid,
                gpu_family_id=(gpu.gpu_family_id if gpu else None) or payload.gpu_family,
                bf16_tflops=cal.bf16_tflops,
                fp8_tflops=cal.fp8_tflops,
                memory_tbps=cal.memory_tbps,
                h2d_gbps=cal.h2d_gbps,
                ratios=dict(cal.ratios),
                flagged=cal.flagged,
                flag_reason=cal.flag_reason,
                measured_at=payload.finished_at or payload.started_at or utcnow(),
            )
        )
        if gpu is not None:
            gpu.flagged = cal.flagged
            gpu.flag_reason = cal.flag_reason if cal.flagged else None
    session.flush()
    return run


def counts(session: Session, *, run_id: str) -> tuple[int, int, int]:
    """(measurements, calibrations, quarantined measurements) stored with a run."""
    meas = session.scalar(select(func.count()).select_from(m.Measurement).where(m.Measurement.probe_run_id == run_id))
    cals = session.scalar(select(func.count()).select_from(m.Calibration).where(m.Calibration.probe_run_id == run_id))
    held = session.scalar(
        select(func.count())
        .select_from(m.Measurement)
        .where(m.Measurement.probe_run_id == run_id, m.Measurement.quarantine_reason.is_not(None))
    )
    return int(meas or 0), int(cals or 0), int(held or 0)


def quarantine_run(session: Session, *, run_id: str, reason: str) -> m.ProbeRun:
    """Hold every cell of a run back from plans (an operator's decision; the caller commits)."""
    run = get_probe_run(session, run_id=run_id)
    session.execute(
        update(m.Measurement)
        .where(m.Measurement.probe_run_id == run_id)
        .values(quarantine_reason=f"quarantined by an operator: {reason}")
        .execution_options(synchronize_session=False)
    )
    return run


def accept_run(session: Session, *, run_id: str) -> m.ProbeRun:
    """Release every held-back cell of a run to plans (an operator's decision; the caller commits)."""
    run = get_probe_run(session, run_id=run_id)
    session.execute(
        update(m.Measurement)
        .where(m.Measurement.probe_run_id == run_id)
        .values(quarantine_reason=None)
        .execution_options(synchronize_session=False)
    )
    return run


def delete_run(session: Session, *, run_id: str) -> None:
    """Delete a run with its measurements and calibrations (the caller commits)."""
    run = get_probe_run(session, run_id=run_id)
    session.execute(delete(m.Measurement).where(m.Measurement.probe_run_id == run_id))
    session.execute(delete(m.Calibration).where(m.Calibration.probe_run_id == run_id))
    session.delete(run)
    session.flush()


def quarantined_total(session: Session) -> int:
    """Measurements held back from plans, over the store (the metrics' gauge)."""
    return int(
        session.scalar(
            select(func.count()).select_from(m.Measurement).where(m.Measurement.quarantine_reason.is_not(None))
        )
        or 0
    )


def get_probe_run(session: Session, *, run_id: str) -> m.ProbeRun:
    run = session.get(m.ProbeRun, run_id)
    if run is None:
        raise NotFoundError("probe run", run_id, hint="list runs with GET /v1/probe-runs")
    return run


def list_probe_runs(
    session: Session, *, host_id: str | None, kind: str | None, limit: int, offset: int, quarantined: bool = False
) -> tuple[Sequence[m.ProbeRun], int]:
    """Runs, newest first; `quarantined`: only runs with a held-back cell."""
    query = select(m.ProbeRun)
    if quarantined:
        held = select(m.Measurement.probe_run_id).where(m.Measurement.quarantine_reason.is_not(None))
        query = query.where(m.ProbeRun.id.in_(held))
    if host_id is not None:
        query = query.where(m.ProbeRun.host_id == host_id)
    if kind is not None:
        query = query.where(m.ProbeRun.kind == kind)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    runs = session.scalars(query.order_by(m.ProbeRun.created_at.desc(), m.ProbeRun.id).limit(limit).offset(offset))
    return runs.all(), int(total)
