"""Reseeding from a newer package: rows the shipped file no longer has (withdrawn measurements) leave the store.

Two "releases" of planner/reference/measurements.csv are written under a planner/reference/ folder of a temporary
directory (the seed recognises a shipped file by that path, in whichever install it lives): the second lacks one
row of the first. A file imported by a user and a run an agent reported are left alone.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from planner.crud.measurements import import_file
from planner.crud.seed import REFERENCE_CSV, seed_reference_measurements
from planner.db import models as m
from planner.db.session import make_engine, session_scope

CELL = ("gpu_family", "model", "stage", "recipe", "batch")


def _shipped_rows(n: int) -> tuple[list[str], list[dict[str, str]]]:
    """The first n ok rows of one probe run of the real shipped file."""
    with REFERENCE_CSV.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["status"] == "ok"]
        columns = list(reader.fieldnames or [])
    run = Counter(r["probe_run"] for r in rows).most_common(1)[0][0]
    return columns, [r for r in rows if r["probe_run"] == run][:n]


def _write(path: Path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cells(url: str) -> set[tuple[str, ...]]:
    engine = make_engine(url)
    with session_scope(engine) as session:
        got = {
            (
                meas.gpu_family_id,
                meas.model_id,
                meas.stage,
                meas.recipe_id,
                str(meas.batch),
                meas.probe_run.source_file or "",
            )
            for meas in session.scalars(select(m.Measurement))
        }
    engine.dispose()
    return got


def test_a_withdrawn_shipped_row_leaves_the_store_and_other_rows_stay(tmp_path: Path, store_url: str) -> None:
    columns, rows = _shipped_rows(4)
    assert len(rows) == 4
    old = _write(tmp_path / "old" / "planner" / "reference" / "measurements.csv", columns, rows)
    new = _write(tmp_path / "new" / "planner" / "reference" / "measurements.csv", columns, rows[:3])
    # The same cell, imported by a user from their own file (another run): not the package's to remove.
    mine = dict(rows[3], probe_run="6f1c0d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f")
    user_file = _write(tmp_path / "mine.csv", columns, [mine])

    engine = make_engine(store_url)
    with session_scope(engine) as session:
        assert seed_reference_measurements(session, path=old) == 4
        import_file(session, path=user_file)
    with session_scope(engine) as session:
        stored_again = seed_reference_measurements(session, path=new)
    with session_scope(engine) as session:
        runs = session.scalar(select(func.count()).select_from(m.ProbeRun))
    engine.dispose()

    assert stored_again == 0  # the kept rows are the same measurements, stored once
    cells = _cells(store_url)
    withdrawn = tuple(rows[3][c] for c in CELL)
    assert (*withdrawn, str(old)) not in cells
    assert (*withdrawn, str(user_file)) in cells
    assert {tuple(r[c] for c in CELL) for r in rows[:3]} <= {c[:5] for c in cells}
    assert len(cells) == 4
    assert runs == 2  # the shipped run keeps its three rows; the user's run is untouched


def test_a_run_whose_rows_were_all_withdrawn_is_removed(tmp_path: Path, store_url: str) -> None:
    columns, rows = _shipped_rows(2)
    other = dict(rows[0], probe_run="0d9c8b7a-6f5e-4d3c-9b2a-1f0e9d8c7b6a")
    old = _write(tmp_path / "old" / "planner" / "reference" / "measurements.csv", columns, [*rows, other])
    new = _write(tmp_path / "new" / "planner" / "reference" / "measurements.csv", columns, rows)
    engine = make_engine(store_url)
    with session_scope(engine) as session:
        seed_reference_measurements(session, path=old)
    with session_scope(engine) as session:
        seed_reference_measurements(session, path=new)
    with session_scope(engine) as session:
        run_ids = set(session.scalars(select(m.ProbeRun.id)))
    engine.dispose()
    assert run_ids == {rows[0]["probe_run"]}
