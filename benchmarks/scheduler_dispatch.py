"""Scheduler dispatch benchmark: the routing decision, and no-op work through Redis at a set rate.

1. Routing decision: `scheduler.routing.decide` on a fleet-sized table (workloads x groups x families) with a
   live backlog. Aim: p99 under 1 ms.
2. Dispatch overhead: no-op tasks sent at `--rate` per second for `--seconds` by paced sender threads, each
   routed by `Dispatcher.route` (cached table, backlog snapshot reread from Redis) and published to its pool's
   queue in Redis, taken by a real `python -m scheduler worker` process (Celery thread pool, acks late, prefetch
   1). Latency = send start -> the task starts on the worker. Aim: p99 under 10 ms at 500/s.
3. Job path, for context: no-op jobs submitted at `--job-rate` per second through the whole path: the job store
   (PostgreSQL: insert, claim, result recorded), the router, Redis, the worker's batcher and result write.
   Latency = submission start -> result recorded, split into submit, pickup and finish.

Prints the percentiles, each aim's ratio (measured / aim: below 1 meets it) and the machine (CPU, cores, load:
these numbers move with what else runs). Needs the Redis and PostgreSQL of the test setup (127.0.0.1). Run from
the repository root:

    PYTHONPATH=. python benchmarks/scheduler_dispatch.py [--rate 500] [--seconds 10] [--job-rate 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.noop_fleet import add_service_args, noop_fleet, wait_for_jobs  # noqa: E402
from planner.crud import jobs as crud  # noqa: E402
from planner.db.session import session_factory  # noqa: E402
from scheduler.celery_app import PROBE  # noqa: E402
from scheduler.routing import Backlog, JobShape, Pool, RoutingTable, decide  # noqa: E402

DECISION_AIM_MS = 1.0
DISPATCH_AIM_MS = 10.0
FAMILIES = ["l4-24gb", "a100-80gb", "h100-sxm-80gb"]
TOPOLOGIES: list[list[tuple[str, ...]]] = [
    [("text_encoder", "denoiser", "vae_decoder")],
    [("text_encoder",), ("denoiser", "vae_decoder")],
    [("text_encoder", "denoiser"), ("vae_decoder",)],
    [("text_encoder",), ("denoiser",), ("vae_decoder",)],
]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def fleet_table(workloads: int = 8) -> RoutingTable:
    """A fleet-sized table: each workload a topology, each group on every family."""
    pools = []
    rng = random.Random(0)
    for w in range(workloads):
        topo = TOPOLOGIES[w % len(TOPOLOGIES)]
        for g, stages in enumerate(topo):
            for fam in FAMILIES:
                pools.append(
                    Pool(
                        pool=f"wl{w}.{g}.{fam}",
                        workload=f"wl{w}",
                        group_index=g,
                        model="sdxl",
                        stages=tuple(stages),
                        family=fam,
                        recipes={},
                        batch=8,
                        replicas=rng.randint(1, 8),
                        capacity=rng.uniform(1, 20),
                        weight=1.0,
                        ref_height=1024,
                        ref_width=1024,
                        ref_steps=30,
                    )
                )
    return RoutingTable(plan_id=1, version=1, pools=tuple(pools))


def bench_decision(n: int) -> dict[str, Any]:
    table = fleet_table()
    rng = random.Random(1)
    work: dict[str, float] = {p.pool: rng.uniform(0, 50) for p in table.pools}
    backlog = Backlog(work=work, unavailable=frozenset({table.pools[0].pool}))
    sizes = [512, 768, 1024, 1536, 2048]
    steps = [4, 20, 30, 50]
    jobs = [
        JobShape(uuid.uuid4().hex, f"wl{rng.randrange(8)}", rng.choice(sizes), rng.choice(sizes), rng.choice(steps))
        for _ in range(10_000)
    ]
    for job in jobs[:2000]:  # warm up
        decide(table, backlog, job)
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        job = jobs[i % len(jobs)]
        t0 = clock()
        route = decide(table, backlog, job)
        samples.append((clock() - t0) / 1e6)
        work[route.pools[0]] += route.work[0] * 1e-3  # the backlog moves as jobs are routed
    return {
        "pools": len(table.pools),
        "calls": n,
        "p50_ms": pct(samples, 50),
        "p99_ms": pct(samples, 99),
        "p999_ms": pct(samples, 99.9),
        "max_ms": max(samples),
    }


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50_ms": round(pct(values, 50), 3),
        "p90_ms": round(pct(values, 90), 3),
        "p99_ms": round(pct(values, 99), 3),
        "max_ms": round(max(values), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


def paced(n: int, rate: float, senders: int, send: Callable[[int], None]) -> float:
    """Call send(i) for i < n at `rate` per second from `senders` threads; returns the seconds it took."""
    start_at = time.perf_counter() + 0.05

    def lane(k: int) -> None:
        for i in range(k, n, senders):
            delay = start_at + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            send(i)

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start_at


def bench_dispatch(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with noop_fleet(
        redis_url=args.redis_url,
        postgres_admin_url=args.postgres_admin_url,
        work_dir=work_dir,
        workers=args.workers,
        batch=args.batch,
        rate=500,
        capacity=1000.0,
        replicas=1,
        worker_args=["--noop-ms", "0", "--concurrency", str(args.concurrency)],
        engine_pool_size=args.senders + 4,
        keep=args.keep,
        batch_wait_s=0.0,
        job_timeout_s=30,
        visibility_timeout_s=120,
    ) as fleet:
        settings, engine, dispatcher, client, prefix = (
            fleet.settings,
            fleet.engine,
            fleet.dispatcher,
            fleet.client,
            fleet.prefix,
        )

        # 2. The dispatch path: route + publish to Redis + a worker takes it.
        route_ms: list[float] = []

        def send_probe(run: str) -> Callable[[int], None]:
            def send(i: int) -> None:
                sent_at = time.time()
                t0 = time.perf_counter()
                route = dispatcher.route(JobShape(f"{run}-{i}", "noop", 64, 64, 1))
                route_ms.append((time.perf_counter() - t0) * 1000)
                dispatcher.app.signature(
                    PROBE, args=({"run": run, "sent_at": sent_at},), queue=settings.queue_name(route.pools[0])
                ).apply_async()

            return send

        paced(min(500, args.rate), args.rate, args.senders, send_probe("warm"))
        route_ms.clear()
        n = int(args.rate * args.seconds)
        send_s = paced(n, args.rate, args.senders, send_probe("run"))
        key = f"{prefix}probe:run"
        client.expire(key, 3600)
        deadline = time.monotonic() + 60
        while client.llen(key) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = [json.loads(r) for r in client.lrange(key, 0, -1)]
        out["dispatch"] = {
            "rate_target": args.rate,
            "rate_sent": round(n / send_s, 1),
            "sent": n,
            "started": len(rows),
            "latency": summary([(started - sent) * 1000 for sent, started in rows]),
            "route": summary(route_ms),
        }

        # 3. The job path: the job store, routing, Redis, the worker, the result.
        if args.job_rate > 0:
            results: list[tuple[str, float, float]] = []
            sessions = session_factory(engine)
            local = threading.local()

            def submit(i: int) -> None:
                if not hasattr(local, "session"):
                    local.session = sessions()
                wall = time.time()
                t0 = time.perf_counter()
                req = crud.JobRequest(workload_name="noop", prompt=f"job {i}", seed=i, height=64, width=64, steps=1)
                job = dispatcher.submit(local.session, idempotency_key=uuid.uuid4().hex, request=req).job
                results.append((job.id, wall, time.perf_counter() - t0))

            paced(min(200, args.job_rate), args.job_rate, args.senders, submit)  # warm up
            results.clear()
            jobs_n = int(args.job_rate * args.seconds)
            job_send_s = paced(jobs_n, args.job_rate, args.senders, submit)
            stamps = wait_for_jobs(engine, [r[0] for r in results])
            e2e, submit_ms, pickup, finish = [], [], [], []
            for job_id, wall, submit_s in results:
                if job_id not in stamps:
                    continue
                started_at, finished_at = stamps[job_id]
                e2e.append((finished_at.timestamp() - wall) * 1000)
                submit_ms.append(submit_s * 1000)
                pickup.append((started_at.timestamp() - wall) * 1000 - submit_s * 1000)
                finish.append((finished_at - started_at).total_seconds() * 1000)
            out["jobs"] = {
                "rate_target": args.job_rate,
                "rate_sent": round(jobs_n / job_send_s, 1),
                "jobs": jobs_n,
                "done": len(e2e),
                "end_to_end": summary(e2e),
                "submit": summary(submit_ms),
                "pickup": summary(pickup),
                "finish": summary(finish),
            }
        out["config"] = {
            "senders": args.senders,
            "workers": args.workers,
            "worker_threads": args.concurrency,
            "batch": args.batch,
        }
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=500, help="no-op tasks per second through the dispatch path")
    parser.add_argument(
        "--job-rate", type=int, default=100, help="no-op jobs per second through the job path (0: skip)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to submit at that rate")
    parser.add_argument("--decisions", type=int, default=200_000, help="routing decisions to time")
    parser.add_argument("--senders", type=int, default=4, help="submitting threads")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (replicas) serving the pool")
    parser.add_argument("--concurrency", type=int, default=8, help="job threads per worker")
    parser.add_argument("--batch", type=int, default=16, help="the pool's batch")
    add_service_args(parser)
    parser.add_argument("--skip-dispatch", action="store_true", help="time the routing decision only")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    out: dict[str, Any] = {"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    decision = bench_decision(args.decisions)
    out["decision"] = decision
    print(f"machine: {out['machine']}; command: {' '.join(sys.argv)}")
    print(
        f"routing decision ({decision['pools']} pools, {decision['calls']} calls): "
        f"p50 {decision['p50_ms'] * 1000:.1f} us, "
        f"p99 {decision['p99_ms'] * 1000:.1f} us, p99.9 {decision['p999_ms'] * 1000:.1f} us; "
        f"p99 / aim {DECISION_AIM_MS:g} ms = {decision['p99_ms'] / DECISION_AIM_MS:.4f}"
    )
    if not args.skip_dispatch:
        with tempfile.TemporaryDirectory(prefix="sched-bench-") as tmp:
            out.update(bench_dispatch(args, Path(tmp)))
        print(f"config: {out['config']}")
        d = out["dispatch"]
        lat = d["latency"]
        print(
            f"dispatch ({d['started']}/{d['sent']} no-op tasks at {d['rate_sent']}/s, target {d['rate_target']}/s): "
            f"send -> start on the worker p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms, "
            f"p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.2f} ms; p99 / aim {DISPATCH_AIM_MS:g} ms = "
            f"{lat['p99_ms'] / DISPATCH_AIM_MS:.2f}  (route p99 {d['route']['p99_ms']:.3f} ms)"
        )
        if "jobs" in out:
            j = out["jobs"]
            e2e = j["end_to_end"]
            print(
                f"job path ({j['done']}/{j['jobs']} no-op jobs at {j['rate_sent']}/s, target {j['rate_target']}/s): "
                f"submit -> result recorded p50 {e2e['p50_ms']:.2f} ms, p99 {e2e['p99_ms']:.2f} ms, "
                f"max {e2e['max_ms']:.2f} ms; p99 / aim {DISPATCH_AIM_MS:g} ms = {e2e['p99_ms'] / DISPATCH_AIM_MS:.2f}"
            )
            for part in ("submit", "pickup", "finish"):
                v = j[part]
                print(f"  {part:7s} p50 {v['p50_ms']:.2f} ms  p99 {v['p99_ms']:.2f} ms  mean {v['mean_ms']:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
