"""The worker's monitor, every heartbeat: register the worker, publish what each pool achieved (the drift
samples), update the metrics, follow the plan in force, run the drift check, and sweep stale intermediates."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import redis
from sqlalchemy.orm import Session, sessionmaker

from planner.db.base import utcnow
from scheduler.batching import Batcher, BatcherStats, PoolStats
from scheduler.config import SchedulerSettings
from scheduler.drift import Sample, drift_decision, mark_plan_stale
from scheduler.intermediates import IntermediateStore
from scheduler.metrics import WorkerMetrics
from scheduler.routing import Pool, RoutingTable
from scheduler.state import SchedulerState
from scheduler.table import TableCache
from scheduler.worker.pools import WorkerPools

log = logging.getLogger("scheduler.worker")


def every(period_s: float, stop: threading.Event, step: Callable[[], None], *, what: str) -> threading.Thread:
    """A daemon thread that runs `step` every `period_s` until `stop` is set; a failing step is logged, not fatal
    (a Redis or store hiccup must not end it)."""

    def loop() -> None:
        while not stop.wait(period_s):
            try:
                step()
            except Exception:
                log.exception("%s failed", what)

    return threading.Thread(target=loop, name=what, daemon=True)


def _delta(cur: PoolStats | None, old: PoolStats | None) -> PoolStats:
    """Counters of one pool between two snapshots."""
    a, b = cur or PoolStats(), old or PoolStats()
    return PoolStats(
        images=a.images - b.images,
        batches=a.batches - b.batches,
        busy_s=a.busy_s - b.busy_s,
        full_work=a.full_work - b.full_work,
        full_busy_s=a.full_busy_s - b.full_busy_s,
    )


class Monitor:
    """What a worker reports and checks every heartbeat (`tick`; tests call it directly)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        name: str,
        pools: WorkerPools,
        batcher: Batcher,
        done_times: dict[str, deque[tuple[float, int]]],
        tables: TableCache,
        sessions: sessionmaker[Session],
        state: SchedulerState,
        client: redis.Redis,
        intermediates: IntermediateStore,
        metrics: WorkerMetrics,
        heartbeat: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.name = name
        self.pools = pools
        self.batcher = batcher
        self.done_times = done_times
        self.tables = tables
        self.sessions = sessions
        self.state = state
        self.redis = client
        self.intermediates = intermediates
        self.metrics = metrics
        self.heartbeat = heartbeat
        self._last_stats: BatcherStats | None = None
        self._last_tick = time.monotonic()
        self._busy_marks: deque[tuple[float, float]] = deque()

    def begin(self) -> None:
        """Take the first snapshot (the batcher's counters start here)."""
        self._last_stats = self.batcher.snapshot()
        self._last_tick = time.monotonic()
        self._busy_marks.append((self._last_tick, self._last_stats.busy_s))

    def tick(self) -> None:
        """One monitor pass."""
        self.heartbeat()
        now_mono = time.monotonic()
        stats = self.batcher.snapshot()
        prev = self._last_stats or stats
        interval = max(now_mono - self._last_tick, 1e-9)
        self._last_tick, self._last_stats = now_mono, stats
        busy_share = self._busy_share(now_mono, stats.busy_s)
        self.metrics.gpu_busy.labels(self.name).set(busy_share)
        table = self.follow_batching()
        for pool, p in list(self.pools.served.items()):
            planned = table.get(pool) or p
            self.pools.follow(planned, table.plan_id)
            delta = _delta(stats.pools.get(pool), prev.pools.get(pool))
            self._report_pool(planned, stats, delta, table.plan_id, now_mono)
            self._log_pool(planned, delta, interval, busy_share)
            if table.get(pool) is not None and table.plan_id is not None:
                self._check_drift(table.plan_id, planned, time.time())
        self.intermediates.sweep()

    def follow_batching(self) -> RoutingTable:
        """The table in force, its batching policy applied (the GPU thread's wait follows at once)."""
        table = self.tables.get()
        self.batcher.wait_s = self.pools.follow_batching(table.batching, table.plan_id).batch_wait_s
        return table

    def _report_pool(
        self, planned: Pool, stats: BatcherStats, delta: PoolStats, plan_id: int | None, now_mono: float
    ) -> None:
        """Publish the pool's drift sample and set its metrics: achieved and service rates, plan, queue depth."""
        pool = planned.pool
        if delta.full_busy_s > 0:
            sample = Sample(time.time(), delta.full_work, delta.full_busy_s)
            self.state.push_samples(pool, [sample], self.settings.drift_window_s, plan_id=plan_id)
        window_s = self.settings.throughput_window_s
        done = self.done_times.setdefault(pool, deque())
        while done and done[0][0] < now_mono - window_s:
            done.popleft()
        achieved = sum(n for _, n in done) / (min(window_s, now_mono - stats.started_at) or 1.0)
        self.metrics.throughput.labels(pool).set(achieved)
        cur = stats.pools.get(pool)
        if cur and cur.busy_s > 0:
            self.metrics.service_rate.labels(pool).set(cur.images / cur.busy_s)
        self.metrics.planned_rate.labels(pool).set(planned.replica_rate)
        if self.settings.broker_is_redis:
            queue = self.settings.key_prefix + self.settings.queue_name(pool)
            self.metrics.queue_depth.labels(pool).set(float(self.redis.llen(queue)))

    def _log_pool(self, planned: Pool, delta: PoolStats, interval: float, busy_share: float) -> None:
        if not delta.images:
            return
        log.info(
            "pool %s: %d images in %.1f s, %.3g per busy second (plan %.3g per replica), GPU busy %.0f%%",
            planned.pool,
            delta.images,
            interval,
            delta.images / delta.busy_s if delta.busy_s else 0.0,
            planned.replica_rate,
            100 * busy_share,
        )

    def _busy_share(self, now: float, busy_total: float) -> float:
        """Share of the last throughput window the GPU thread spent running batches."""
        marks = self._busy_marks
        marks.append((now, busy_total))
        while len(marks) > 2 and marks[1][0] <= now - self.settings.throughput_window_s:
            marks.popleft()
        t0, b0 = marks[0]
        return min(max((busy_total - b0) / (now - t0), 0.0), 1.0) if now > t0 else 0.0

    def _check_drift(self, plan_id: int, pool: Pool, now: float) -> None:
        """Mark the plan stale when this pool's service rate has departed from it for the whole window."""
        s = self.settings
        samples = self.state.samples(pool.pool, since=now - s.drift_window_s, plan_id=plan_id)
        verdict = drift_decision(
            planned_rate=pool.replica_rate,
            samples=samples,
            now=now,
            tolerance=s.drift_tolerance,
            window_s=s.drift_window_s,
            buckets=s.drift_buckets,
            min_busy_s=s.drift_min_busy_s,
            pool=pool.pool,
        )
        if not verdict.stale:
            return
        with self.sessions() as session:
            data = {**verdict.data, "worker": self.name}
            marked = mark_plan_stale(session, plan_id=plan_id, message=verdict.reason, data=data, now=utcnow())
            session.commit()
        if marked:
            log.warning("plan %d marked stale: %s", plan_id, verdict.reason)
