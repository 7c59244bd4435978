"""`scheduler worker --pool P [--pool Q ...]`: read the pools from the plan in force, build the runtime, and run
Celery's thread pool with about twice the largest batch in threads until told to stop."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Sequence
from typing import Any

from celery.signals import worker_ready

from planner.core.errors import ConfigError
from planner.db.session import make_engine, session_factory
from scheduler.celery_app import make_celery
from scheduler.config import SchedulerSettings
from scheduler.routing import Pool
from scheduler.stages import BuildStage, default_build_stage
from scheduler.table import find_pool
from scheduler.worker.runtime import WorkerRuntime

log = logging.getLogger("scheduler.worker")


def default_worker_name(pools: Sequence[str]) -> str:
    return f"{pools[0]}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"


def planned_pools(settings: SchedulerSettings, pool_names: Sequence[str]) -> list[Pool]:
    """The named pools as the plan in force of the settings' fleet has them."""
    if not pool_names:
        raise ConfigError("a worker needs at least one pool; pass --pool NAME")
    engine = make_engine(settings.database_url)
    pools: list[Pool] = []
    try:
        with session_factory(engine)() as session:
            for pool_name in pool_names:
                pool = find_pool(session, fleet=settings.fleet, pool=pool_name)
                if pool is None:
                    raise ConfigError(
                        f"pool {pool_name!r} is in no plan of fleet {settings.fleet!r}; check SCHEDULER_FLEET and "
                        "the pool names of the plan in force (GET /v1/fleets/{fleet}/routing)"
                    )
                pools.append(pool)
    finally:
        engine.dispose()
    return pools


def run_worker(
    settings: SchedulerSettings,
    pool_names: Sequence[str],
    *,
    concurrency: int | None = None,
    name: str | None = None,
    build_stage: BuildStage = default_build_stage,
    loglevel: str = "INFO",
) -> int:
    """Run a worker until it is told to stop (SIGTERM / SIGINT); returns its exit code."""
    pools = planned_pools(settings, pool_names)
    largest = max(min(p.batch, settings.max_batch or p.batch) for p in pools)
    threads = concurrency or max(2, 2 * largest)
    name = name or default_worker_name(pool_names)
    app = make_celery(settings)
    runtime = WorkerRuntime(settings, pools, name=name, concurrency=threads, build_stage=build_stage, app=app)

    def _ready(**_: Any) -> None:
        runtime.mark_ready()

    worker_ready.connect(_ready, weak=False)
    runtime.start()
    served = list(runtime.pools.served)
    if not served:
        runtime.stop()
        reasons = "; ".join(f"{p}: {why}" for p, why in runtime.pools.refused.items())
        raise ConfigError(f"worker {name} can serve none of its pools: {reasons}")
    log.info("worker %s serving %s with %d threads", name, ", ".join(served), threads)
    worker = app.Worker(
        hostname=name,
        queues=[settings.queue_name(p) for p in served],
        pool_cls="threads",
        concurrency=threads,
        loglevel=loglevel,
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
        quiet=True,
    )
    try:
        worker.start()
    finally:
        runtime.stop()
    return int(getattr(worker, "exitcode", 0) or 0)
