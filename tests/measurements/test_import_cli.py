"""`planner measurements import|export` end to end: bad rows are named by line and field; the store is unchanged."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from planner.db import models as m
from planner.db.session import make_engine
from planner.measurements.contract import CONTRACT_COLUMNS
from tests.helpers import invoke, run_cli

GOOD = {
    "gpu_family": "h100-sxm-80gb",
    "model": "sdxl",
    "stage": "denoiser",
    "recipe": "bf16",
    "batch": "1",
    "height": "1024",
    "width": "1024",
    "latency_ms": "90.5",
    "latency_p95_ms": "92.0",
    "peak_mem_gib": "11.0",
    "power_w": "650",
    "weights": "synthetic",
    "source": "measured",
}


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = CONTRACT_COLUMNS) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def count(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(m.Measurement)).scalar_one()
    engine.dispose()
    return int(n)


def rows_with(**changes: str) -> list[dict[str, str]]:
    good2 = {**GOOD, "batch": "2", "latency_ms": "99", "latency_p95_ms": "101"}
    bad = {**GOOD, "batch": "4", "latency_ms": "148", "latency_p95_ms": "150", **changes}
    return [GOOD, good2, bad]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"latency_ms": "-3"}, "latency_ms"),
        ({"stage": "upscaler"}, "stage"),
        ({"latency_ms": "NaN"}, "latency_ms"),
        ({"batch": "2.5"}, "batch"),
        ({"batch": "four"}, "batch"),
        ({"weights": "maybe"}, "weights"),
        ({"peak_mem_gib": "inf"}, "peak_mem_gib"),
        ({"latency_p95_ms": "100"}, "latency_p95_ms"),  # below the median
        ({"model": "sdxxl"}, "model"),
        ({"gpu_family": "mystery-gpu"}, "gpu_family"),
    ],
)
def test_bad_row_names_line_and_field_and_stores_nothing(
    tmp_path: Path, store_url: str, changes: dict[str, str], field: str
) -> None:
    # First a good file, so "unchanged" means more than "empty".
    good = write_csv(tmp_path / "good.csv", [GOOD])
    seeded = count(store_url)  # an embedded store seeds the shipped reference data on first use
    assert invoke("measurements", "import", str(good), "--database-url", store_url).returncode == 0
    before = count(store_url)
    assert before == seeded + 1

    bad = write_csv(tmp_path / "bad.csv", rows_with(**changes))
    proc = invoke("measurements", "import", str(bad), "--database-url", store_url)
    assert proc.returncode != 0
    assert "line 4" in proc.stderr, proc.stderr
    assert f"field {field}" in proc.stderr, proc.stderr
    assert "nothing from this file was stored" in proc.stderr
    assert count(store_url) == before


def test_missing_column_is_named(tmp_path: Path, store_url: str) -> None:
    columns = tuple(c for c in CONTRACT_COLUMNS if c != "power_w")
    bad = write_csv(tmp_path / "bad.csv", [GOOD], columns)
    seeded = count(store_url)
    proc = invoke("measurements", "import", str(bad), "--database-url", store_url)
    assert proc.returncode != 0
    assert "field power_w: missing column" in proc.stderr
    assert count(store_url) == seeded


def test_import_is_idempotent_and_export_round_trips(tmp_path: Path, store_url: str) -> None:
    rows = [
        {**GOOD, "batch": str(b), "latency_ms": str(90 * b), "latency_p95_ms": str(91 * b), "recipe": "my-new-recipe"}
        for b in (1, 2, 4)
    ]
    path = write_csv(tmp_path / "good.csv", rows)
    seeded = count(store_url)
    first = run_cli("planner", "measurements", "import", str(path), "--database-url", store_url)
    assert first.returncode == 0, first.stderr
    assert "stored 3" in first.stdout
    assert "new recipes: my-new-recipe" in first.stdout
    again = run_cli("planner", "measurements", "import", str(path), "--database-url", store_url)
    assert again.returncode == 0
    assert "stored 0" in again.stdout
    assert "3 already stored" in again.stdout
    assert count(store_url) == seeded + 3

    out = tmp_path / "export.csv"
    exp = run_cli(
        "planner", "measurements", "export", "-o", str(out), "--recipe", "my-new-recipe", "--database-url", store_url
    )
    assert exp.returncode == 0, exp.stderr
    exported = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(exported[0])[: len(CONTRACT_COLUMNS)] == list(CONTRACT_COLUMNS)
    assert sorted(float(r["latency_ms"]) for r in exported) == [90.0, 180.0, 360.0]
    assert {r["recipe"] for r in exported} == {"my-new-recipe"}


def test_unknown_family_defined_by_file(tmp_path: Path, store_url: str) -> None:
    cols = (*CONTRACT_COLUMNS, "gpu_memory_gib")
    path = write_csv(tmp_path / "lab.csv", [{**GOOD, "gpu_family": "lab-gpu-48g", "gpu_memory_gib": "48"}], cols)
    proc = invoke("measurements", "import", str(path), "--database-url", store_url)
    assert proc.returncode == 0, proc.stderr
    assert "new families: lab-gpu-48g" in proc.stdout
    engine = make_engine(store_url)
    with engine.connect() as conn:
        mem = conn.execute(select(m.GpuFamily.memory_gib).where(m.GpuFamily.id == "lab-gpu-48g")).scalar_one()
    engine.dispose()
    assert mem == 48.0


def test_a_new_family_given_two_memories_is_refused_naming_both_lines(tmp_path: Path, store_url: str) -> None:
    cols = (*CONTRACT_COLUMNS, "gpu_memory_gib")
    lab = {**GOOD, "gpu_family": "lab-gpu-48g"}
    rows = [{**lab, "gpu_memory_gib": "48"}, {**lab, "batch": "2", "gpu_memory_gib": "24"}]
    stored = count(store_url)
    proc = invoke(
        "measurements", "import", str(write_csv(tmp_path / "lab.csv", rows, cols)), "--database-url", store_url
    )
    assert proc.returncode == 2, proc.stdout
    assert "line 3, field gpu_memory_gib: 24 for new family 'lab-gpu-48g', which line 2 defines with 48" in proc.stderr
    assert count(store_url) == stored


# ---- paths a person can get wrong: one-line errors, no traceback, nothing written ------------------------------


def test_import_of_a_directory_says_so(tmp_path: Path, store_url: str) -> None:
    seeded = count(store_url)
    proc = run_cli("planner", "measurements", "import", str(tmp_path), "--database-url", store_url)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {tmp_path}: is a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert count(store_url) == seeded


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_export_to_a_bad_path_names_it_and_writes_nothing(tmp_path: Path, store_url: str, where: str) -> None:
    output = tmp_path / "nowhere" / "x.csv" if where == "missing-dir" else tmp_path
    proc = run_cli("planner", "measurements", "export", "-o", str(output), "--database-url", store_url)
    assert proc.returncode == 2, proc.stderr
    assert f"error: --output {output}:" in proc.stderr
    assert ("does not exist" if where == "missing-dir" else "is a directory") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "nowhere").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_excel_csv_utf8_with_a_byte_order_mark_imports(tmp_path: Path, store_url: str) -> None:
    """Excel's "CSV UTF-8" starts with a BOM; it used to make the first column `missing`."""
    path = write_csv(tmp_path / "excel.csv", [GOOD])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    seeded = count(store_url)
    proc = invoke("measurements", "import", str(path), "--database-url", store_url)
    assert proc.returncode == 0, proc.stderr
    assert "stored 1 measurement(s)" in proc.stdout
    assert count(store_url) == seeded + 1


def test_export_takes_the_stage_aliases_recommend_takes(tmp_path: Path, store_url: str) -> None:
    path = write_csv(tmp_path / "good.csv", [GOOD, {**GOOD, "stage": "vae_decoder", "recipe": "bf16-tiny-vae"}])
    assert invoke("measurements", "import", str(path), "--database-url", store_url).returncode == 0
    short = invoke("measurements", "export", "--stage", "dn", "--family", "h100-sxm-80gb", "--database-url", store_url)
    full = invoke(
        "measurements", "export", "--stage", "denoiser", "--family", "h100-sxm-80gb", "--database-url", store_url
    )
    assert short.returncode == 0, short.stderr
    exported = list(csv.DictReader(io.StringIO(short.stdout)))
    assert exported
    assert {r["stage"] for r in exported} == {"denoiser"}
    assert short.stdout == full.stdout


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--stage", "unet", "--stage 'unet': unknown stage. Fix: use one of text_encoder (te), denoiser (dn)"),
        ("--family", "nosuch", "--family 'nosuch': not in the store. Known: a10-24gb"),
        ("--model", "sdxxl", "--model 'sdxxl': not in the store. Known: flux-dev"),
        ("--recipe", "nope", "--recipe 'nope': not in the store. Known: bf16"),
    ],
)
def test_export_refuses_a_filter_naming_nothing(store_url: str, flag: str, value: str, message: str) -> None:
    """A typo used to print only the header and exit 0, which reads as 'no measurements'."""
    proc = invoke("measurements", "export", flag, value, "--database-url", store_url)
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr
    assert proc.stdout == ""


def test_the_same_file_with_times_off_utc_imports_twice_as_a_skip(tmp_path: Path, store_url: str) -> None:
    """The store keeps times in UTC; a file's +02:00 time is the same time, not an edit of the run."""
    cols = (*CONTRACT_COLUMNS, "probe_run", "measured_at")
    rows = [{**GOOD, "probe_run": "", "measured_at": "2026-11-25T23:56:43+02:00"}]
    path = write_csv(tmp_path / "local-time.csv", rows, cols)
    assert invoke("measurements", "import", str(path), "--database-url", store_url).returncode == 0
    again = invoke("measurements", "import", str(path), "--database-url", store_url)
    assert again.returncode == 0, again.stderr
    assert "1 already stored (same run) skipped" in again.stdout


def test_an_edited_export_is_refused_naming_the_run_and_imports_as_a_new_run(tmp_path: Path, store_url: str) -> None:
    """A stored run is never changed: same content is skipped, other content refused whole (it used to be
    skipped too, silently dropping the edits with exit 0); an empty probe_run column imports it as a new run."""
    run = "0b5c3a52-4a4e-4a57-9d0b-1f0f6a6c2f01"
    cols = (*CONTRACT_COLUMNS, "probe_run")
    rows = [
        {
            **GOOD,
            "batch": str(b),
            "latency_ms": f"{90.123456789 * b}",
            "latency_p95_ms": f"{95.5 * b}",
            "probe_run": run,
        }
        for b in (1, 2)
    ]
    first = invoke(
        "measurements", "import", str(write_csv(tmp_path / "run.csv", rows, cols)), "--database-url", store_url
    )
    assert first.returncode == 0, first.stderr
    exported = tmp_path / "export.csv"
    args = ("--family", "h100-sxm-80gb", "--model", "sdxl", "--database-url", store_url)
    assert invoke("measurements", "export", "-o", str(exported), *args).returncode == 0
    stored = count(store_url)

    again = invoke("measurements", "import", str(exported), "--database-url", store_url)  # unedited: rounded floats
    assert again.returncode == 0, again.stderr
    assert "stored 0 measurement(s) in 0 run(s); 2 already stored (same run) skipped" in again.stdout

    table = list(csv.DictReader(io.StringIO(exported.read_text())))
    table[1]["latency_ms"] = "150"
    other = {**table[0], "probe_run": "", "batch": "8", "latency_ms": "400", "latency_p95_ms": "420"}  # a new run
    edited = tmp_path / "edited.csv"
    write_csv(edited, [*table, other], tuple(table[0]))
    refused = invoke("measurements", "import", str(edited), "--database-url", store_url)
    assert refused.returncode == 1, refused.stdout
    assert f"probe run {run}:" in refused.stderr
    assert "line 3, field latency_ms: 150.0 in the file, 180.246914 stored" in refused.stderr
    assert "nothing from this file was stored" in refused.stderr
    assert "empty the probe_run column" in refused.stderr
    assert count(store_url) == stored  # not even the file's new run

    for row in (*table, other):
        row["probe_run"] = ""
    write_csv(edited, [*table, other], tuple(table[0]))
    new_run = invoke("measurements", "import", str(edited), "--database-url", store_url)
    assert new_run.returncode == 0, new_run.stderr
    assert "stored 3 measurement(s) in 1 run(s)" in new_run.stdout
    latest = invoke("measurements", "export", *args)
    assert sorted(float(r["latency_ms"]) for r in csv.DictReader(io.StringIO(latest.stdout))) == [90.123457, 150, 400]


def test_clock_throttle_and_cpu_columns_survive_import_and_export(tmp_path: Path, store_url: str) -> None:
    """The agent's per-cell SM clock, throttle reasons and host CPU (optional columns after the contract's) are
    stored and exported as written; a column no reader knows is ignored."""
    extra = ("sm_clock_mhz", "throttle_reasons", "cpu_model", "some_future_column")
    row = {
        **GOOD,
        "recipe": "clocked-recipe",
        "sm_clock_mhz": "1755.5",
        "throttle_reasons": "sw_power_cap+hw_slowdown",
        "cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
        "some_future_column": "x",
    }
    path = write_csv(tmp_path / "clocked.csv", [row], CONTRACT_COLUMNS + extra)
    imported = run_cli("planner", "measurements", "import", str(path), "--database-url", store_url)
    assert imported.returncode == 0, imported.stderr
    out = tmp_path / "export.csv"
    exp = run_cli(
        "planner", "measurements", "export", "-o", str(out), "--recipe", "clocked-recipe", "--database-url", store_url
    )
    assert exp.returncode == 0, exp.stderr
    (exported,) = list(csv.DictReader(io.StringIO(out.read_text())))
    assert float(exported["sm_clock_mhz"]) == 1755.5
    assert exported["throttle_reasons"] == "sw_power_cap+hw_slowdown"
    assert exported["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert "some_future_column" not in exported


def test_operator_lists_quarantines_accepts_and_deletes_a_run_from_the_cli(tmp_path: Path, store_url: str) -> None:
    path = write_csv(tmp_path / "m.csv", [GOOD, {**GOOD, "batch": "2", "latency_ms": "120", "latency_p95_ms": "121"}])
    assert invoke("measurements", "import", str(path), "--database-url", store_url).returncode == 0
    engine = make_engine(store_url)
    with engine.connect() as conn:
        run_id = conn.execute(select(m.ProbeRun.id).where(m.ProbeRun.source_file == str(path))).scalar_one()

    def usable() -> int:
        with engine.connect() as conn:
            query = select(func.count()).select_from(m.Measurement).where(m.Measurement.quarantine_reason.is_(None))
            return int(conn.execute(query.where(m.Measurement.probe_run_id == run_id)).scalar_one())

    proc = invoke("measurements", "quarantine", run_id, "--reason", "suspect host", "--database-url", store_url)
    assert proc.returncode == 0, proc.stderr
    assert usable() == 0
    listed = invoke("measurements", "runs", "--quarantined", "--database-url", store_url)
    assert run_id in listed.stdout
    assert "1 of 1 run(s)" in listed.stdout
    assert invoke("measurements", "accept", run_id, "--database-url", store_url).returncode == 0
    assert usable() == 2
    assert run_id not in invoke("measurements", "runs", "--quarantined", "--database-url", store_url).stdout
    dry = invoke("measurements", "delete", run_id, "--database-url", store_url)
    assert "would delete" in dry.stdout
    assert usable() == 2
    assert invoke("measurements", "delete", run_id, "--yes", "--database-url", store_url).returncode == 0
    assert usable() == 0
    missing = invoke("measurements", "delete", run_id, "--yes", "--database-url", store_url)
    assert missing.returncode != 0
    assert "probe run" in missing.stderr
    engine.dispose()
