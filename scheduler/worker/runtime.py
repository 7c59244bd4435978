"""A worker process's runtime: the parts its task threads, its GPU thread, its monitor and its rebalancer share,
built once and started and stopped together.

- `WorkerPools` (scheduler.worker.pools): which pools it serves and their stage groups on the GPU;
- `Batcher` (scheduler.batching): the GPU thread running items in dynamic batches;
- `JobRunner` (scheduler.worker.jobs): one job's stage group in a Celery task thread;
- `Monitor` (scheduler.worker.monitor): heartbeat, metrics, drift samples and check, plan following;
- `RebalanceTurns` (scheduler.rebalance): a turn at moving jobs off lost hosts, on its own thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, Task
from sqlalchemy import Engine

from planner.db.session import make_engine, session_factory
from scheduler.batching import Batcher
from scheduler.celery_app import make_celery
from scheduler.config import SchedulerSettings
from scheduler.dispatch import Dispatcher
from scheduler.intermediates import make_intermediates
from scheduler.metrics import WorkerMetrics
from scheduler.rebalance import RebalanceTurns
from scheduler.results import DirectoryResults
from scheduler.routing import Pool
from scheduler.stages import BuildStage, default_build_stage
from scheduler.state import SchedulerState, WorkerInfo
from scheduler.table import DbTableSource, TableCache
from scheduler.tasks import register as register_tasks
from scheduler.worker.jobs import JobRunner
from scheduler.worker.monitor import Monitor, every
from scheduler.worker.pools import WorkerPools


class WorkerRuntime:
    """Everything a worker process shares between its task threads, its GPU thread, its monitor and rebalancer."""

    def __init__(
        self,
        settings: SchedulerSettings,
        pools: Sequence[Pool],
        *,
        name: str,
        concurrency: int,
        build_stage: BuildStage = default_build_stage,
        app: Celery | None = None,
        engine: Engine | None = None,
        client: redis.Redis | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.metrics = metrics or WorkerMetrics()
        self.pools = WorkerPools(
            settings, pools, name=name, concurrency=concurrency, build_stage=build_stage, metrics=self.metrics
        )
        self.app = app or make_celery(settings)
        self.engine = engine or make_engine(settings.database_url, pool_size=concurrency + 4, max_overflow=concurrency)
        self.sessions = session_factory(self.engine)
        self.redis = client or redis.Redis.from_url(settings.state_redis_url)
        self.key_prefix = settings.key_prefix
        self.state = SchedulerState(self.redis, settings.key_prefix)
        self.intermediates = make_intermediates(settings, self.redis)
        self.batcher = Batcher(
            self.pools.run_batch,
            max_batch=self.pools.max_batch,
            wait_s=self.pools.batching.batch_wait_s,
            max_waiting=concurrency,
            prepare_key=self.pools.prepare,
            work_of=self.pools.work_of,
        )
        self.jobs = self._job_runner()
        self.monitor = self._monitor()
        self.rebalancer = RebalanceTurns(
            lambda: Dispatcher(settings, app=self.app, sessions=self.sessions, client=self.redis),
            holder=name,
            lock_s=settings.heartbeat_s * 4,
        )
        register_tasks(self.app, self)  # this process runs them: senders publish by name
        self.ready = False
        self.started_at = time.time()  # jobs claimed under this name before it are a previous process's
        self._stop = threading.Event()
        self._threads = [every(settings.heartbeat_s, self._stop, self.monitor.tick, what="monitor")]
        if settings.rebalance_in_workers:
            self._threads.append(every(settings.heartbeat_s, self._stop, self.rebalance, what="rebalance"))

    def _job_runner(self) -> JobRunner:
        return JobRunner(
            self.settings,
            name=self.name,
            pools=self.pools,
            batcher=self.batcher,
            sessions=self.sessions,
            state=self.state,
            intermediates=self.intermediates,
            results=DirectoryResults(self.settings.results_dir),
            metrics=self.metrics,
        )

    def _monitor(self) -> Monitor:
        tables = TableCache(DbTableSource(self.sessions, self.settings.fleet), self.settings.routing_refresh_s)
        return Monitor(
            self.settings,
            name=self.name,
            pools=self.pools,
            batcher=self.batcher,
            done_times=self.jobs.done_times,
            tables=tables,
            sessions=self.sessions,
            state=self.state,
            client=self.redis,
            intermediates=self.intermediates,
            metrics=self.metrics,
            heartbeat=self._heartbeat,
        )

    def start(self, *, preload: bool = True) -> None:
        """Check the models, load and warm what fits, then start the GPU thread, metrics and the background."""
        self.pools.check_models()
        self.monitor.follow_batching()  # before any group is warmed: the sizes the plan's padding needs
        if preload:
            self.pools.preload()
        self.monitor.begin()
        self.batcher.start()
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port)
        self._heartbeat()
        for thread in self._threads:
            thread.start()

    def mark_ready(self) -> None:
        """Celery has taken the queues: say so in the registry (the benchmarks and tests wait for it)."""
        self.ready = True
        self._heartbeat()

    def stop(self) -> None:
        self._stop.set()
        self.batcher.stop()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self.state.remove_worker(self.name)
        self.pools.cache.clear()

    def run_task(self, task: Task[Any, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """The task body (scheduler.tasks): one job's stage group."""
        return self.jobs.run_task(task, payload)

    def tick(self) -> None:
        """One monitor pass (tests call it directly)."""
        self.monitor.tick()

    def rebalance(self) -> None:
        """Offer to take this heartbeat's rebalance pass."""
        self.rebalancer.take_turn(self.state)

    def _heartbeat(self) -> None:
        served = tuple(self.pools.served)
        info = WorkerInfo(
            self.name,
            self.settings.host_id,
            served,
            time.time(),
            os.getpid(),
            self.ready,
            self.started_at,
            dict(self.pools.refused),
        )
        self.state.heartbeat(info)
