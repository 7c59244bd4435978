"""The shipped reference data is exactly the merge of the files the device returned: no number typed in or edited.

planner/reference/provenance.json records the `campaign_merge.py` command that made
planner/reference/measurements.csv; running that command again on the committed call files must give the same
bytes, and every call folder under benchmarks/results/*-campaign/ must be one of its inputs.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CSV = ROOT / "planner" / "reference" / "measurements.csv"
SHIPPED_PROVENANCE = ROOT / "planner" / "reference" / "provenance.json"


def _recorded_command() -> list[str]:
    description = json.loads(SHIPPED_PROVENANCE.read_text(encoding="utf-8"))["description"]
    match = re.search(r"`python benchmarks/campaign_merge\.py ([^`]+)`", description)
    assert match, "provenance.json does not record the campaign_merge.py command that made the shipped data"
    return shlex.split(match.group(1))


def _with_outputs(args: list[str], out_csv: Path, out_provenance: Path) -> list[str]:
    """The recorded arguments with the two outputs moved to a temporary folder."""
    assert args[0] == "planner/reference/measurements.csv"
    i = args.index("--provenance")
    assert args[i + 1] == "planner/reference/provenance.json"
    rewritten = [str(out_csv), *args[1:i], "--provenance", str(out_provenance), *args[i + 2 :]]
    return [a if a.startswith(("--", "/")) else str(ROOT / a) for a in rewritten]


def test_the_recorded_merge_reproduces_the_shipped_data(tmp_path: Path) -> None:
    merge = load_benchmark("campaign_merge")
    out_csv, out_provenance = tmp_path / "measurements.csv", tmp_path / "provenance.json"
    assert merge.main(["campaign_merge.py", *_with_outputs(_recorded_command(), out_csv, out_provenance)]) == 0
    assert out_csv.read_bytes() == SHIPPED_CSV.read_bytes()
    shipped_calls = json.loads(SHIPPED_PROVENANCE.read_text(encoding="utf-8"))["calls"]
    assert json.loads(out_provenance.read_text(encoding="utf-8"))["calls"] == shipped_calls


def test_every_returned_call_is_an_input_of_the_merge() -> None:
    inputs = {Path(a).parent for a in _recorded_command() if a.endswith("/measurements.csv")}
    inputs.discard(Path("planner/reference"))
    returned = {
        p.parent.relative_to(ROOT) for p in (ROOT / "benchmarks" / "results").glob("*-campaign/call*/measurements.csv")
    }
    assert returned, "no campaign call files under benchmarks/results/"
    assert returned - inputs == set(), "call files the merge left out (add them to the merge command)"
    assert inputs - returned == set(), "merge inputs that are not committed under benchmarks/results/"
