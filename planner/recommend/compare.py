"""`--compare PLAN.json`: this recommendation against a plan saved earlier with `--format json`.

One file, compared with the recommendation being made now (same flags or scenario, today's data and prices):
the question of a capacity review is "what changed since last time". The file is checked against contract 3
(the service's PlanResult schema, so a plan the API accepts is one this accepts), and an error names the file
and the key.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from planner.api.schemas.plans import PlanResult
from planner.core.errors import InputError

STAGE_ORDER = ("text_encoder", "denoiser", "vae_decoder")
STAGE_SHORT = {"text_encoder": "te", "denoiser": "dn", "vae_decoder": "vae"}


@dataclass(frozen=True)
class WorkloadDiff:
    name: str
    before_cost: float | None
    after_cost: float | None
    before_cost_per_image: float | None
    after_cost_per_image: float | None
    before_gpus: dict[str, float]
    after_gpus: dict[str, float]
    changes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    before_name: str
    before_cost: float | None
    after_cost: float | None
    before_gpus: dict[str, float]
    after_gpus: dict[str, float]
    workloads: list[WorkloadDiff]


def load_plan_file(path: Path, flag: str = "--compare") -> dict[str, Any]:
    """A saved `--format json` plan; InputError naming the flag, the file and the key when it is not contract 3."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{flag} {path}: no such file. Fix: give a plan saved with --format json.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag} {path}: cannot read it ({exc}).") from exc
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{flag} {path}:{exc.lineno}: not JSON ({exc.msg}). Fix: save the plan with --format json."
        ) from exc
    try:
        PlanResult.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'top level'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InputError(
            f"{flag} {path}: not a plan (DESIGN.md contract 3): {problems}. Fix: give a file written by "
            "`planner recommend --format json`."
        ) from exc
    result: dict[str, Any] = data
    return result


def workload_gpus(workload: Mapping[str, Any]) -> dict[str, float]:
    """GPUs a workload occupies per family: dedicated replicas, plus its fraction of any shared GPU."""
    out: dict[str, float] = defaultdict(float)
    for g in workload.get("groups", []):
        if g.get("shared_gpu"):
            out[g["family"]] += float(g.get("gpu_fraction") or 0.0)
        else:
            out[g["family"]] += float(g["replicas"])
    return {k: round(v, 3) for k, v in out.items()}


def _placement(workload: Mapping[str, Any]) -> dict[str, str]:
    """Per stage: where and how it runs (`family recipe b<batch>`; several pools joined by ` | `)."""
    out: dict[str, list[str]] = defaultdict(list)
    for g in workload.get("groups", []):
        for stage in g["stages"]:
            text = f"{g['family']} {g['recipes'].get(stage, '?')} b{g['batch']}"
            if text not in out[stage]:
                out[stage].append(text)
    return {s: " | ".join(sorted(v)) for s, v in out.items()}


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    changes: list[str] = []
    if before.get("model") and after.get("model") and before["model"] != after["model"]:
        changes.append(f"model {before['model']} -> {after['model']}")
    if before.get("topology") != after.get("topology"):
        changes.append(f"topology {before.get('topology')} -> {after.get('topology')}")
    b, a = _placement(before), _placement(after)
    for stage in STAGE_ORDER:
        if b.get(stage) != a.get(stage):
            changes.append(f"{STAGE_SHORT[stage]}: {b.get(stage, '-')} -> {a.get(stage, '-')}")
    return changes


def compare(before: Mapping[str, Any], after: Mapping[str, Any], *, before_name: str) -> Comparison:
    """Per-workload cost, GPUs and placement differences of `after` (now) against `before` (saved)."""
    b_w = {w["name"]: w for w in before.get("workloads", [])}
    a_w = {w["name"]: w for w in after.get("workloads", [])}
    if len(b_w) == 1 and len(a_w) == 1 and set(b_w) != set(a_w):
        b_w = {next(iter(a_w)): next(iter(b_w.values()))}  # one workload each: the same demand, renamed
    names = list(a_w) + [n for n in b_w if n not in a_w]
    diffs: list[WorkloadDiff] = []
    for name in names:
        bw, aw = b_w.get(name), a_w.get(name)
        if bw is not None and aw is not None:
            changes = _changes(bw, aw)
        else:
            changes = ["only in the saved plan" if aw is None else "new in this recommendation"]
        diffs.append(
            WorkloadDiff(
                name=name,
                before_cost=bw.get("cost_per_hour") if bw else None,
                after_cost=aw.get("cost_per_hour") if aw else None,
                before_cost_per_image=bw.get("cost_per_image") if bw else None,
                after_cost_per_image=aw.get("cost_per_image") if aw else None,
                before_gpus=workload_gpus(bw) if bw else {},
                after_gpus=workload_gpus(aw) if aw else {},
                changes=changes,
            )
        )
    return Comparison(
        before_name=before_name,
        before_cost=before.get("total_cost_per_hour"),
        after_cost=after.get("total_cost_per_hour"),
        before_gpus={k: float(v) for k, v in before.get("gpus", {}).items()},
        after_gpus={k: float(v) for k, v in after.get("gpus", {}).items()},
        workloads=diffs,
    )
