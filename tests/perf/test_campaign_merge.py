"""benchmarks/campaign_merge.py: rows copied verbatim, the newest ok row of a cell wins, withdrawn rows left out."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_benchmark

COLUMNS = ["gpu_family", "model", "stage", "recipe", "batch", "height", "width", "latency_ms", "status", "measured_at"]


def _script() -> ModuleType:
    return load_benchmark("campaign_merge")


def _row(batch: int, latency: str, status: str, at: str) -> dict[str, str]:
    cell = {"gpu_family": "h100-sxm-80gb", "model": "sd15", "stage": "denoiser", "recipe": "bf16-compile"}
    return {**cell, "batch": str(batch), "height": "512", "width": "512", "latency_ms": latency, "status": status,
            "measured_at": at}  # fmt: skip


def _write(path: Path, rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_newest_ok_row_wins_and_a_withdrawn_row_is_left_out(tmp_path: Path) -> None:
    merge = _script()
    call1 = _write(tmp_path / "call1.csv", [_row(1, "24.024300", "ok", "t1"), _row(8, "51.823", "ok", "t2")])
    # The next call carries both rows forward and measures batch 1 again, which fails this time.
    call2 = _write(tmp_path / "call2.csv", [_row(1, "", "failed", "t3"), _row(8, "51.823", "ok", "t2")])
    call3 = _write(tmp_path / "call3.csv", [_row(8, "45.97", "ok", "t4"), _row(16, "", "oom", "t5")])
    withdrawn = _write(
        tmp_path / "withdrawn.csv",
        [{**_row(8, "", "", "t2"), "reason": "ran eagerly past dynamo's recompile limit"}],
        [*COLUMNS, "reason"],
    )
    out = tmp_path / "merged.csv"
    assert merge.main(["m", str(out), str(call1), str(call2), str(call3), "--withdrawn", str(withdrawn)]) == 0
    rows = {r["batch"]: r for r in _read(out)}
    assert rows["1"]["latency_ms"] == "24.024300"  # an ok row is not replaced by a later failure; text kept as is
    assert rows["8"]["latency_ms"] == "45.97"  # the re-measurement, not the withdrawn 51.823
    assert rows["16"]["status"] == "oom"  # never ok: the failure stays on record

    # Before the re-measurement (calls 1-2 only) the withdrawn row was batch 8's only ok row: the cell is absent
    # rather than wrong.
    assert merge.main(["m", str(out), str(call1), str(call2), "--withdrawn", str(withdrawn)]) == 0
    assert "8" not in {r["batch"] for r in _read(out)}


def test_a_withdrawn_row_without_a_reason_is_refused(tmp_path: Path) -> None:
    merge = _script()
    call1 = _write(tmp_path / "call1.csv", [_row(8, "51.823", "ok", "t2")])
    withdrawn = _write(tmp_path / "w.csv", [{**_row(8, "", "", "t2"), "reason": " "}], [*COLUMNS, "reason"])
    with pytest.raises(SystemExit, match="needs a reason"):
        merge.main(["m", str(tmp_path / "out.csv"), str(call1), "--withdrawn", str(withdrawn)])
    assert not (tmp_path / "out.csv").exists()
