"""The batching simulation against the real scheduler: no-op stages with a batch-dependent time, real workers.

    PYTHONPATH=. python benchmarks/p95_scheduler.py [--workers 1,2] [--loads 0.5,0.8] [--jobs 400]

`planner.solver.simulate` (benchmarks/p95_model.py) stands for the workers' batching in the p95 comparison;
this checks it against the scheduler itself, without a GPU: `python -m scheduler worker` processes (Celery on
Redis, the job store on PostgreSQL, the worker's batcher) serve one pool whose three stages are no-op stages
that sleep `ms + item_ms x n` per batch of n (`scheduler.stages.NoopStage`), so a batch of n takes
S(n) = 3 (ms + item_ms n) ms. Jobs are submitted through the dispatcher at Poisson times at a load (the rate
over the pool's full-batch capacity c b / S(b)); a job's latency is submission -> result recorded. For each run
it prints the measured p50/p95 and mean batch (the workers' Prometheus histogram), the simulation replaying the
run's own submission times (same curve, replicas, batch and `batch_wait_s`), the simulated long-run p95 (20,000
Poisson jobs) and the analytic p95 (`planner.solver.latency.pool_p95_s`), with their ratios, and the machine.

The simulation shares one queue among the replicas; the real workers each reserve jobs from the pool's Redis
queue (Celery prefetch) and batch what they hold, which the runs with several workers test. Needs the Redis
and PostgreSQL of the test setup (127.0.0.1).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from functools import partial
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.noop_fleet import STAGES, add_service_args, noop_fleet, wait_for_jobs  # noqa: E402
from benchmarks.scheduler_dispatch import machine  # noqa: E402
from planner.crud import jobs as crud  # noqa: E402
from planner.db.session import session_factory  # noqa: E402
from planner.solver.latency import pool_p95_s  # noqa: E402
from planner.solver.simulate import simulate_pool  # noqa: E402
from scheduler.stages import NoopStage  # noqa: E402


def service_s(n: int, ms: float, item_ms: float) -> float:
    """One batch of the pool's three no-op stages."""
    return len(STAGES) * NoopStage("x", ms, item_ms=item_ms).busy_s(n)


def run_load(args: argparse.Namespace, workers_n: int, load: float, work_dir: Path) -> dict[str, float]:
    """One pool of `workers_n` worker processes at `load`; returns measured and predicted p95s."""
    full_s = service_s(args.batch, args.ms, args.item_ms)
    rate = load * workers_n * args.batch / full_s
    with noop_fleet(
        redis_url=args.redis_url,
        postgres_admin_url=args.postgres_admin_url,
        work_dir=work_dir,
        workers=workers_n,
        batch=args.batch,
        rate=rate,
        capacity=workers_n * args.batch / full_s,
        replicas=workers_n,
        worker_args=["--noop-ms", str(args.ms), "--noop-item-ms", str(args.item_ms)],
        name="p95",
        engine_pool_size=args.senders + 4,
        metrics_port=args.metrics_port,  # each worker's batch-size histogram
        job_timeout_s=120,
        visibility_timeout_s=300,
    ) as fleet:
        settings, engine, dispatcher, ports = fleet.settings, fleet.engine, fleet.dispatcher, fleet.metrics_ports
        rng = random.Random(7)
        gaps = [rng.expovariate(rate) for _ in range(args.jobs)]
        due = np.cumsum(gaps)
        submitted: list[tuple[str, float]] = []
        lock = threading.Lock()
        sessions = session_factory(engine)
        nxt = [0]
        start_at = time.perf_counter() + 0.2

        def lane() -> None:
            with sessions() as session:
                while True:
                    with lock:
                        i = nxt[0]
                        nxt[0] += 1
                    if i >= args.jobs:
                        return
                    delay = start_at + float(due[i]) - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    wall = time.time()
                    req = crud.JobRequest(workload_name="noop", prompt=f"job {i}", seed=i, height=64, width=64, steps=1)
                    job = dispatcher.submit(session, idempotency_key=uuid.uuid4().hex, request=req).job
                    with lock:
                        submitted.append((job.id, wall))

        lanes = [threading.Thread(target=lane) for _ in range(args.senders)]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join()
        stamps = wait_for_jobs(engine, [i for i, _ in submitted])
        runs = sorted((wall, stamps[i]) for i, wall in submitted if i in stamps)  # in arrival order
        walls = np.array([wall for wall, _ in runs], dtype=np.float64)
        latency = np.array([end.timestamp() - wall for wall, (_, end) in runs], dtype=np.float64)[args.skip :]
        pickup = np.array([start.timestamp() - wall for wall, (start, _) in runs], dtype=np.float64)[args.skip :]
        images = batches = 0.0
        for port in ports:
            for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
                if line.startswith("scheduler_batch_size_images_sum"):
                    images += float(line.rsplit(" ", 1)[1])
                elif line.startswith("scheduler_batch_size_images_count"):
                    batches += float(line.rsplit(" ", 1)[1])

        def curve(n: int) -> float:
            return service_s(n, args.ms, args.item_ms)

        wait_s = settings.batching(None).batch_wait_s
        pool = partial(simulate_pool, rate=rate, servers=workers_n, batch=args.batch, service_s=curve, wait_s=wait_s)
        # the run's own arrivals (a sample path's p95 moves a lot at a few hundred jobs), and the long run
        replay = pool(arrivals=(walls - walls[0]).tolist(), warmup_jobs=args.skip)
        poisson = pool()
        analytic = pool_p95_s(
            rate, np.array([args.batch]), np.array([full_s]), np.array([full_s]), np.array([workers_n])
        )
        return {
            "rate": rate,
            "done": float(len(runs)),
            "p50": float(np.percentile(latency, 50)),
            "p95": float(np.percentile(latency, 95)),
            "pickup_p95": float(np.percentile(pickup, 95)),
            "batch": images / batches if batches else float("nan"),
            "replay_p50": replay.p50_s,
            "replay_p95": replay.p95_s,
            "replay_batch": replay.mean_batch,
            "poisson_p95": poisson.p95_s,
            "analytic": float(analytic[0]),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker processes (replicas) per run, comma-separated")
    parser.add_argument("--loads", default="0.5,0.8", help="rate over full-batch capacity, comma-separated")
    parser.add_argument("--jobs", type=int, default=400, help="jobs per run")
    parser.add_argument("--skip", type=int, default=20, help="first jobs left out (the queue starts empty)")
    parser.add_argument("--batch", type=int, default=8, help="the pool's batch")
    parser.add_argument("--ms", type=float, default=20.0, help="ms per stage call")
    parser.add_argument("--item-ms", type=float, default=20.0, help="ms more per item per stage call")
    parser.add_argument("--senders", type=int, default=2, help="submitting threads")
    parser.add_argument("--metrics-port", type=int, default=19400, help="first worker's Prometheus port")
    add_service_args(parser)
    args = parser.parse_args()
    full_s = service_s(args.batch, args.ms, args.item_ms)
    fixed = len(STAGES) * args.ms / 1000 / full_s
    print(f"machine: {machine()}; command: {' '.join(sys.argv)}")
    print(
        f"pool: batch {args.batch}, S(n) = 3 x ({args.ms:g} + {args.item_ms:g} n) ms: S(1) "
        f"{service_s(1, args.ms, args.item_ms):.3f} s, S({args.batch}) {full_s:.3f} s (fixed share {fixed:.2f})"
    )
    print(
        "| workers | load | rate /s | jobs | measured p50 s | measured p95 s (mean batch) | replayed p50 s | "
        "replayed p95 s (mean batch) | measured/replayed p95 | Poisson p95 s | analytic p95 s | analytic/measured |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workers_n in (int(w) for w in args.workers.split(",")):
        for load in (float(x) for x in args.loads.split(",")):
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="p95-bench-") as tmp:
                r = run_load(args, workers_n, load, Path(tmp))
            print(
                f"| {workers_n} | {load:.2f} | {r['rate']:.2f} | {r['done']:.0f} | {r['p50']:.3f} | "
                f"{r['p95']:.3f} ({r['batch']:.2f}) | {r['replay_p50']:.3f} | "
                f"{r['replay_p95']:.3f} ({r['replay_batch']:.2f}) | {r['p95'] / r['replay_p95']:.3f} | "
                f"{r['poisson_p95']:.3f} | {r['analytic']:.3f} | {r['analytic'] / r['p95']:.3f} |",
                flush=True,
            )
            print(
                f"  submission -> claimed by a worker p95 {r['pickup_p95'] * 1000:.0f} ms; "
                f"{time.monotonic() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
