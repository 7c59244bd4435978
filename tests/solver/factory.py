"""Catalog objects and measurement rows for tests, built directly (made-up numbers: test inputs, not data)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from planner.catalog.schema import Component, GpuFamily, ModelSpec, Recipe, StageSpec
from planner.measurements.contract import MeasurementRow
from planner.perf.model import PerfModel, PerfSettings
from planner.solver.problem import FleetFamily, Problem, SolverOptions, Workload

STAGES3 = ("text_encoder", "denoiser", "vae_decoder")


def family(
    fid: str,
    *,
    memory_gib: float = 80.0,
    tbps: float = 3.35,
    tflops: Mapping[str, float] | None = None,
    tdp_w: float = 700.0,
) -> GpuFamily:
    return GpuFamily.model_validate(
        {
            "id": fid,
            "name": fid,
            "vendor": "nvidia",
            "memory_gib": memory_gib,
            "memory_bandwidth_tbps": tbps,
            "tflops": dict(tflops or {"bf16": 989.0, "fp16": 989.0, "fp8": 1979.0}),
            "tdp_w": tdp_w,
        }
    )


def _component(name: str, params: int | None) -> Component:
    return Component(
        name=name, library="diffusers", class_name="X", config="x.json", tiny_config="x.json", params=params
    )


def model(
    mid: str = "m",
    *,
    stages: Sequence[str] = STAGES3,
    steps: int = 10,
    cfg: bool = False,
    params: Mapping[str, int | None] | None = None,
    tflops: Mapping[str, float] | None = None,
    architecture: str = "sdxl",
    height: int = 1024,
    width: int = 1024,
) -> ModelSpec:
    params = params or {}
    tflops = tflops or {}
    return ModelSpec.model_validate(
        {
            "id": mid,
            "name": mid,
            "architecture": architecture,
            "default_steps": steps,
            "height": height,
            "width": width,
            "guidance_scale": 5.0 if cfg else 0.0,
            "cfg": cfg,
            "text_tokens": 77,
            "latent_channels": 4,
            "stages": [
                StageSpec(
                    name=s,  # type: ignore[arg-type]
                    components=[_component(s, params.get(s))],
                    tflops_per_call=tflops.get(s),
                )
                for s in stages
            ],
        }
    )


def recipe(rid: str, precision: str = "bf16", *, reference: bool = False, **extra: Any) -> Recipe:
    return Recipe.model_validate(
        {"id": rid, "stages": list(STAGES3), "precision": precision, "reference": reference, **extra}
    )


RECIPES: dict[str, Recipe] = {
    r.id: r
    for r in (
        recipe("bf16", reference=True),
        recipe("fp16", "fp16"),
        recipe("fp8", "fp8", quantization="fp8-rowwise"),
        recipe("bf16-compile", compile="max-autotune"),
        recipe("bf16-fbcache", cache="first-block-cache", data_dependent=True),
    )
}


def row(
    fam: str,
    mdl: str,
    stage: str,
    rcp: str,
    batch: int,
    latency_ms: float,
    *,
    height: int = 1024,
    width: int = 1024,
    mem: float | None = 10.0,
    source: str = "measured",
    weights: str = "synthetic",
    **extra: Any,
) -> MeasurementRow:
    return MeasurementRow.model_validate(
        {
            "gpu_family": fam,
            "model": mdl,
            "stage": stage,
            "recipe": rcp,
            "batch": batch,
            "height": height,
            "width": width,
            "latency_ms": latency_ms,
            "peak_mem_gib": mem,
            "weights": weights,
            "source": source,
            **extra,
        }
    )


def workload(
    name: str,
    models: str | Sequence[str] = "m",
    *,
    rate: float = 1.0,
    steps: int | Mapping[str, int] = 10,
    headroom: float = 0.0,
    p95: float | None = None,
    height: int = 1024,
    width: int = 1024,
    **extra: Any,
) -> Workload:
    names = (models,) if isinstance(models, str) else tuple(models)
    per_steps = {m: (steps if isinstance(steps, int) else steps[m]) for m in names}
    return Workload(
        name=name,
        models=names,
        rate=rate,
        steps=per_steps,
        resolution=dict.fromkeys(names, (height, width)),
        headroom=headroom,
        p95_latency_s=p95,
        **extra,
    )


def problem(
    rows: Iterable[MeasurementRow],
    fleet: Sequence[FleetFamily],
    workloads: Sequence[Workload],
    *,
    models: Sequence[ModelSpec] | None = None,
    families: Sequence[GpuFamily] | None = None,
    recipes: Mapping[str, Recipe] | None = None,
    perf_settings: PerfSettings | None = None,
    **options: Any,
) -> Problem:
    fams = {f.id: f for f in families or [f.spec for f in fleet if f.spec is not None]}
    mdls = {m.id: m for m in models or [model()]}
    rcps = dict(recipes or RECIPES)
    perf = PerfModel(rows, families=fams, models=mdls, recipes=rcps, settings=perf_settings)
    opts = SolverOptions(**({"baselines": False, "sensitivity": False} | options))
    return Problem(
        families={f.id: f for f in fleet},
        perf=perf,
        workloads=list(workloads),
        models=mdls,
        recipes=rcps,
        options=opts,
    )


def fleet(fid: str, price: float, *, memory_gib: float = 80.0, available: int | None = None, **kw: Any) -> FleetFamily:
    spec = kw.pop("spec", None)
    if spec is None and kw.pop("catalog", True):
        spec = family(fid, memory_gib=memory_gib)
    return FleetFamily(id=fid, price_per_hour=price, memory_gib=memory_gib, available=available, spec=spec, **kw)


def pipeline_rows(
    fam: str,
    *,
    mdl: str = "m",
    te: float = 10.0,
    dn: Mapping[int, float] | None = None,
    vae: float = 50.0,
    rcp: str = "bf16",
    mem: float = 10.0,
) -> list[MeasurementRow]:
    """A three-stage pipeline measured on one family: te and vae scale linearly with batch."""
    dn = dn or {1: 100.0, 2: 150.0, 4: 250.0}
    out: list[MeasurementRow] = []
    for b, lat in dn.items():
        out.append(row(fam, mdl, "text_encoder", rcp, b, te * b, mem=mem / 10))
        out.append(row(fam, mdl, "denoiser", rcp, b, lat, mem=mem))
        out.append(row(fam, mdl, "vae_decoder", rcp, b, vae * b, mem=mem / 2))
    return out
