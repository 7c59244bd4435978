"""The reference-measurement campaign: calibration, then the probe matrix of the main models, in priority order.

One run of this script is one device call (at most ~9 minutes of compute): it takes a time budget, skips
every cell already in the previous CSV passed back with `--resume`, and writes under `--out` (default $OUT):
  measurements.csv   all rows so far (previous + new), the measurements CSV contract
  provenance.json    GPU, driver, CUDA, torch, diffusers, torchao, date, weights, and one entry per call
  calibration.json   the GPU's measured ceilings (reused by later calls to class cells)
The plan is ordered so that a budget cut loses the least important cells: the bf16 reference across
batches for every model first, then fp16/fp32, attention/fusion/layout variants, VAE variants, the step
cache, then torch.compile and quantized recipes (compile costs 20-60 s per cell). See campaign.md.

`--tiny` runs the same code on the tiny configs on the CPU (a dry run for tests; no compile levels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BATCHES = (1, 2, 4, 8, 16)
MAIN_MODELS = ("sdxl", "flux-dev", "sd15", "z-image-turbo", "qwen-image")
VARIANT_MODELS = ("flux-schnell", "sdxl-lightning")
LEVER_BATCHES = (1, 16)
WHOLE_UNET_RECIPES = ("bf16-compile-whole", "fp8-fast-compile-whole")


def _is_unet(model: str) -> bool:
    from planner.catalog import known_model

    return any(c.class_name == "UNet2DConditionModel" for c in known_model(model).stage("denoiser").components)


@dataclass(frozen=True)
class Step:
    """One entry of the plan: a model, stages, recipes and batches, swept together."""

    level: str
    model: str
    recipes: tuple[str, ...]
    batches: tuple[int, ...]
    stages: tuple[str, ...] | None = None
    reserve_s: float = 0.0
    """Seconds a cell of this step may take beyond the budget check (a whole-UNet compile took 145 s on an
    H100): no cell of the step starts unless this much budget is left, so a call does not run past its limit."""
    widens: bool = True
    """Whether --all-batches widens it to batches 1-16 (not a whole-UNet compile: 50-170 s per batch size)."""


def plan(
    models: tuple[str, ...],
    *,
    compile_levels: bool,
    variants: bool,
    compile_batches: tuple[int, ...] = (1, 4),
    all_batches: bool = False,
) -> list[Step]:
    """The campaign in priority order (level by level across models, so a cut drops whole levels last-first).

    `all_batches` widens every step to batches 1-16 (fp32 included): the full matrix, for a later pass once the
    priority points are in; cells already measured are skipped as usual.
    """
    if all_batches:
        widened = plan(models, compile_levels=compile_levels, variants=variants, compile_batches=BATCHES)
        return [
            Step(s.level, s.model, s.recipes, BATCHES if s.widens else s.batches, s.stages, s.reserve_s, s.widens)
            for s in widened
        ]
    steps: list[Step] = []
    for m in models:
        steps.append(Step("1-bf16", m, ("bf16",), BATCHES))
    for m in models:
        steps.append(Step("2-fp16", m, ("fp16",), BATCHES))
        steps.append(Step("2-fp32", m, ("fp32",), (1, 2)))
    for m in models:
        steps.append(
            Step(
                "3-attention-layout",
                m,
                ("bf16-sdpa-flash", "bf16-sdpa-efficient", "bf16-sdpa-cudnn", "bf16-fused-qkv", "bf16-channels-last"),
                (1,),
            )
        )
    for m in models:
        steps.append(Step("4-vae", m, ("bf16-tiny-vae", "bf16-tiled-vae"), (1, 4), ("vae_decoder",)))
        steps.append(Step("4-fbcache", m, ("bf16-fbcache",), (1,), ("denoiser",)))
    if compile_levels:
        # Regional compiles took 20-40 s on an H100 (h100-baseline.json: Flux 28 s); a 45 s reserve keeps a call
        # from starting one it cannot finish. The denoiser gets the large batch too: it sets the throughput.
        for m in models:
            steps.append(Step("5-compile", m, ("bf16-compile",), compile_batches, ("denoiser",), reserve_s=45))
        for m in models:
            steps.append(Step("6-quant", m, ("fp8-compile",), compile_batches, ("denoiser",), reserve_s=45))
        for m in models:
            steps.append(Step("6-quant-eager", m, ("fp8",), (1,), ("denoiser",)))
            steps.append(Step("6-compile-vae", m, ("bf16-compile",), (1, 4), ("vae_decoder",), reserve_s=45))
            steps.append(Step("6-int8", m, ("int8-compile",), compile_batches, ("denoiser",), reserve_s=45))
            steps.append(Step("6-int8-eager", m, ("int8",), (1,), ("denoiser",)))
    if variants:
        for m in VARIANT_MODELS:
            steps.append(Step("7-variants", m, ("bf16",), (1, 4, 16)))
    if compile_levels:
        # The levers the step profiles found (docs/benchmarks.md, "Where a denoiser step's time goes"): a UNet
        # compiled whole (bf16, and fp8 with the fast GEMM), a DiT's fp8 with the fast GEMM (regional). A whole-UNet
        # compile takes 50-170 s per batch size, so those stay at the latency and the throughput points (1 and 16)
        # even under --all-batches; the reserve keeps a call from starting one it cannot finish.
        for m in models:
            if _is_unet(m):
                steps.append(
                    Step("8-levers", m, WHOLE_UNET_RECIPES, LEVER_BATCHES, ("denoiser",), reserve_s=240, widens=False)
                )
            else:
                steps.append(Step("8-levers", m, ("fp8-fast-compile",), LEVER_BATCHES, ("denoiser",), reserve_s=60))
    return steps


CellId = tuple[str, str, str, int, int, int]
"""(model, stage, recipe, batch, height, width): a cell of the plan, without the GPU family."""


def planned_cells(steps: list[Step], *, height: int | None = None, width: int | None = None) -> dict[CellId, str]:
    """Every cell the steps would sweep, with its level: the same cells `Sweep.cells` builds, without a GPU.

    A recipe counts only for the stages it applies to (fused QKV and channels_last have no text-encoder cell).
    """
    from planner.catalog import known_model, recipes

    catalog = recipes()
    cells: dict[CellId, str] = {}
    for step in steps:
        spec = known_model(step.model)
        h, w = height or spec.height, width or spec.width
        for stage in step.stages or spec.stage_names:
            for rid in step.recipes:
                if stage not in catalog[rid].stages:
                    continue
                for b in step.batches:
                    cells.setdefault((step.model, stage, rid, b, h, w), step.level)
    return cells


def coverage(planned: dict[CellId, str], csv_path: Path, family: str) -> tuple[dict[str, int], dict[str, list[CellId]]]:
    """(status -> count of the plan's cells present for `family`, the missing cells by level)."""
    import csv

    with csv_path.open(newline="", encoding="utf-8") as fh:
        have = {
            (r["model"], r["stage"], r["recipe"], int(r["batch"]), int(r["height"]), int(r["width"])): r["status"]
            for r in csv.DictReader(fh)
            if r["gpu_family"] == family
        }
    present: dict[str, int] = {}
    missing: dict[str, list[CellId]] = {}
    for cell, level in planned.items():
        if cell in have:
            present[have[cell]] = present.get(have[cell], 0) + 1
        else:
            missing.setdefault(level, []).append(cell)
    return present, missing


def print_coverage(planned: dict[CellId, str], csv_path: Path, family: str) -> None:
    present, missing = coverage(planned, csv_path, family)
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(present.items()))
    print(f"{family}: {sum(present.values())} of {len(planned)} planned cells in {csv_path} ({statuses or 'none'})")
    for level, cells in missing.items():
        groups: dict[tuple[str, str, str], list[int]] = {}
        for model, stage, recipe, batch, _, _ in cells:
            groups.setdefault((model, stage, recipe), []).append(batch)
        print(f"  missing, level {level}: {len(cells)}")
        for (model, stage, recipe), batches in groups.items():
            print(f"    {model:16s} {stage:12s} {recipe:22s} batches {','.join(map(str, sorted(batches)))}")


REDO_COLUMNS = ("gpu_family", "model", "stage", "recipe", "batch", "why")


def redo_steps(path: Path, family: str) -> list[Step]:
    """The cells a redo file names for `family`, as steps in the file's order, one per (model, stage, recipe).

    A redo measures cells the reference data already holds again (a biased, unstable or suspect measurement),
    whatever the state says; the merge keeps the newest ok row of a cell, and `withdrawn.csv` removes an old one
    that the redo could not replace. Each line says why (`why`), so the file is the record of what was redone.
    """
    import csv

    from planner.catalog import recipes

    catalog = recipes()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REDO_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: missing column(s) {missing}; the header needs {list(REDO_COLUMNS)}")
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, row in enumerate(reader, start=2):
            if not (row["why"] or "").strip():
                raise SystemExit(f"{path}:{i}: a redone cell needs a reason (column why)")
            if row["gpu_family"] == family:
                groups.setdefault((row["model"], row["stage"], row["recipe"]), []).append(int(row["batch"]))
    steps = []
    for (model, stage, recipe), batches in groups.items():
        rec = catalog[recipe]
        # Compile seconds on the H100 (reference data): SDXL whole 93-168, SD 1.5 whole 50-62, regional 5-40.
        whole = 240.0 if model.startswith("sdxl") else 120.0
        reserve = 0.0 if rec.compile == "none" else (whole if rec.compile_scope == "whole" else 45.0)
        steps.append(Step("redo", model, (recipe,), tuple(sorted(set(batches))), (stage,), reserve, False))
    return steps


def selected_steps(args: argparse.Namespace) -> list[Step]:
    """The plan the command line picks (--models, --levels, --all-batches, ...): one place for a run and --coverage."""
    steps = plan(
        tuple(m.strip() for m in args.models.split(",") if m.strip()),
        compile_levels=not (args.no_compile or args.tiny),
        variants=not (args.no_variants or args.tiny),
        compile_batches=tuple(int(b) for b in args.compile_batches.split(",")),
        all_batches=args.all_batches,
    )
    if args.levels:
        prefixes = tuple(x.strip() for x in args.levels.split(",") if x.strip())
        steps = [s for s in steps if s.level.startswith(prefixes)]
    return steps


def environment(target: Any) -> dict[str, Any]:
    import platform

    import torch

    inv = target.inventory
    return {
        "gpu_name": target.gpu.product_name
        if target.gpu
        else (torch.cuda.get_device_name() if target.is_gpu else "cpu"),
        "gpu_family": target.family_id,
        "gpu_uuid": target.gpu.uuid if target.gpu else None,
        "driver": inv.driver_version,
        "cuda_driver": inv.cuda_version,
        "cuda_runtime": torch.version.cuda,
        "torch": torch.__version__,
        "diffusers": inv.diffusers_version,
        "transformers": _version("transformers"),
        "torchao": inv.torchao_version,
        "python": platform.python_version(),
        "agent_version": inv.agent_version,
    }


def machine_record(weights: str) -> dict[str, Any]:
    """environment() of this machine's first GPU (or the CPU), dated, with what the weights were: the record a
    one-off device benchmark writes beside its numbers."""
    from agent.target import resolve_target

    target = resolve_target()
    try:
        return {**environment(target), "date": datetime.now(UTC).isoformat(timespec="seconds"), "weights": weights}
    finally:
        target.close()


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=420.0, help="deadline: no cell starts that would end past it")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "campaign-out")))
    p.add_argument("--resume", type=Path, default=None, help="previous measurements.csv: its cells are skipped")
    p.add_argument("--calibration", type=Path, default=None, help="previous calibration.json: skip calibrating")
    p.add_argument("--models", default=",".join(MAIN_MODELS), help="comma-separated model ids, in priority order")
    p.add_argument("--levels", default="", help="only plan levels starting with these prefixes (e.g. 1,2,5)")
    p.add_argument("--no-compile", action="store_true", help="leave out the compile and quantized levels")
    p.add_argument("--no-variants", action="store_true", help="leave out flux-schnell / sdxl-lightning")
    p.add_argument("--compile-batches", default="1,4", help="denoiser batches of the compile and quantized levels")
    p.add_argument("--all-batches", action="store_true", help="every step at batches 1-16 (the full matrix)")
    p.add_argument("--no-quality", action="store_true", help="skip the drift (PSNR/SSIM) runs")
    p.add_argument(
        "--redo",
        type=Path,
        default=None,
        help="CSV of cells to measure again (gpu_family,model,stage,recipe,batch,why): the plan is these cells of "
        "this GPU's family, in the file's order, instead of the levels",
    )
    p.add_argument("--tiny", action="store_true", help="tiny configs on the CPU: a dry run of the same code")
    p.add_argument("--height", type=int, default=None, help="image height (default: each model's own)")
    p.add_argument("--width", type=int, default=None, help="image width (default: each model's own)")
    p.add_argument(
        "--coverage",
        metavar="FAMILY",
        default=None,
        help="print which planned cells the --resume CSV (default: the shipped reference data) lacks for this GPU "
        "family, by level, and exit (no GPU needed)",
    )
    args = p.parse_args(argv)
    if args.coverage:
        source = args.resume or REPO / "planner" / "reference" / "measurements.csv"
        print_coverage(planned_cells(selected_steps(args), height=args.height, width=args.width), source, args.coverage)
        return 0

    t_start = time.monotonic()
    import torch

    from agent.calibrate import CalibrationResult, calibrate
    from agent.probe import ProbeOptions, Sweep
    from agent.report import CsvSink, load_existing, write_text_atomic
    from agent.target import resolve_target
    from agent.timing import SMOKE_TIMER, TimerOptions
    from planner.measurements.contract import MeasurementRow
    from stagekit.recipes import RecipeOptions

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []
    log_path = args.out / "campaign-log.txt"
    earlier_log = log_path.read_text() if log_path.exists() else ""  # several runs in one call append

    def log(msg: str) -> None:
        line = f"[{time.monotonic() - t_start:7.1f}s] {msg}"
        log_lines.append(line)
        print(line, flush=True)

    target = resolve_target(force_cpu=args.tiny)
    env = environment(target)
    log(
        f"device {target.device} ({env['gpu_name']}, family {target.family_id}); torch {env['torch']}, "
        f"diffusers {env['diffusers']}, torchao {env['torchao']}"
    )
    if not target.is_gpu and not args.tiny:
        log("no GPU: this is a CPU run; use --tiny for a dry run")

    # 1. Calibration (reused from a previous call when given).
    cal_path = out / "calibration.json"
    calibration: CalibrationResult | None = None
    for candidate in (args.calibration, cal_path):
        if candidate is not None and candidate.exists():
            calibration = CalibrationResult.model_validate_json(candidate.read_text())
            log(f"calibration reused from {candidate}")
            break
    if calibration is None:
        calibration = calibrate(
            target.device,
            family=target.family,
            gpu_uuid=env["gpu_uuid"],
            gpu_name=env["gpu_name"],
            power_limit_w=target.gpu.power_limit_w if target.gpu else None,
            clocks_event_reasons=target.nvml.clocks_event_reasons(target.handle) if target.nvml else None,
        )
        log(
            f"calibrated in {calibration.seconds:.1f}s: bf16 {calibration.bf16_tflops:.1f} TFLOP/s, "
            f"fp8 {calibration.fp8_tflops}, memory {calibration.memory_tbps:.3f} TB/s, h2d {calibration.h2d_gbps} GB/s"
            + (f"; FLAGGED: {calibration.flag_reason}" if calibration.flagged else "")
        )
    cal_path.write_text(calibration.model_dump_json(indent=2))
    target.ceilings = {
        k: float(v)
        for k, v in (
            ("bf16", calibration.bf16_tflops),
            ("fp8", calibration.fp8_tflops),
            ("memory", calibration.memory_tbps),
        )
        if v
    }

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    prov_path = out / "provenance.json"
    prov: dict[str, Any] = {}
    for source in ((args.resume.parent / "provenance.json") if args.resume is not None else None, prov_path):
        if source is not None and source.exists():
            prov = json.loads(source.read_text())
            break
    earlier_calls = list(prov.get("calls", []))

    def write_provenance(*, final: bool, new_rows: int = 0, stopped: str | None = None) -> None:
        """Written after calibration, after every row and at the end: a call cut short leaves provenance that counts
        the rows its CSV holds."""
        call = {
            **env,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "weights": "synthetic",
            "budget_s": args.budget_s,
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "new_rows": new_rows,
            "stopped": stopped,
            "finished": final,
            "models": list(models),
            "tiny": args.tiny,
        }
        prov.update(
            {
                **env,
                "weights": "synthetic",
                "calls": [*earlier_calls, call],
                "calibration": calibration.model_dump() if calibration is not None else None,
                "note": "Synthetic (random) weights built from the architecture configs: latency, memory and power "
                "are the real models'; quality columns are numeric drift only (DESIGN.md).",
            }
        )
        write_text_atomic(prov_path, json.dumps(prov, indent=2, default=str))
        write_text_atomic(log_path, earlier_log + "\n".join(log_lines) + "\n")

    write_provenance(final=False)

    # 2. The probe plan.
    csv_path = out / "measurements.csv"
    previous = []
    for candidate in (args.resume, csv_path):
        if candidate is not None and candidate.exists():
            previous = load_existing(candidate)
            log(f"resuming: {len(previous)} row(s) from {candidate}")
            break
    sink = CsvSink(csv_path, previous)
    if previous:
        from agent.report import write_csv_atomic

        write_csv_atomic(csv_path, previous)
    done = {r.cell for r in previous}

    steps = redo_steps(args.redo, target.family_id or "") if args.redo is not None else selected_steps(args)
    if args.tiny:
        timer = SMOKE_TIMER
        steps = [
            Step(s.level, s.model, s.recipes, tuple(b for b in s.batches if b <= 2), s.stages, s.reserve_s)
            for s in steps
        ]
    else:
        # A window is enough calls to fill 0.3 s, and three stable windows make the median. Until 2026-12-07 a
        # window was one call for slow cells and a cell ended after 6 windows or 30 s: 39% of the cells had 3
        # timed calls (no p95) and 46 H100 cells marked ok had not settled. Now the three windows hold at least
        # 20 calls (TimerOptions.min_p95_calls) and an unsettled cell gets up to 10 windows or 60 s.
        timer = TimerOptions(
            warmup_calls=2,
            warmup_s=0.5,
            calls_per_window=1,
            min_window_s=0.3,
            min_windows=3,
            stable_windows=3,
            max_windows=10,
            spread_threshold=0.05,
            max_cell_s=60.0,
        )
    new_rows = 0

    def record(row: MeasurementRow) -> None:
        """Each row to the CSV and the provenance's count at once: a call killed mid-group returns both agreeing."""
        sink(row)
        write_provenance(final=False, new_rows=len(sink.rows) - len(previous))

    stopped = None
    for step in steps:
        left = args.budget_s - (time.monotonic() - t_start)
        remaining = left - step.reserve_s
        if remaining <= 0:
            stopped = f"budget of {args.budget_s:.0f} s spent before level {step.level} {step.model}"
            if left > 0 and step.reserve_s > 0:
                continue  # too little left for a compile cell; a cheaper later step may still fit
            break
        opts = ProbeOptions(
            model=step.model,
            recipes=step.recipes,
            batches=step.batches,
            stages=step.stages,
            tiny=args.tiny,
            height=args.height,
            width=args.width,
            timer=timer,
            budget_s=remaining,
            quality=not args.no_quality,
            recipe_options=RecipeOptions(quant_min_features=16 if args.tiny else 128),
        )
        sweep = Sweep(opts, target, done=done, on_row=record)
        todo = sweep.total()
        if todo == 0:
            continue
        log(f"level {step.level}: {step.model} {','.join(step.recipes)} batches {step.batches} ({todo} cells)")
        t0 = time.monotonic()
        state = sweep.run()
        new_rows += len(state.rows)
        summary: dict[str, int] = {}
        for r in state.rows:
            summary[r.status] = summary.get(r.status, 0) + 1
        log(f"  {len(state.rows)} rows in {time.monotonic() - t0:.1f}s {summary}")
        for r in state.rows:
            if r.status == "ok":
                log(
                    f"    {r.stage:12s} {r.recipe:24s} b{r.batch:<3d} {r.latency_ms:9.2f} ms  "
                    f"p95 {r.latency_p95_ms or 0:9.2f}  "
                    f"{r.peak_mem_gib or 0:6.2f} GiB  {r.achieved_tflops or 0:7.1f} TF/s  {r.bound or '-'}"
                    + (f"  compile {r.compile_s:.1f}s" if r.compile_s else "")
                    + f"  {r.calls} calls, {r.sm_clock_mhz or 0:.0f} MHz, {r.throttle_reasons or '-'}"
                )
            else:
                measured = f" ({r.latency_ms:.2f} ms)" if r.latency_ms else ""
                log(f"    {r.stage:12s} {r.recipe:24s} b{r.batch:<3d} {r.status}{measured}: {(r.error or '')[:160]}")
        write_provenance(final=False, new_rows=new_rows)
        if state.stopped:
            stopped = state.stopped
            break
        torch.cuda.empty_cache() if target.is_gpu else None

    write_provenance(final=True, new_rows=new_rows, stopped=stopped)
    log_path.write_text(earlier_log + "\n".join(log_lines) + "\n")
    log(f"done: {new_rows} new row(s), {len(sink.rows)} in {csv_path}" + (f"; stopped: {stopped}" if stopped else ""))
    target.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
