"""`planner recommend --format json` gives the same plans and costs as when the golden files were written.

The golden files (tests/cli/golden/*.json) were written from main before the layering refactor of issue 30, with
the volatile keys (solver wall times) removed; a refactor that changes a plan, a cost or a note fails here.
Regenerate them only for a change that is meant to change plans: `PLANNER_WRITE_GOLDEN=1 pytest <this file>`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import recommend

pytestmark = pytest.mark.usefixtures("reference_settings")

GOLDEN = Path(__file__).parent / "golden"
VOLATILE = {"solve_s", "build_s"}  # wall times of the solver: the only keys that differ run to run

CASES: dict[str, list[str]] = {
    "sdxl_rate10_p95_10": ["--model", "sdxl", "--rate", "10", "--p95", "10"],
    "sdxl_rate10_any_latency": ["--model", "sdxl", "--rate", "10"],
    "sd15_rate5_h100_h200": [
        "--model",
        "sd15",
        "--rate",
        "5",
        "--p95",
        "5",
        "--family",
        "h100-sxm-80gb",
        "--family",
        "h200-141gb",
    ],
    "flux_schnell_estimates": ["--model", "flux-schnell", "--rate", "2", "--p95", "30", "--allow-estimates"],
    "sdxl_spot_what_if": [
        "--model",
        "sdxl",
        "--rate",
        "4",
        "--p95",
        "20",
        "--offering",
        "spot",
        "--what-if",
        "rate=x0.5,x2",
    ],
    "scenario_mixed": ["--scenario", str(GOLDEN / "scenario_mixed.yaml")],
}


def scrub(value: Any) -> Any:
    """The plan without its wall times."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_is_unchanged(reference_url: str, case: str) -> None:
    result = recommend(reference_url, "--format", "json", *CASES[case])
    assert result.returncode == 0, result.stdout + result.stderr
    plan = scrub(json.loads(result.stdout))
    path = GOLDEN / f"{case}.json"
    if os.environ.get("PLANNER_WRITE_GOLDEN") == "1":
        path.write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
    assert plan == json.loads(path.read_text()), f"{case}: the plan changed; diff against {path}"
