"""Measurements in and out of the store.

An import is one transaction: every row is validated (by the contract, then against the store: known family,
model, stage of that model) before anything is written, so a bad row leaves the store as it was. Rows are
grouped into probe runs by their `probe_run` column (one run per file when absent); a run's id is that column
when it is a UUID, else derived from the file's content, so importing the same file twice stores it once.

The store is append-only reference data: a stored run is never changed. A file naming a stored run id with the
same content (an unedited export, the same file again) is skipped; with other content (an edited export, a cell
the stored run lacks) it is refused whole, naming the run, the lines and fields, and how to import the rows as a
new run: empty the `probe_run` column (or give a label that is not a UUID), and the run id comes from the file.

Choices the contract leaves open, written down:
- A recipe the catalog does not know is accepted and recorded as a non-catalog recipe for that stage
  (DESIGN.md: "imported measurements may name recipes the code never heard of").
- A family the catalog does not know is accepted only when its rows carry `gpu_memory_gib` (the file defines
  it; the planner needs its memory to place anything); otherwise the row is refused with how to fix it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import Session

from planner.catalog.schema import STAGE_ALIASES, STAGES
from planner.core.errors import ConflictError, InputError
from planner.db import models as m
from planner.measurements.contract import ALL_COLUMNS, OPTIONAL_COLUMNS, MeasurementRow
from planner.measurements.csvio import CsvValidationError, LocatedRow, RowError, format_value, read_csv

RUN_NAMESPACE = uuid.UUID("6f1c1d2e-8a53-4c5e-9a43-6c0de1a5e0b1")
STORED_ELSEWHERE = ("gpu_memory_gib",)
"""Optional columns that are not a measurement's: `gpu_memory_gib` defines a new family (stored with it)."""
PROVENANCE_FIELDS = tuple(c for c in OPTIONAL_COLUMNS if not hasattr(m.Measurement, c) and c not in STORED_ELSEWHERE)
"""Optional columns without a table column of their own (the software, the host, the extra quality and clock
figures): kept in the measurement's provenance JSON. Derived from the contract, so a new optional column is
stored without a second list to update."""


@dataclass
class ImportResult:
    """What an import did: rows stored now, rows skipped because their run was already stored."""

    stored: int = 0
    skipped: int = 0
    runs_created: list[str] = field(default_factory=list)
    runs_skipped: list[str] = field(default_factory=list)
    new_recipes: list[str] = field(default_factory=list)
    new_families: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_id(label: str | None, digest: str) -> str:
    """The probe run id of an imported row: its own run UUID, else one derived from the file and label."""
    if label:
        try:
            return str(uuid.UUID(label))
        except ValueError:
            pass
    return str(uuid.uuid5(RUN_NAMESPACE, f"{digest}:{label or ''}"))


def validate_against_store(session: Session, rows: Sequence[LocatedRow], *, name: str) -> None:
    """Refuse rows naming an unknown model, a stage the model lacks, or an undefined family; nothing is written."""
    families = set(session.scalars(select(m.GpuFamily.id)))
    stages: dict[str, set[str]] = defaultdict(set)
    for model_id, stage in session.execute(select(m.ModelStage.model_id, m.ModelStage.stage)):
        stages[model_id].add(stage)
    errors: list[RowError] = []
    new_family_memory: dict[str, tuple[float, int]] = {}  # family -> (memory, first line giving it)
    for located in rows:
        row, line = located.row, located.line
        if row.gpu_family not in families and row.gpu_memory_gib is not None:
            first = new_family_memory.setdefault(row.gpu_family, (row.gpu_memory_gib, line))
            if abs(first[0] - row.gpu_memory_gib) > 1e-6:
                errors.append(
                    RowError(
                        line,
                        "gpu_memory_gib",
                        f"{row.gpu_memory_gib:g} for new family {row.gpu_family!r}, which line {first[1]} defines "
                        f"with {first[0]:g}; give one memory per family (or two family ids for two GPUs)",
                    )
                )
        if row.model not in stages:
            errors.append(
                RowError(line, "model", f"unknown model {row.model!r}; known models: {', '.join(sorted(stages))}")
            )
        elif row.stage not in stages[row.model]:
            errors.append(
                RowError(line, "stage", f"model {row.model!r} has no stage {row.stage!r} ({sorted(stages[row.model])})")
            )
        if row.gpu_family not in families and row.gpu_memory_gib is None:
            errors.append(
                RowError(
                    line,
                    "gpu_family",
                    f"unknown GPU family {row.gpu_family!r}: add a gpu_memory_gib column to define it, "
                    "or use a catalog id (`planner families`)",
                )
            )
    if errors:
        raise CsvValidationError(name, errors)


class RunChangedError(ConflictError):
    """A file names a stored probe run but holds other content; nothing from it was stored."""

    def __init__(self, name: str, changed: dict[str, list[RowError]]) -> None:
        self.changed = changed
        lines = []
        for rid, errors in changed.items():
            lines.append(f"  probe run {rid}:")
            lines.extend(f"    {e}" for e in errors[:10])
            if len(errors) > 10:
                lines.append(f"    ... and {len(errors) - 10} more")
        super().__init__(
            f"{name}: {len(changed)} probe run(s) already stored with other content; a stored run is never changed, "
            "and nothing from this file was stored.\n" + "\n".join(lines) + "\n"
            "Fix: to import these rows as a new run, empty the probe_run column (or replace it with a label that "
            "is not a UUID) and import again; the new run's id then comes from the file."
        )


_COMPARED = tuple(c for c in ALL_COLUMNS if c not in ("probe_run", "gpu_memory_gib"))


def _as_compared(value: object) -> str:
    """A value as the CSV writes it, times in UTC: the store keeps UTC, so a file's +02:00 time is the same."""
    if isinstance(value, datetime):
        value = value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return format_value(value)


def run_changes(session: Session, rid: str, rows: Sequence[LocatedRow]) -> list[RowError]:
    """How a file's rows of a stored run differ from what the store holds for it (values as the CSV writes them,
    so an unedited export compares equal); a cell the stored run lacks is a change too."""
    stored = {
        row.cell: row
        for row in (
            row_from_measurement(meas)
            for meas in session.scalars(select(m.Measurement).where(m.Measurement.probe_run_id == rid))
        )
    }
    errors: list[RowError] = []
    for located in rows:
        old = stored.get(located.row.cell)
        if old is None:
            errors.append(RowError(located.line, "cell", "a cell the stored run does not have"))
            continue
        for column in _COMPARED:
            new_text, old_text = _as_compared(getattr(located.row, column)), _as_compared(getattr(old, column))
            if new_text != old_text:
                errors.append(
                    RowError(
                        located.line, column, f"{new_text or '(empty)'} in the file, {old_text or '(empty)'} stored"
                    )
                )
    return errors


def import_rows(
    session: Session,
    *,
    rows: Sequence[LocatedRow],
    name: str,
    digest: str,
    kind: str = "import",
    host_id: str | None = None,
    changed_runs: Literal["refuse", "skip"] = "refuse",
) -> ImportResult:
    """Store validated rows; the caller's transaction commits or rolls back the whole file.

    A run already stored is skipped when the file's rows of it are the same; other content is refused
    (RunChangedError) before anything is written, unless `changed_runs="skip"` (the shipped reference seed, whose
    retired cells `planner.crud.seed` handles itself).
    """
    validate_against_store(session, rows, name=name)
    result = ImportResult()
    known_families = set(session.scalars(select(m.GpuFamily.id)))
    recipes = {r.id: r for r in session.scalars(select(m.Recipe))}
    by_run: dict[str, list[LocatedRow]] = defaultdict(list)
    labels: dict[str, str | None] = {}
    for located in rows:
        rid = run_id(located.row.probe_run, digest)
        by_run[rid].append(located)
        labels[rid] = located.row.probe_run
    stored_runs = {rid for rid in by_run if session.get(m.ProbeRun, rid) is not None}
    if changed_runs == "refuse":
        changed = {rid: errs for rid in sorted(stored_runs) if (errs := run_changes(session, rid, by_run[rid]))}
        if changed:
            raise RunChangedError(name, changed)
    for rid, located_rows in by_run.items():
        run_rows = [located.row for located in located_rows]
        if rid in stored_runs:
            result.runs_skipped.append(rid)
            result.skipped += len(run_rows)
            continue
        for row in run_rows:
            if row.gpu_family not in known_families:
                assert row.gpu_memory_gib is not None
                session.add(
                    m.GpuFamily(
                        id=row.gpu_family,
                        name=row.gpu_name or row.gpu_family,
                        vendor="other",
                        memory_gib=row.gpu_memory_gib,
                        in_catalog=False,
                    )
                )
                known_families.add(row.gpu_family)
                result.new_families.append(row.gpu_family)
            rec = recipes.get(row.recipe)
            if rec is None:
                rec = m.Recipe(id=row.recipe, description="named by an imported file", stages=[], in_catalog=False)
                session.add(rec)
                recipes[row.recipe] = rec
                result.new_recipes.append(row.recipe)
            if not rec.in_catalog and row.stage not in rec.stages:
                rec.stages = [*rec.stages, row.stage]
        session.flush()
        first = run_rows[0]
        fams = {r.gpu_family for r in run_rows}
        weights = {r.weights for r in run_rows}
        times = [r.measured_at for r in run_rows if r.measured_at is not None]
        run = m.ProbeRun(
            id=rid,
            kind=kind,
            host_id=host_id,
            gpu_family_id=first.gpu_family if len(fams) == 1 else None,
            weights=weights.pop() if len(weights) == 1 else "mixed",
            provenance={k: getattr(first, k) for k in PROVENANCE_FIELDS if getattr(first, k) is not None},
            source_file=name,
            source_sha256=digest,
            notes=f"imported run {labels[rid]}" if labels[rid] else "",
            started_at=min(times) if times else None,
            finished_at=max(times) if times else None,
        )
        session.add(run)
        session.flush()
        session.add_all(measurement_from_row(row, probe_run_id=rid) for row in run_rows)
        session.flush()
        result.runs_created.append(rid)
        result.stored += len(run_rows)
    return result


def measurement_from_row(row: MeasurementRow, *, probe_run_id: str) -> m.Measurement:
    data: dict[str, Any] = row.model_dump(exclude={"gpu_family", "model", "recipe", *PROVENANCE_FIELDS, "probe_run"})
    data.pop("gpu_memory_gib", None)
    return m.Measurement(
        probe_run_id=probe_run_id,
        gpu_family_id=row.gpu_family,
        model_id=row.model,
        recipe_id=row.recipe,
        provenance={k: getattr(row, k) for k in PROVENANCE_FIELDS if getattr(row, k) is not None},
        **data,
    )


def import_file(session: Session, *, path: Path) -> ImportResult:
    """Read, validate and store one measurements CSV (the caller commits)."""
    rows = read_csv(path)
    if not rows:
        raise InputError(f"{path}: no rows after the header; nothing to import")
    return import_rows(session, rows=rows, name=str(path), digest=sha256_file(path))


def check_filters(
    session: Session,
    *,
    gpu_family: str | None = None,
    model: str | None = None,
    stage: str | None = None,
    recipe: str | None = None,
) -> str | None:
    """Refuse a filter naming nothing the store knows (a typo would else export an empty file and exit 0).

    Returns the stage with its alias resolved (`dn` -> `denoiser`), as `planner recommend --recipe` accepts it.
    """
    if stage is not None:
        stage = STAGE_ALIASES.get(stage, stage)
        if stage not in STAGES:
            names = ", ".join(f"{full} ({short})" for short, full in STAGE_ALIASES.items())
            raise InputError(f"--stage {stage!r}: unknown stage. Fix: use one of {names}.")
    for flag, value, table, command in (
        ("--family", gpu_family, m.GpuFamily, "planner families"),
        ("--model", model, m.Model, "planner models"),
        ("--recipe", recipe, m.Recipe, "planner recipes"),
    ):
        if value is not None and session.get(table, value) is None:
            known = sorted(session.scalars(select(table.id)))
            shown = ", ".join(known[:40]) + (", ..." if len(known) > 40 else "")
            raise InputError(
                f"{flag} {value!r}: not in the store. Known: {shown}. Fix: use one of those ids (`{command}`)."
            )
    return stage


def measurements_query(
    *,
    gpu_family: str | None = None,
    model: str | None = None,
    stage: str | None = None,
    recipe: str | None = None,
    status: str | None = None,
    latest_only: bool = True,
    quarantined: bool | None = False,
) -> Select[m.Measurement]:
    """Measurements with filters.

    `latest_only` keeps, of each cell, the newest row of each source: one per host that measured it, and one
    for all imports together (a re-imported file replaces the older import). The performance model combines
    the sources robustly (`planner.perf.model`, 1.). `quarantined`: False (default) leaves out cells held back
    by admission (`planner.crud.admission`), True keeps only those, None keeps both.
    """
    filters = []
    if gpu_family:
        filters.append(m.Measurement.gpu_family_id == gpu_family)
    if model:
        filters.append(m.Measurement.model_id == model)
    if stage:
        filters.append(m.Measurement.stage == stage)
    if recipe:
        filters.append(m.Measurement.recipe_id == recipe)
    if status:
        filters.append(m.Measurement.status == status)
    if quarantined is True:
        filters.append(m.Measurement.quarantine_reason.is_not(None))
    elif quarantined is False:
        filters.append(m.Measurement.quarantine_reason.is_(None))
    q = select(m.Measurement).where(*filters)
    if latest_only:
        cell = (
            m.Measurement.gpu_family_id,
            m.Measurement.model_id,
            m.Measurement.stage,
            m.Measurement.recipe_id,
            m.Measurement.batch,
            m.Measurement.height,
            m.Measurement.width,
        )
        newest = (
            select(func.max(m.Measurement.id).label("mid"))
            .join(m.ProbeRun, m.ProbeRun.id == m.Measurement.probe_run_id)
            .where(*filters)
            .group_by(*cell, m.ProbeRun.host_id)
            .subquery()
        )
        q = q.join(newest, m.Measurement.id == newest.c.mid)
    return q.order_by(
        m.Measurement.model_id,
        m.Measurement.stage,
        m.Measurement.gpu_family_id,
        m.Measurement.recipe_id,
        m.Measurement.batch,
        m.Measurement.id,
    )


def row_from_measurement(meas: m.Measurement, *, family_memory_gib: float | None = None) -> MeasurementRow:
    """The contract row of a stored measurement (provenance columns restored)."""
    data: dict[str, Any] = {c: getattr(meas, c) for c in ALL_COLUMNS if hasattr(m.Measurement, c)}
    data.update(meas.provenance or {})
    data.update(
        gpu_family=meas.gpu_family_id,
        model=meas.model_id,
        recipe=meas.recipe_id,
        probe_run=meas.probe_run_id,
        gpu_memory_gib=family_memory_gib,
    )
    return MeasurementRow.model_validate(data)


def iter_rows(session: Session, query: Select[m.Measurement]) -> Iterator[MeasurementRow]:
    custom = {f.id: f.memory_gib for f in session.scalars(select(m.GpuFamily).where(m.GpuFamily.in_catalog.is_(False)))}
    for meas in session.scalars(query):
        yield row_from_measurement(meas, family_memory_gib=custom.get(meas.gpu_family_id))


def stored_rows(session: Session, **filters: Any) -> list[MeasurementRow]:
    """All (latest per cell by default) stored measurements as contract rows: what the performance model reads."""
    return list(iter_rows(session, measurements_query(**filters)))


ANALYZE_AFTER_ROWS = 500
"""A write of this many rows refreshes the table's statistics: PostgreSQL without them took 46-64 s to answer
`GET /v1/measurements?model=&stage=` over 21.8k rows (0.08 s after ANALYZE); autovacuum comes too late."""


def analyze_measurements(session: Session) -> None:
    """Refresh the planner's statistics of the measurement tables after a bulk ingest (commits)."""
    session.commit()
    session.execute(text("ANALYZE measurements"))
    session.execute(text("ANALYZE probe_runs"))
    session.commit()


def count_measurements(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(m.Measurement)) or 0
