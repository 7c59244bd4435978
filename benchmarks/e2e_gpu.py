"""End to end on a GPU: the plan's predictions against what the scheduler achieves, and the saving measured.

One run (one device call) does the whole loop on one GPU:
 1. starts Redis (a carried redis-server when none answers) and an embedded store (SQLite, migrated, seeded);
 2. probes the model on this GPU with the agent (te/dn/vae in bf16 and the denoiser in bf16-compile, at the
    probe batches), and stores the run: the plan is made from this GPU's own measurements;
 3. solves a plan for one GPU of this family at a rate it can carry (a fraction of the best probed option's
    capacity), and builds the naive baseline the issue names (bf16, no compile, batch 1, stages together);
 4. for each configuration: stores and activates its plan, starts `python -m scheduler worker` for its pool,
    warms it up (compiles), then
    - saturates it (a queue of several batches) and measures the images/s it serves (its capacity), and
    - (the plan only) drives jobs at the planned rate (Poisson arrivals) and measures the p95 latency from
      submission to the stored result;
 5. prints the comparison, writes e2e.json (+ the probe CSV, the plan JSON, worker logs) under --out, and ends
    with the line
        e2e: throughput achieved/predicted=R1 p95 achieved/predicted=R2 p95 achieved/simulated=R2S
             cost_per_image plan/baseline=R3
    R1: served capacity over the plan's predicted group throughput; R2: p95 at the planned rate over the plan's
    predicted p95 (the analytic bound); R2S: the same over the plan's simulated p95 (`simulated_p95_s`);
    R3: $/image of the plan's configuration over the baseline's, both at their measured capacity
    on the same GPU at the same price.

`--tiny --device cpu` runs the same code on the tiny configs (a dry run for tests and development).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FLEET = "e2e"
SHORT = {"text_encoder": "te", "denoiser": "dn", "vae_decoder": "vae"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_redis(port: int, redis_bin: Path | None, workdir: Path) -> subprocess.Popen[bytes] | None:
    """A Redis on loopback: the one already answering on `port`, or the carried binary started here."""
    if _port_open(port):
        log(f"redis: already answering on 127.0.0.1:{port}")
        return None
    if redis_bin is None or not redis_bin.exists():
        raise SystemExit(f"no Redis on 127.0.0.1:{port} and no redis-server binary at {redis_bin}")
    env = {**os.environ, "LD_LIBRARY_PATH": str(redis_bin.parent.parent / "lib")}
    proc = subprocess.Popen(
        [str(redis_bin), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"redis-server did not start (exit {proc.poll()})")
        time.sleep(0.05)
    log(f"redis: started {redis_bin} on 127.0.0.1:{port}")
    return proc


@dataclass(frozen=True)
class Config:
    """One way of serving the workload on the GPU: a pool with its stages, recipes, batch and predictions."""

    label: str
    workload: str
    family: str
    model: str
    stages: list[str]
    recipes: dict[str, str]
    batch: int
    predicted_throughput: float
    predicted_p95_s: float | None
    plan_json: dict[str, Any]
    simulated_p95_s: float | None = None  # the plan's simulation of the scheduler's batching (solver.simulate)


def probe(args: argparse.Namespace, out: Path) -> tuple[list[Any], str]:
    """Measure the cells the plan can use on this GPU (the agent's own sweep); return rows and the family."""
    from agent.probe import ProbeOptions, Sweep
    from agent.target import resolve_target
    from agent.timing import TimerOptions

    target = resolve_target(force_cpu=args.device == "cpu")
    batches = tuple(int(b) for b in args.probe_batches.split(","))
    timer = (
        TimerOptions(warmup_calls=1, warmup_s=0.0, calls_per_window=1, min_window_s=0.0, min_windows=2,
                     stable_windows=2, max_windows=3, spread_threshold=0.5, max_cell_s=20.0)
        if args.tiny
        else TimerOptions(warmup_calls=2, warmup_s=0.5, calls_per_window=1, min_window_s=0.3, min_windows=3,
                          stable_windows=3, max_windows=6, spread_threshold=0.05, max_cell_s=20.0)
    )  # fmt: skip
    run_id = str(uuid.uuid4())
    rows: list[Any] = []
    sweeps = [
        ProbeOptions(model=args.model, recipes=("bf16",), batches=batches, tiny=args.tiny, timer=timer, quality=False),
        ProbeOptions(
            model=args.model, recipes=("bf16-compile",), batches=batches, stages=("denoiser",), tiny=args.tiny,
            timer=timer, quality=False,
        ),
    ]  # fmt: skip
    for opts in sweeps:
        if args.tiny and opts.recipes == ("bf16-compile",):
            continue  # compile on the CPU takes minutes on tiny shapes and says nothing
        state = Sweep(opts, target, probe_run=run_id).run()
        rows.extend(state.rows)
    for r in rows:
        log(f"probe {r.stage:12s} {r.recipe:14s} b{r.batch:<3d} {r.status:4s} "
            f"{(r.latency_ms or 0):9.2f} ms  p95 {(r.latency_p95_ms or 0):9.2f}")  # fmt: skip
    from planner.measurements.csvio import write_rows

    with (out / "e2e-probe.csv").open("w", newline="") as fh:
        write_rows(rows, fh)
    family = target.family_id
    target.close()
    return rows, family


def pipeline_seconds(rows: list[Any], model: str, steps: int, dn_recipe: str, batch: int) -> float | None:
    """te + steps x dn + vae at a batch, from probed cells (te/vae in bf16)."""
    cells = {(r.stage, r.recipe, r.batch): r.latency_ms for r in rows if r.status == "ok" and r.model == model}
    te = cells.get(("text_encoder", "bf16", batch))
    dn = cells.get(("denoiser", dn_recipe, batch))
    vae = cells.get(("vae_decoder", "bf16", batch))
    if te is None or dn is None or vae is None:
        return None
    return (te + steps * dn + vae) / 1000.0


def solve_plan(
    args: argparse.Namespace,
    engine: Any,
    rows: list[Any],
    family: str,
    price: float,
    memory_gib: float | None,
    size: tuple[int, int],
) -> tuple[Config, Config, dict[str, Any]]:
    """The plan (solver) and the naive baseline, for one GPU of this family."""
    import yaml

    from planner import catalog
    from planner.crud.measurements import stored_rows
    from planner.db.session import session_scope
    from planner.scenario import parse_scenario
    from planner.solver import build_problem, solve

    spec = catalog.models()[args.model]
    steps = args.steps or spec.default_steps
    batches = [int(b) for b in args.probe_batches.split(",")]
    options = [
        (rec, b, pipeline_seconds(rows, args.model, steps, rec, b)) for rec in ("bf16", "bf16-compile") for b in batches
    ]
    capacities = [b / t for _, b, t in options if t]
    if not capacities:
        raise SystemExit("the probe measured no complete pipeline: nothing to plan")
    best = max(capacities)
    rate = round(args.rate_fraction * best / (1 + args.headroom), 4)
    fleet_entry: dict[str, Any] = {"family": family, "price_per_hour": price, "available": 1}
    if memory_gib is not None:
        fleet_entry["memory_gib"] = memory_gib
    scenario = {
        "fleet": [fleet_entry],
        "workloads": [
            {
                "name": "e2e",
                "model": args.model,
                "height": size[0],
                "width": size[1],
                "steps": steps,
                "rate": rate,
                "headroom": args.headroom,
                "batches": batches,
                "families": [family],
                "recipes": {
                    "text_encoder": ["bf16"],
                    "denoiser": ["bf16", "bf16-compile"] if not args.tiny else ["bf16"],
                    "vae_decoder": ["bf16"],
                },
            }
        ],
        "solver": {"share_gpus": False},
    }
    sc = parse_scenario(yaml.safe_dump(scenario), name="e2e-scenario")
    with session_scope(engine) as s:
        store_rows = stored_rows(s, status="ok")
    problem = build_problem(
        sc, store_rows, families=catalog.gpu_families(), models=catalog.models(), recipes=catalog.recipes()
    )
    plan = solve(problem)
    plan_json = plan.to_dict()
    if not plan.feasible:
        raise SystemExit(f"the solver found no plan: {json.dumps(plan_json['infeasible'])}")
    w = plan.workloads[0]
    if len(w.groups) != 1:
        raise SystemExit(f"expected one group on one GPU, the plan has {len(w.groups)}: {w.topology}")
    g = w.groups[0]
    cfg = Config(
        label="plan",
        workload="e2e",
        family=g.family,
        model=w.model,
        stages=list(g.stages),
        recipes=dict(g.recipes),
        batch=g.batch,
        predicted_throughput=g.throughput,
        predicted_p95_s=w.predicted_p95_s,
        plan_json=plan_json,
        simulated_p95_s=w.simulated_p95_s,
    )
    t1 = pipeline_seconds(rows, args.model, steps, "bf16", 1)
    if t1 is None:
        raise SystemExit("the probe has no batch-1 bf16 pipeline: the baseline cannot be predicted")
    stages = spec.stage_names
    base_json = {
        "total_cost_per_hour": price,
        "gpus": {family: 1},
        "workloads": [
            {
                "name": "e2e-baseline",
                "topology": "[" + "+".join(SHORT[s] for s in stages) + "]",
                "cost_per_hour": price,
                "cost_per_image": price / 3600.0 * t1,
                "model": args.model,
                "groups": [{"stages": stages, "family": family, "recipes": dict.fromkeys(stages, "bf16"),
                            "batch": 1, "replicas": 1, "throughput": 1.0 / t1}],
            }
        ],
    }  # fmt: skip
    base = Config("baseline", "e2e-baseline", family, args.model, stages, dict.fromkeys(stages, "bf16"), 1,
                  1.0 / t1, None, base_json)  # fmt: skip
    return cfg, base, {"rate": rate, "steps": steps, "best_capacity": best, "options": options}


def store_and_activate(engine: Any, cfg: Config, *, height: int, width: int, steps: int, rate: float) -> int:
    from sqlalchemy import select

    from planner.crud import plans as crud_plans
    from planner.db import models as m
    from planner.db.session import session_scope
    from planner.schemas.plans import PlanResult

    now = datetime.now(UTC)
    with session_scope(engine) as s:
        fleet = s.scalar(select(m.Fleet).where(m.Fleet.name == FLEET))
        if fleet is None:
            fleet = m.Fleet(name=FLEET)
            s.add(fleet)
            s.flush()
        if not any(w.name == cfg.workload for w in fleet.workloads):
            fleet.workloads.append(
                m.Workload(name=cfg.workload, models=[cfg.model], height=height, width=width, steps=steps, rate=rate)
            )
            s.flush()
        result = PlanResult.model_validate(cfg.plan_json)
        plan = crud_plans.store_plan(s, fleet=fleet, result=result, inputs={"e2e": cfg.label}, now=now)
        crud_plans.activate(s, plan=plan, now=now)
        return plan.id


def submit(dispatcher: Any, engine: Any, workload: str, n: int, *, height: int, width: int, steps: int,
           tag: str) -> list[str]:  # fmt: skip
    from planner.crud.jobs import JobRequest
    from planner.db.session import session_scope

    ids = []
    with session_scope(engine) as s:
        for i in range(n):
            req = JobRequest(workload_name=workload, prompt=f"{tag} {i} a photo of a lighthouse at dusk",
                             seed=random.randrange(1 << 31), height=height, width=width, steps=steps)  # fmt: skip
            sub = dispatcher.submit(s, idempotency_key=f"{tag}-{i}-{uuid.uuid4().hex[:8]}", request=req)
            ids.append(sub.job.id)
    return ids


def job_times(engine: Any, ids: list[str]) -> list[tuple[str, float | None, float | None]]:
    """(state, created, finished) per job, as epoch seconds, from the job store."""
    from sqlalchemy import select

    from planner.db import models as m
    from planner.db.session import session_scope

    with session_scope(engine) as s:
        jobs = s.scalars(select(m.Job).where(m.Job.id.in_(ids))).all()
        return [(j.state, j.created_at.timestamp(), j.finished_at.timestamp() if j.finished_at else None) for j in jobs]


def served_rate(finished: list[float], *, batches: float) -> float:
    """Images/s a standing queue was served at: the completions after the first batch's, over the time since it.

    The first batch's completions (those within a quarter of a mean batch interval of the first one) mark the
    start: the worker was busy from then to the last completion. The first batch need not be full (it may
    start before every submission has reached the worker), so its size is read from the times, not assumed:
    counting the plan's batch instead would count images finished at the window's start as served in it.
    """
    if batches < 2:
        raise SystemExit(
            f"a standing queue of {batches:g} batch has no window after its first: raise --saturation-batches"
        )
    finished = sorted(finished)
    span = finished[-1] - finished[0]
    tol = 0.25 * span / max(batches - 1, 1)
    first = sum(1 for f in finished if f - finished[0] <= tol)
    start = finished[first - 1]
    if first == len(finished) or finished[-1] <= start:
        raise SystemExit(f"the standing queue finished as one batch ({len(finished)} jobs): raise --saturation-batches")
    return (len(finished) - first) / (finished[-1] - start)


def wait_done(engine: Any, ids: list[str], timeout_s: float) -> list[tuple[str, float | None, float | None]]:
    deadline = time.monotonic() + timeout_s
    while True:
        times = job_times(engine, ids)
        if all(state in ("done", "failed", "dead") for state, _, _ in times) and len(times) == len(ids):
            return times
        if time.monotonic() > deadline:
            counts: dict[str, int] = {}
            for state, _, _ in times:
                counts[state] = counts.get(state, 0) + 1
            raise SystemExit(f"jobs not finished after {timeout_s:.0f} s: {counts}")
        time.sleep(0.2)


def run_config(args: argparse.Namespace, cfg: Config, engine: Any, settings: Any, out: Path, *, height: int,
               width: int, steps: int, rate: float, planned_rate_phase: bool) -> dict[str, Any]:  # fmt: skip
    from scheduler.dispatch import Dispatcher

    plan_id = store_and_activate(engine, cfg, height=height, width=width, steps=steps, rate=rate)
    pool = f"{cfg.workload}.0.{cfg.family}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"SCHEDULER_{name.upper()}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    log_path = out / f"worker-{cfg.label}.log"
    cmd = [sys.executable, "-m", "scheduler", "worker", "--pool", pool, "--name", f"e2e-{cfg.label}@gpu"]
    worker = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    dispatcher = Dispatcher(settings, engine=engine)
    result: dict[str, Any] = {"label": cfg.label, "plan_id": plan_id, "pool": pool, "batch": cfg.batch,
                              "recipes": cfg.recipes, "predicted_throughput": cfg.predicted_throughput,
                              "predicted_p95_s": cfg.predicted_p95_s}  # fmt: skip
    try:
        t0 = time.monotonic()
        warm = submit(dispatcher, engine, cfg.workload, cfg.batch, height=height, width=width, steps=steps, tag="warm")
        wait_done(engine, warm, args.timeout_s)
        result["warmup_s"] = time.monotonic() - t0
        log(f"{cfg.label}: warm after {result['warmup_s']:.1f} s (model build, compile, first batch)")

        # Capacity: a standing queue of several batches; served images/s between the first and last completion.
        n = max(args.saturation_batches * cfg.batch, 6)
        ids = submit(dispatcher, engine, cfg.workload, n, height=height, width=width, steps=steps, tag="sat")
        times = wait_done(engine, ids, args.timeout_s)
        finished = sorted(f for st, _, f in times if st == "done" and f is not None)
        if len(finished) < 2 * cfg.batch:
            raise SystemExit(f"{cfg.label}: only {len(finished)} of {n} jobs done")
        achieved = served_rate(finished, batches=n / cfg.batch)
        result.update(saturation_jobs=n, achieved_throughput=achieved,
                      throughput_ratio=achieved / cfg.predicted_throughput,
                      saturation_finished_s=[round(f - finished[0], 4) for f in finished])  # fmt: skip
        log(f"{cfg.label}: served {achieved:.4f} images/s at saturation (predicted {cfg.predicted_throughput:.4f}, "
            f"ratio {achieved / cfg.predicted_throughput:.3f})")  # fmt: skip

        if planned_rate_phase:
            # Poisson arrivals at the planned rate; latency = stored result time - submission time.
            duration = max(args.rate_phase_s, 6 / rate)
            rng = random.Random(7)
            ids = []
            submitted_s: list[float] = []  # offsets of the submissions: benchmarks/p95_model.py replays them
            start = time.monotonic()
            next_at = start
            while next_at - start < duration:
                now = time.monotonic()
                if now < next_at:
                    time.sleep(next_at - now)
                submitted_s.append(round(time.monotonic() - start, 4))
                ids += submit(dispatcher, engine, cfg.workload, 1, height=height, width=width, steps=steps, tag="rate")
                next_at += rng.expovariate(rate)
            times = wait_done(engine, ids, args.timeout_s)
            lat = sorted(f - c for st, c, f in times if st == "done" and f is not None and c is not None)
            p95 = statistics.quantiles(lat, n=20)[-1] if len(lat) >= 20 else max(lat)
            result.update(rate=rate, rate_phase_jobs=len(ids), p95_s=p95, p50_s=statistics.median(lat),
                          rate_phase_latencies_s=[round(x, 4) for x in lat],
                          rate_phase_submitted_s=submitted_s)  # fmt: skip
            if cfg.predicted_p95_s:
                result["p95_ratio"] = p95 / cfg.predicted_p95_s
            if cfg.simulated_p95_s:
                result["simulated_p95_s"] = cfg.simulated_p95_s
                result["p95_simulated_ratio"] = p95 / cfg.simulated_p95_s
            log(f"{cfg.label}: {len(ids)} jobs at {rate} images/s: p50 {result['p50_s']:.2f} s, p95 {p95:.2f} s "
                f"(predicted {cfg.predicted_p95_s}, simulated {cfg.simulated_p95_s})")  # fmt: skip
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sdxl")
    p.add_argument("--steps", type=int, default=None, help="denoiser steps (default: the model's)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny configs (a CPU dry run)")
    p.add_argument("--probe-batches", default="1,8")
    p.add_argument("--rate-fraction", type=float, default=0.6, help="planned rate as a fraction of 1 GPU's best")
    p.add_argument("--headroom", type=float, default=0.2)
    p.add_argument("--saturation-batches", type=int, default=4)
    p.add_argument("--rate-phase-s", type=float, default=60.0)
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--redis-bin", type=Path, default=REPO / ".device/redis/bin/redis-server")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "e2e-out")))
    args = p.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="e2e-"))
    os.environ.setdefault("PLANNER_SEED_REFERENCE_DATA", "false" if args.tiny else "true")
    started = time.monotonic()
    redis_proc = start_redis(args.redis_port, args.redis_bin, workdir)
    try:
        from planner import catalog
        from planner.crud.measurements import import_rows
        from planner.crud.seed import seed
        from planner.db import migrate
        from planner.db.session import make_engine, session_scope
        from planner.measurements.csvio import LocatedRow
        from scheduler.config import SchedulerSettings

        url = f"sqlite:///{workdir / 'planner.db'}"
        migrate.upgrade(url)
        engine = make_engine(url)
        seed(engine, reference=not args.tiny)
        rows, family = probe(args, out)
        fam = catalog.gpu_families().get(family)
        price = fam.default_price.price_per_hour if fam and fam.default_price else 1.0
        memory = None if fam is not None else 16.0
        if fam is None:  # the CPU dry run: a family the store defines from the rows' memory
            rows = [r.model_copy(update={"gpu_memory_gib": memory}) for r in rows]
        with session_scope(engine) as s:
            import_rows(s, rows=[LocatedRow(i + 2, r) for i, r in enumerate(rows)], name="e2e-probe",
                        digest=uuid.uuid4().hex, kind="probe")  # fmt: skip
        spec = catalog.models()[args.model]
        height, width = (spec.tiny.height, spec.tiny.width) if args.tiny else (spec.height, spec.width)
        cfg, base, info = solve_plan(args, engine, rows, family, price, memory, (height, width))
        steps = info["steps"]
        log(f"plan: {cfg.stages} on {cfg.family}, recipes {cfg.recipes}, batch {cfg.batch}, predicted "
            f"{cfg.predicted_throughput:.4f} images/s, p95 {cfg.predicted_p95_s:.2f} s at rate {info['rate']}; "
            f"baseline bf16 b1 predicted {base.predicted_throughput:.4f} images/s")  # fmt: skip
        (out / "e2e-plan.json").write_text(json.dumps(cfg.plan_json, indent=1))
        settings = SchedulerSettings(
            broker_url=f"redis://127.0.0.1:{args.redis_port}/0",
            result_backend=f"redis://127.0.0.1:{args.redis_port}/0",
            database_url=url,
            key_prefix=f"e2e-{uuid.uuid4().hex[:6]}:",
            fleet=FLEET,
            results_dir=workdir / "results",
            intermediates_dir=workdir / "intermediates",
            device=args.device,
            tiny=args.tiny,
            routing_refresh_s=0.0,
            batch_wait_s=0.05,
            job_timeout_s=max(120.0, 4 * cfg.batch / cfg.predicted_throughput),
            visibility_timeout_s=max(600.0, 8 * cfg.batch / cfg.predicted_throughput),
        )
        results = [
            run_config(args, cfg, engine, settings, out, height=height, width=width, steps=steps,
                       rate=info["rate"], planned_rate_phase=True),
            run_config(args, base, engine, settings, out, height=height, width=width, steps=steps,
                       rate=info["rate"], planned_rate_phase=False),
        ]  # fmt: skip
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
    plan_r, base_r = results
    r1 = plan_r["throughput_ratio"]
    r2 = plan_r.get("p95_ratio", math.nan)
    r2_sim = plan_r.get("p95_simulated_ratio", math.nan)
    r3 = base_r["achieved_throughput"] / plan_r["achieved_throughput"]  # $/image = price / (3600 x served rate)
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "steps": steps,
        "family": family,
        "price_per_hour": price,
        "machine": machine(),
        "info": info,
        "plan": plan_r,
        "baseline": base_r,
        "cost_per_image_plan": price / 3600.0 / plan_r["achieved_throughput"],
        "cost_per_image_baseline": price / 3600.0 / base_r["achieved_throughput"],
        "ratios": {"throughput": r1, "p95": r2, "p95_simulated": r2_sim, "cost_per_image": r3},
        "elapsed_s": time.monotonic() - started,
    }
    (out / "e2e.json").write_text(json.dumps(summary, indent=1, default=str))
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"e2e: throughput achieved/predicted={r1:.3f} p95 achieved/predicted={r2:.3f} "
          f"p95 achieved/simulated={r2_sim:.3f} cost_per_image plan/baseline={r3:.3f}")  # fmt: skip
    return 0


def machine() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover
        pass
    return info


if __name__ == "__main__":
    sys.exit(main())
