"""`planner measurements`: import and export the measurements CSV contract."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from planner.cli.common import DatabaseUrlOption, console, handle_errors
from planner.core.errors import InputError
from planner.crud import probes as runs_crud
from planner.db.session import session_scope
from planner.db.store import open_store
from planner.measurements.contract import MeasurementRow
from planner.measurements.csvio import write_rows
from planner.measurements.store import (
    ANALYZE_AFTER_ROWS,
    analyze_measurements,
    check_filters,
    import_file,
    iter_rows,
    measurements_query,
)

app = typer.Typer(
    help="Import and export measurements (the CSV contract of DESIGN.md).", no_args_is_help=True, rich_markup_mode=None
)


@app.command("import")
@handle_errors
def import_(
    file: Path = typer.Argument(..., help="A measurements CSV."),
    database_url: DatabaseUrlOption = None,
) -> None:
    """Validate every row of FILE, then store all of it in one transaction (or nothing, naming the bad rows)."""
    engine = open_store(database_url)
    with session_scope(engine) as session:
        result = import_file(session, path=file)
    if result.stored >= ANALYZE_AFTER_ROWS:  # fresh statistics, or PostgreSQL plans the next query blind
        with session_scope(engine) as session:
            analyze_measurements(session)
    console.print(
        Text(
            f"stored {result.stored} measurement(s) in {len(result.runs_created)} run(s)"
            + (f"; {result.skipped} already stored (same run) skipped" if result.skipped else "")
            + (f"; new recipes: {', '.join(result.new_recipes)}" if result.new_recipes else "")
            + (f"; new families: {', '.join(result.new_families)}" if result.new_families else "")
        ),
        highlight=False,
    )


@app.command()
@handle_errors
def export(
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write; standard output if absent."),
    gpu_family: str | None = typer.Option(None, "--family", help="Only this GPU family."),
    model: str | None = typer.Option(None, help="Only this model."),
    stage: str | None = typer.Option(
        None, help="Only this stage: text_encoder (te), denoiser (dn) or vae_decoder (vae)."
    ),
    recipe: str | None = typer.Option(None, help="Only this recipe."),
    all_runs: bool = typer.Option(False, "--all-runs", help="Every run's rows, not only the newest per cell."),
    database_url: DatabaseUrlOption = None,
) -> None:
    """Write stored measurements as the CSV contract (newest per cell unless --all-runs)."""
    if output is not None:
        check_output(output)
    engine = open_store(database_url)
    with session_scope(engine) as session:
        stage = check_filters(session, gpu_family=gpu_family, model=model, stage=stage, recipe=recipe)
        query = measurements_query(
            gpu_family=gpu_family, model=model, stage=stage, recipe=recipe, latest_only=not all_runs
        )
        rows = iter_rows(session, query)
        count = write_rows(rows, sys.stdout) if output is None else _write_file(output, rows)
    if output is not None:
        console.print(Text(f"wrote {count} measurement(s) to {output}"), highlight=False)


def check_output(output: Path) -> None:
    """Refuse an --output whose directory is missing, or that is a directory, before reading the store."""
    if output.is_dir():
        raise InputError(f"--output {output}: is a directory; give a file name, e.g. -o {output / 'measurements.csv'}")
    if not output.parent.is_dir():
        raise InputError(
            f"--output {output}: the directory {output.parent} does not exist; create it first "
            f"(mkdir -p {output.parent}) or write elsewhere."
        )


def _write_file(output: Path, rows: Iterable[MeasurementRow]) -> int:
    """Write to a temporary file beside OUTPUT, then rename: a failed export never leaves a half-written file."""
    tmp = output.with_suffix(output.suffix + ".tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            count = write_rows(rows, fh)
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(
            f"--output {output}: cannot write it ({exc.strerror or exc}); choose a writable path."
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


RunArg = typer.Argument(..., help="A probe run id (`planner measurements runs`).")


@app.command("runs")
@handle_errors
def list_runs(
    quarantined: bool = typer.Option(False, "--quarantined", help="Only runs with cells held back from plans."),
    limit: int = typer.Option(50, min=1, max=1000, help="At most this many, newest first."),
    database_url: DatabaseUrlOption = None,
) -> None:
    """List probe runs, newest first, with how many of their cells are held back (quarantined)."""
    engine = open_store(database_url)
    table = Table("run", "kind", "host", "family", "cells", "quarantined", "created")
    with session_scope(engine) as session:
        found, total = runs_crud.list_probe_runs(
            session, host_id=None, kind=None, limit=limit, offset=0, quarantined=quarantined
        )
        for run in found:
            n_meas, _, n_held = runs_crud.counts(session, run_id=run.id)
            table.add_row(
                run.id, run.kind, run.host_id or "-", run.gpu_family_id or "-", str(n_meas), str(n_held),
                run.created_at.isoformat(timespec="seconds"),
            )  # fmt: skip
    console.print(table)
    console.print(Text(f"{len(found)} of {total} run(s)"), highlight=False)


@app.command()
@handle_errors
def quarantine(
    run: str = RunArg,
    reason: str = typer.Option("no reason given", help="Why (kept with each cell)."),
    database_url: DatabaseUrlOption = None,
) -> None:
    """Hold every cell of a run back from plans until it is accepted."""
    engine = open_store(database_url)
    with session_scope(engine) as session:
        runs_crud.quarantine_run(session, run_id=run, reason=reason)
    console.print(Text(f"run {run}: quarantined; plans leave its cells out until `planner measurements accept`"))


@app.command()
@handle_errors
def accept(run: str = RunArg, database_url: DatabaseUrlOption = None) -> None:
    """Release a run's held-back cells to plans."""
    engine = open_store(database_url)
    with session_scope(engine) as session:
        runs_crud.accept_run(session, run_id=run)
    console.print(Text(f"run {run}: accepted; plans use its cells"), highlight=False)


@app.command()
@handle_errors
def delete(
    run: str = RunArg,
    yes: bool = typer.Option(False, "--yes", help="Do it (without it, only say what would be deleted)."),
    database_url: DatabaseUrlOption = None,
) -> None:
    """Delete a run with its measurements and calibrations (--yes to do it)."""
    engine = open_store(database_url)
    with session_scope(engine) as session:
        n_meas, n_cal, _ = runs_crud.counts(session, run_id=runs_crud.get_probe_run(session, run_id=run).id)
        if not yes:
            console.print(Text(f"would delete run {run}: {n_meas} measurement(s), {n_cal} calibration(s); add --yes"))
            return
        runs_crud.delete_run(session, run_id=run)
    console.print(Text(f"deleted run {run}: {n_meas} measurement(s), {n_cal} calibration(s)"), highlight=False)
