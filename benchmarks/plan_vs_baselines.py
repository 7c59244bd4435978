"""The plan's $/image against the three baselines, on the shipped reference data, for SDXL and Flux-dev.

For each model and rate (1, 10, 100 images/s) it runs `planner recommend --model M --rate R --format json` on a
fresh embedded store seeded with planner/reference/measurements.csv, three times: on the default fleet (every
catalog family with an on-demand price; the plan uses the measured ones, H100 and H200), on the same fleet with
`--allow-estimates` (the other families' numbers transferred from the measured ones, labelled), and on the H100
alone. Baselines, solved on the same data by the same solver:
  naive             one family, bf16, batch 1, stages together, dedicated GPUs;
  single-family     the best single family, everything else free;
  gpu-mix-together  a GPU mix with each workload's stages together (Melange's formulation).

    python benchmarks/plan_vs_baselines.py            # prints a markdown table for docs/benchmarks.md
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = ("sdxl", "flux-dev")
RATES = (1.0, 10.0, 100.0)
FLEETS: dict[str, list[str]] = {
    "catalog, measured": ["--no-probe-next"],
    "catalog, estimates allowed": ["--allow-estimates", "--no-probe-next"],
    "h100 only": ["--family", "h100-sxm-80gb"],
}


def recommend(model: str, rate: float, extra: list[str], data_home: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XDG_DATA_HOME": str(data_home),
        "PLANNER_SEED_REFERENCE_DATA": "true",
        "PLANNER_DATABASE_URL": f"sqlite:///{data_home / 'planner.db'}",
    }
    cmd = [sys.executable, "-m", "planner", "recommend", "--model", model, "--rate", str(rate), "--format", "json"]
    proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd + extra)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def placement(plan: dict[str, Any]) -> str:
    parts = []
    for w in plan["workloads"]:
        for g in w["groups"]:
            stages = "+".join({"text_encoder": "te", "denoiser": "dn", "vae_decoder": "vae"}[s] for s in g["stages"])
            dn = g["recipes"].get("denoiser", "")
            parts.append(f"[{stages}] {g['replicas']}x {g['family']} b{g['batch']}" + (f" {dn}" if dn else ""))
    return "; ".join(parts)


def main() -> int:
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print()
    print(
        "| fleet | model | rate (images/s) | plan $/image | naive | single-family | gpu-mix-together | plan | solve s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        data_home = Path(tmp)
        for fleet, extra in FLEETS.items():
            for model in MODELS:
                for rate in RATES:
                    started = time.perf_counter()
                    plan = recommend(model, rate, extra, data_home)
                    elapsed = time.perf_counter() - started
                    if not plan["feasible"]:
                        print(f"| {fleet} | {model} | {rate:g} | infeasible | | | | {plan['infeasible']} | |")
                        continue
                    cpi = plan["total_cost_per_hour"] / 3600.0 / rate
                    cells = []
                    for name in ("naive", "single-family", "gpu-mix-together"):
                        b = next((b for b in plan["baselines"] if b["name"] == name), None)
                        if b is None or not b["feasible"] or b["cost_per_hour"] is None:
                            cells.append("-")
                            continue
                        bcpi = b["cost_per_hour"] / 3600.0 / rate
                        cells.append(f"${bcpi:.6f} (saves {b['saving']:.0%})")
                    print(
                        f"| {fleet} | {model} | {rate:g} | ${cpi:.6f} | {' | '.join(cells)} | {placement(plan)} | "
                        f"{elapsed:.1f} |"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
