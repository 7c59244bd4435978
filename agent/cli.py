"""The `agent` command: discover, calibrate, probe, flush, run (the daemon a fleet installs).

Heavy imports (torch, diffusers) happen inside the commands that need them, so `agent --help` is instant.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent import __version__

app = typer.Typer(
    name="agent",
    help="GPU host agent: inventory, calibration and probe sweeps of diffusion pipelines, reported to the planner.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    # Plain click help: rich markup would eat every `[default: ...]` (as "Port .") and show flags as <bool>.
    rich_markup_mode=None,
)
console = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """GPU host agent."""


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def discover(as_json: Annotated[bool, typer.Option("--json", help="Print the inventory as JSON.")] = False) -> None:
    """List this host's GPUs (NVML), matched to catalog families; say so plainly when there is none."""
    from agent.discover import discover as take

    inv = take()
    if as_json:
        typer.echo(inv.model_dump_json(indent=2))
        return
    console.print(
        f"host {inv.host}  driver {inv.driver_version or '-'}  CUDA (driver) {inv.cuda_version or '-'}  "
        f"torch {inv.torch_version or '-'} (CUDA {inv.torch_cuda or '-'})  diffusers {inv.diffusers_version or '-'}  "
        f"torchao {inv.torchao_version or '-'}  agent {inv.agent_version}",
        highlight=False,
    )
    if inv.gpus:
        table = Table("index", "uuid", "product", "family", "memory GiB", "cc", "MIG", "power limit W", "max SM MHz")
        for g in inv.gpus:
            table.add_row(
                str(g.index),
                g.uuid,
                g.product_name,
                g.gpu_family or "unknown",
                f"{g.memory_gib:.1f}",
                g.compute_capability or "-",
                "on" if g.mig_mode else "off",
                f"{g.power_limit_w:.0f}" if g.power_limit_w else "-",
                str(g.max_sm_clock_mhz or "-"),
            )
        console.print(table)
    if inv.note:
        console.print(inv.note, highlight=False)


@app.command()
def calibrate(
    gpu: Annotated[int, typer.Option(help="CUDA device index.")] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="Calibrate the CPU even if a GPU is present.")] = False,
    output: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
    report: Annotated[bool, typer.Option("--report", help="Send to the planner (spooled if it is down).")] = False,
) -> None:
    """Measure this GPU's ceilings (bf16/fp8 matmul, memory and host-to-device bandwidth) against its family."""
    from agent.calibrate import calibrate as run_calibration
    from agent.config import get_settings
    from agent.target import resolve_target

    settings = get_settings()
    target = resolve_target(gpu_index=gpu, force_cpu=cpu)
    if not target.is_gpu:
        console.print(f"{target.inventory.note or 'No GPU selected.'} Calibrating the CPU.", highlight=False)
    started = datetime.now(UTC)
    result = run_calibration(
        target.device,
        family=target.family,
        gpu_uuid=target.gpu.uuid if target.gpu else None,
        gpu_name=target.gpu.product_name if target.gpu else "cpu",
        power_limit_w=target.gpu.power_limit_w if target.gpu else None,
        clocks_event_reasons=target.nvml.clocks_event_reasons(target.handle) if target.nvml else None,
        flag_ratio=settings.calibration_flag_ratio,
    )
    console.print_json(result.model_dump_json())
    if result.flagged:
        console.print(f"[bold yellow]flagged:[/] {result.flag_reason}", highlight=False)
    if output is not None:
        output.write_text(result.model_dump_json(indent=2))
    if report:
        from agent.report import probe_run_body

        body = probe_run_body(
            run_id=str(uuid.uuid4()),
            host_id=None,
            kind="calibration",
            target=target,
            weights=None,
            started_at=started,
            calibrations=[result],
        )
        _report(body)
    target.close()


def _report(body: dict[str, Any]) -> None:
    """Spool first, then try to send everything spooled (the daemon resends what stays).

    A run the planner refuses ends the command with exit status 1 and the planner's reason: a refused run is
    not stored anywhere a plan can see it (it stays in the spool's rejected/ folder), and a script or a CI job
    must not read success. A planner that is down is not a refusal: the run waits in the spool (exit 0).
    """
    from agent.client import REENROLL_HINT, PlannerClient, TokenRefused, flush
    from agent.config import get_settings
    from agent.daemon import EXIT_TOKEN_REFUSED, host_identity
    from agent.spool import Spool

    settings = get_settings()
    ident = host_identity(settings)
    if ident is not None:
        body["host_id"] = ident["host_id"]
    spool = Spool(settings.resolved_spool_dir)
    spool.put(body)  # first: kept even if the planner is down or this host is not registered yet
    if ident is None:
        console.print(
            f"spooled in {spool.dir}; not sent: this host is not registered (no token at "
            f"{settings.resolved_token_file}). `agent run` with AGENT_ENROLLMENT_TOKEN set registers it and "
            "sends the spool.",
            highlight=False,
        )
        return
    refused: list[tuple[str, str]] = []
    with PlannerClient(
        settings.planner_url,
        token=ident["token"],
        timeout_s=settings.request_timeout_s,
        attempts=settings.retry_attempts,
    ) as client:
        try:
            sent, pending = flush(
                spool,
                client,
                host_id=ident["host_id"],
                log=lambda m: err.print(m, highlight=False),
                on_refused=lambda rid, why: refused.append((rid, why)),
            )
        except TokenRefused as exc:
            hint = REENROLL_HINT.format(spool=spool.dir, token_file=settings.resolved_token_file)
            _fail(f"{hint} ({exc})", code=EXIT_TOKEN_REFUSED)
            return
    console.print(f"reported: {sent} run(s) sent, {pending} waiting in {spool.dir}", highlight=False)
    if refused:
        reasons = "; ".join(f"run {rid}: {why}" for rid, why in refused)
        _fail(
            f"the planner refused {len(refused)} run(s), kept in {spool.dir / 'rejected'}: {reasons}. Fix what it "
            "names (e.g. define an unknown family with PUT /v1/gpu-families/ID, docs/agent.md) and probe again.",
            code=1,
        )


@app.command()
def probe(
    model: Annotated[str, typer.Option(help="Model id from the catalog (sdxl, flux-dev, ...).")],
    recipe: Annotated[list[str] | None, typer.Option("--recipe", "-r", help="Recipe id; repeat. Default bf16.")] = None,
    batch: Annotated[list[int] | None, typer.Option("--batch", "-b", help="Batch size (images); repeat.")] = None,
    stage: Annotated[list[str] | None, typer.Option("--stage", "-s", help="Stage; repeat. Default: all.")] = None,
    height: Annotated[int | None, typer.Option(help="Image height (default: the model's).")] = None,
    width: Annotated[int | None, typer.Option(help="Image width (default: the model's).")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Use the tiny CPU configs (tests, dry runs).")] = False,
    weights_dir: Annotated[
        Path | None, typer.Option(help="The model's diffusers folder or Hugging Face cache snapshot: real weights.")
    ] = None,
    model_dir: Annotated[
        list[str] | None,
        typer.Option("--model-dir", help="MODEL=DIR, as the workers take it (repeatable; over GFP_MODEL_DIRS)."),
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option("--synthetic", help="Random weights where no folder is named (timing only; quality unknown)."),
    ] = False,
    output: Annotated[Path | None, typer.Option(help="Measurements CSV; an existing one is resumed.")] = None,
    budget_s: Annotated[
        float | None, typer.Option(help="Deadline in seconds: no cell starts that would end past it (predicted).")
    ] = None,
    memory_cap_gib: Annotated[float | None, typer.Option(help="Cells above this footprint end as oom.")] = None,
    quality: Annotated[
        bool,
        typer.Option(
            help="Measure quality against the stage's fp32 reference: with --weights-dir (real weights) only; on "
            "synthetic weights quality is stored as unknown unless --synthetic-drift."
        ),
    ] = True,
    synthetic_drift: Annotated[
        bool,
        typer.Option(
            "--synthetic-drift",
            help="On synthetic weights, measure numeric drift anyway (labelled quality_weights=synthetic; never "
            "perceptual quality, and a plan counts it only when asked to).",
        ),
    ] = False,
    quality_steps: Annotated[
        int | None, typer.Option(help="Denoising steps of the quality probe (default: the catalog's step count).")
    ] = None,
    quality_prompts: Annotated[
        int | None, typer.Option(help="Score only the first N prompts of the shipped set (default: all 18).")
    ] = None,
    warmup_calls: Annotated[int | None, typer.Option(help="Warm-up calls per cell.")] = None,
    calls_per_window: Annotated[int | None, typer.Option(help="Minimum calls per timed window.")] = None,
    min_windows: Annotated[int | None, typer.Option(help="Minimum timed windows per cell.")] = None,
    max_windows: Annotated[int | None, typer.Option(help="Maximum timed windows per cell.")] = None,
    spread: Annotated[float | None, typer.Option(help="Stable when the last windows spread below this.")] = None,
    max_cell_s: Annotated[float | None, typer.Option(help="Longest timing of one cell, seconds.")] = None,
    gpu: Annotated[int, typer.Option(help="CUDA device index.")] = 0,
    gpu_family: Annotated[str | None, typer.Option(help="Family id to record (overrides NVML matching).")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run on the CPU even if a GPU is present.")] = False,
    quant_backend: Annotated[str, typer.Option(help="agent (own fp8/int8 layers) or torchao.")] = "agent",
    quant_min_features: Annotated[int | None, typer.Option(help="Skip Linear layers narrower than this.")] = None,
    calibration: Annotated[Path | None, typer.Option(help="Calibration JSON whose ceilings class the cells.")] = None,
    report: Annotated[bool, typer.Option("--report", help="Send to the planner (spooled if it is down).")] = False,
) -> None:
    """Sweep stages x recipes x batches of a model; write the measurements CSV and/or report to the planner."""
    from planner.catalog import known_model, recipes
    from planner.core.errors import PlannerError as CatalogProblem

    try:
        spec = known_model(model)
    except CatalogProblem as exc:
        _fail(str(exc))
        return
    chosen = tuple(recipe or ["bf16"])
    unknown = [r for r in chosen if r not in recipes()]
    if unknown:
        _fail(f"unknown recipe(s) {unknown}; known: {', '.join(recipes())}")
    bad_stages = [s for s in (stage or []) if s not in spec.stage_names]
    if bad_stages:
        _fail(f"model {model} has no stage(s) {bad_stages}; its stages are {spec.stage_names}")
    if quant_backend not in ("agent", "torchao"):
        _fail("--quant-backend must be agent or torchao")
    from stagekit.errors import UnsupportedModelError
    from stagekit.sources import ModelSources

    try:
        dirs = [*(model_dir or []), *([f"{model}={weights_dir}"] if weights_dir is not None else [])]
        source = ModelSources.from_options(dirs, synthetic=synthetic).source(model)
    except UnsupportedModelError as exc:
        _fail(str(exc))
        return
    console.print(
        f"{model}: weights={source.weights}" + (f" from {source.folder}" if source.folder else " (random)"),
        highlight=False,
    )
    from agent.probe import ProbeOptions, Sweep
    from agent.report import CsvSink, load_existing, probe_run_body
    from agent.target import resolve_target
    from agent.timing import TimerOptions
    from stagekit.recipes import RecipeOptions

    target = resolve_target(gpu_index=gpu, family_override=gpu_family, force_cpu=cpu)
    if not target.is_gpu:
        console.print(f"{target.inventory.note or 'No GPU selected.'} Probing on the CPU.", highlight=False)
    if calibration is not None:
        cal = json.loads(calibration.read_text())
        target.ceilings = {
            k: float(v)
            for k, v in (
                ("bf16", cal.get("bf16_tflops")),
                ("fp8", cal.get("fp8_tflops")),
                ("memory", cal.get("memory_tbps")),
            )
            if v
        }
    base = (
        TimerOptions()
        if target.is_gpu
        else TimerOptions(
            warmup_calls=1,
            warmup_s=0.0,
            calls_per_window=2,
            min_window_s=0.0,
            min_windows=2,
            stable_windows=2,
            max_windows=4,
            # A dry run of the code path on the CPU, not a measurement (family `cpu` is no plan's evidence): no
            # p95, and no settling demanded of millisecond calls on a shared host (177% spread seen on 2 cores).
            spread_threshold=10.0,
            max_cell_s=10.0,
            min_p95_calls=0,
        )
    )
    timer = TimerOptions(
        warmup_calls=warmup_calls if warmup_calls is not None else base.warmup_calls,
        warmup_s=base.warmup_s if warmup_calls is None else 0.0,
        calls_per_window=calls_per_window or base.calls_per_window,
        min_window_s=base.min_window_s if calls_per_window is None else 0.0,
        min_windows=min_windows or base.min_windows,
        stable_windows=min(min_windows or base.stable_windows, base.stable_windows),
        max_windows=max_windows or base.max_windows,
        spread_threshold=spread if spread is not None else base.spread_threshold,
        max_cell_s=max_cell_s or base.max_cell_s,
        min_p95_calls=base.min_p95_calls,
    )
    opts = ProbeOptions(
        model=model,
        recipes=chosen,
        batches=tuple(batch or [1]),
        stages=tuple(stage) if stage else None,
        height=height,
        width=width,
        tiny=tiny,
        weights_dir=source.folder,
        timer=timer,
        budget_s=budget_s,
        memory_cap_gib=memory_cap_gib,
        quality=quality,
        synthetic_drift=synthetic_drift,
        quality_steps=quality_steps,
        quality_prompts=quality_prompts,
        recipe_options=RecipeOptions(
            quant_backend=quant_backend, quant_min_features=quant_min_features or (16 if tiny else 128)
        ),
    )
    previous = load_existing(output) if output is not None else []
    sink = CsvSink(output, previous) if output is not None else None
    started = datetime.now(UTC)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        sweep = Sweep(opts, target, done={r.cell for r in previous}, on_row=sink)
        task = bar.add_task(f"{model}", total=sweep.total())

        def tick(text: str, n: int) -> None:
            bar.update(task, advance=n, description=f"{model}: {text}")

        sweep.progress = tick
        state = sweep.run()
    rows = state.rows
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
    console.print(
        f"probe run {sweep.probe_run}: {len(rows)} cell(s) measured ({summary}), "
        f"{state.skipped} already done" + (f"; stopped: {state.stopped}" if state.stopped else ""),
        highlight=False,
    )
    if output is not None:
        console.print(f"wrote {output}", highlight=False)
    if report and rows:
        body = probe_run_body(
            run_id=sweep.probe_run,
            host_id=None,
            kind="probe",
            target=target,
            weights=sweep.weights,
            started_at=started,
            rows=rows,
        )
        _report(body)
    target.close()


@app.command()
def flush() -> None:
    """Send the spooled results to the planner now."""
    from agent.client import REENROLL_HINT, PlannerClient, TokenRefused
    from agent.client import flush as send
    from agent.config import get_settings
    from agent.daemon import EXIT_TOKEN_REFUSED, host_identity
    from agent.spool import Spool

    settings = get_settings()
    ident = host_identity(settings)
    if ident is None:
        _fail(f"this host is not registered (no token at {settings.resolved_token_file})")
        return
    spool = Spool(settings.resolved_spool_dir)
    refused: list[str] = []
    with PlannerClient(settings.planner_url, token=ident["token"], attempts=settings.retry_attempts) as client:
        try:
            sent, pending = send(
                spool,
                client,
                host_id=ident["host_id"],
                log=lambda m: err.print(m, highlight=False),
                on_refused=lambda rid, _why: refused.append(rid),
            )
        except TokenRefused as exc:
            hint = REENROLL_HINT.format(spool=spool.dir, token_file=settings.resolved_token_file)
            _fail(f"{hint} ({exc})", code=EXIT_TOKEN_REFUSED)
            return
    console.print(f"{sent} sent, {pending} waiting", highlight=False)
    if refused:
        _fail(f"the planner refused {len(refused)} run(s), kept in {spool.dir / 'rejected'} (reasons above)", code=1)


@app.command()
def run() -> None:
    """The daemon: register, heartbeat, run queued probe/calibration requests, resend spooled results."""
    from agent.config import get_settings
    from agent.daemon import Daemon

    code = Daemon(get_settings()).run_forever()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    app()
