"""The `scheduler` command: run a worker, show a routing decision, submit a job, rebalance."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from planner.cli.common import handle_errors
from scheduler.config import SchedulerSettings

app = typer.Typer(
    name="scheduler",
    help="Route image-generation jobs to GPU pools by the plan in force, and run the pools' workers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    # Plain click help: rich markup would eat every `[default: ...]` (as "Port .") and show flags as <bool>.
    rich_markup_mode=None,
)


def _settings(**overrides: Any) -> SchedulerSettings:
    return SchedulerSettings(**{k: v for k, v in overrides.items() if v is not None})


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


ModelDirOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model-dir",
        help="MODEL=DIR: the model's diffusers folder or Hugging Face cache snapshot (repeat per model; adds to "
        "and overrides GFP_MODEL_DIRS).",
    ),
]
SyntheticOption = Annotated[
    bool | None,
    typer.Option(
        "--synthetic/--no-synthetic",
        help="Random weights for a model with no folder (timing only: the images are noise).",
    ),
]


@app.command()
@handle_errors
def worker(
    pool: Annotated[list[str], typer.Option("--pool", "-p", help="A pool to serve (repeat for packed pools).")],
    concurrency: Annotated[
        int | None, typer.Option(help="Job threads (default: twice the largest batch).", min=1)
    ] = None,
    name: Annotated[str | None, typer.Option(help="Worker name (name@host); default: pool-random@host.")] = None,
    tiny: Annotated[
        bool | None, typer.Option("--tiny/--full", help="Build stages from the tiny configs (CPU tests).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default SCHEDULER_DEVICE).")] = None,
    noop_ms: Annotated[
        float | None, typer.Option(help="Run no-op stages taking this many ms per stage call (benchmarks, tests).")
    ] = None,
    noop_item_ms: Annotated[float, typer.Option(help="With --noop-ms: this many ms more per item of a batch.")] = 0.0,
    model_dir: ModelDirOption = None,
    synthetic: SyntheticOption = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Serve pools' queues: load their stage groups once, batch jobs dynamically, report throughput.

    Each pool's model is loaded from its folder (--model-dir MODEL=DIR or GFP_MODEL_DIRS, see docs/models.md);
    a pool whose folder is missing or broken is refused (logged with the path and part), the others served.
    """
    from scheduler.stages import noop_builder, stage_builder
    from scheduler.worker import run_worker
    from stagekit.sources import ModelSources

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(tiny=tiny, device=device, synthetic=synthetic)
    sources = ModelSources.from_options(model_dir or [], synthetic=settings.synthetic)
    build = noop_builder(noop_ms, noop_item_ms) if noop_ms is not None else stage_builder(sources)
    code = run_worker(settings, pool, concurrency=concurrency, name=name, build_stage=build, loglevel=loglevel)
    raise typer.Exit(code)


@app.command()
@handle_errors
def generate(
    model: Annotated[str, typer.Option(help="Catalog model id (sd15, sdxl, flux-dev, ...).")],
    prompt: Annotated[str, typer.Option(help="The prompt.")],
    out: Annotated[Path, typer.Option(help="Write the PNG here.")],
    model_dir: ModelDirOption = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt (CFG models).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Steps (default: the model's).", min=1)] = None,
    height: Annotated[int | None, typer.Option(help="Height (default: the model's).", min=16)] = None,
    width: Annotated[int | None, typer.Option(help="Width (default: the model's).", min=16)] = None,
    recipe: Annotated[
        list[str] | None,
        typer.Option(help="A recipe for every stage (bf16), or STAGE=RECIPE (repeat); default bf16, fp32 on a CPU."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default SCHEDULER_DEVICE).")] = None,
    synthetic: SyntheticOption = None,
) -> None:
    """One image on this host through the stage code the workers run: check a model install before a host joins."""
    from scheduler.generate import generate_image
    from stagekit.sources import ModelSources

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(device=device, synthetic=synthetic)
    sources = ModelSources.from_options(model_dir or [], synthetic=settings.synthetic)
    report = generate_image(
        sources,
        model,
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        steps=steps,
        height=height,
        width=width,
        recipes=recipe or [],
        device=settings.device,
        out=out,
    )
    _print(report)


@app.command()
@handle_errors
def route(
    workload: Annotated[str, typer.Option(help="The workload of the job.")],
    height: Annotated[int | None, typer.Option(help="Image height (default: the workload's).")] = None,
    width: Annotated[int | None, typer.Option(help="Image width (default: the workload's).")] = None,
    steps: Annotated[int | None, typer.Option(help="Steps (default: the workload's).")] = None,
    table: Annotated[bool, typer.Option("--table", help="Print the routing table and backlogs too.")] = False,
) -> None:
    """Show where a job would go now: the routing decision on the current table and backlogs."""
    from scheduler.dispatch import Dispatcher
    from scheduler.routing import JobShape

    dispatcher = Dispatcher(_settings())
    if height is None or width is None:
        h, w = dispatcher.default_size(workload)
        height, width = height or h, width or w
    steps = (
        steps
        if steps is not None
        else next((p.ref_steps for g in dispatcher.table().groups(workload) for p in g if p.ref_steps), None)
    )
    started = time.perf_counter()
    decision = dispatcher.route(JobShape(str(uuid.uuid4()), workload, height, width, steps))
    elapsed = time.perf_counter() - started
    out: dict[str, Any] = {
        "plan_id": decision.plan_id,
        "version": decision.version,
        "pools": list(decision.pools),
        "work": list(decision.work),
        "decision_ms": round(elapsed * 1000, 3),
    }
    if table:
        backlog = dispatcher.backlog()
        out["table"] = [
            {
                "pool": p.pool,
                "group": p.group_index,
                "capacity": p.capacity,
                "weight": p.weight,
                "backlog": backlog.work.get(p.pool, 0.0),
                "unavailable": p.pool in backlog.unavailable,
            }
            for p in dispatcher.table().pools
        ]
    _print(out)


@app.command()
@handle_errors
def submit(
    workload: Annotated[str, typer.Option(help="The workload.")],
    prompt: Annotated[str, typer.Option(help="The prompt.")],
    seed: Annotated[int | None, typer.Option(help="Seed (random if left out).")] = None,
    height: Annotated[int | None, typer.Option()] = None,
    width: Annotated[int | None, typer.Option()] = None,
    steps: Annotated[int | None, typer.Option()] = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key (default: a new one).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the image here (implies --wait).")] = None,
    timeout_s: Annotated[float, typer.Option(help="How long --wait waits.")] = 600.0,
) -> None:
    """Submit a job through the planner API (SCHEDULER_PLANNER_API_URL, SCHEDULER_PLANNER_TOKEN)."""
    from scheduler.client import JobClient, JobFailedError

    settings = _settings()
    token = settings.planner_token.get_secret_value() if settings.planner_token else None
    with JobClient(settings.planner_api_url, token) as client:
        status = client.submit(
            workload=workload, prompt=prompt, seed=seed, height=height, width=width, steps=steps, idempotency_key=key
        )
        if wait or out is not None:
            try:
                status = client.wait(status.id, timeout_s=timeout_s)
            except JobFailedError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(1) from exc
            if out is not None:
                out.write_bytes(client.result(status.id))
        _print(status.raw)


@app.command()
@handle_errors
def rebalance(
    loop: Annotated[bool, typer.Option("--loop", help="Keep going every heartbeat (default: one pass).")] = False,
) -> None:
    """Move queued jobs off pools of lost hosts; resend jobs whose dispatch was never recorded."""
    from scheduler.dispatch import Dispatcher
    from scheduler.rebalance import RebalanceTurns, rebalance_once

    settings = _settings()
    dispatcher = Dispatcher(settings)
    if not loop:
        report = rebalance_once(dispatcher)
        _print({"unavailable": sorted(report.unavailable), "moved": report.moved, "resent": report.redispatched})
        return
    # as its own process: it takes the same turns as the workers (one pass at a time, fleet-wide)
    turns = RebalanceTurns(
        lambda: dispatcher, holder=f"rebalance@{socket.gethostname()}", lock_s=settings.heartbeat_s * 4
    )
    while True:
        turn = turns.take_turn(dispatcher.state)
        if turn is not None:
            _print({"unavailable": sorted(turn.unavailable), "moved": turn.moved, "resent": turn.redispatched})
        time.sleep(settings.heartbeat_s)


@app.command("dead-letter")
@handle_errors
def dead_letter(limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """The latest dead-lettered jobs and why (requeue one with POST /v1/jobs/{id}/requeue)."""
    import redis

    from scheduler.state import SchedulerState

    settings = _settings()
    _print(SchedulerState(redis.Redis.from_url(settings.state_redis_url), settings.key_prefix).dead_letters(limit))


@app.command()
@handle_errors
def workers() -> None:
    """The live workers from their heartbeats: pools served, and pools refused with why (a broken model folder)."""
    import dataclasses

    import redis

    from scheduler.state import SchedulerState

    settings = _settings()
    found = SchedulerState(redis.Redis.from_url(settings.state_redis_url), settings.key_prefix).workers()
    _print([dataclasses.asdict(w) for w in sorted(found, key=lambda w: w.name)])
    if any(w.refused for w in found):
        raise typer.Exit(1)  # a script (or a health check) sees that some pool is not served as planned


def main() -> None:  # pragma: no cover - console script entry for tools that want a function
    app(prog_name="scheduler")
    sys.exit(0)
