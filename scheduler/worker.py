"""The worker: serves one or more pools' queues, runs their stage groups in dynamic batches, reports back.

A worker process (`scheduler worker --pool P [--pool Q ...]`) reads its pools' entries from the routing table
(model, stages, recipes, batch), builds each group's modules once (a model cache; several pools packed on one
GPU swap in and out when they do not all fit), and runs Celery's thread pool with about twice the largest batch
in threads. Each thread carries one job through: claim it in the job store (a guarded UPDATE: a job already
done is skipped), do its CPU work, wait for the GPU thread to run it in a batch, then write its result (or
its intermediate for the next group) and record it once. See scheduler.batching for the overlap.

Failures: a `JobError` ends the job (`failed`, or `dead` for the dead letter); any other exception is
retried with exponential backoff up to `max_retries`, then dead-lettered; a job delivered too many times (it
keeps killing workers) is dead-lettered at its next delivery.

A monitor thread, every heartbeat: registers the worker, publishes what each pool achieved (the drift samples),
updates the metrics, runs the drift check, and takes a turn at rebalancing (host lost, forgotten jobs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Retry
from celery.signals import worker_ready
from sqlalchemy import Engine

from planner import catalog
from planner.core.batching import shape_batches
from planner.core.errors import ConfigError
from planner.crud import jobs as crud
from planner.db.base import utcnow
from planner.db.session import make_engine, session_factory
from scheduler.batching import Batcher, BatcherStats, BatchKey
from scheduler.celery_app import make_celery
from scheduler.codec import encode_png
from scheduler.config import SchedulerSettings
from scheduler.dispatch import Dispatcher
from scheduler.drift import Sample, drift_decision, mark_plan_stale
from scheduler.intermediates import make_intermediates
from scheduler.metrics import WorkerMetrics
from scheduler.model_cache import ModelCache
from scheduler.rebalance import rebalance_once
from scheduler.results import DirectoryResults
from scheduler.routing import Pool, job_work
from scheduler.stages import BuildStage, GroupRunner, GroupSpec, Item, default_build_stage
from scheduler.state import SchedulerState, WorkerInfo
from scheduler.table import DbTableSource, TableCache, find_pool
from scheduler.tasks import register as register_tasks
from stagekit.errors import JobError, UnsupportedModelError

log = logging.getLogger("scheduler.worker")

WARM_STEPS = 3
"""Steps of a warm-up batch: enough for a step cache's full and cached steps, short of a whole image."""


class WorkerRuntime:
    """Everything a worker process shares between its task threads, its GPU thread and its monitor."""

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
        if not pools:
            raise ConfigError("a worker needs at least one pool; pass --pool NAME")
        self.settings = settings
        self.name = name
        self.pools = {p.pool: p for p in pools}
        self.concurrency = concurrency
        self.app = app or make_celery(settings)
        self.engine = engine or make_engine(settings.database_url, pool_size=concurrency + 4, max_overflow=concurrency)
        self.sessions = session_factory(self.engine)
        self.redis = client or redis.Redis.from_url(settings.state_redis_url)
        self.key_prefix = settings.key_prefix
        register_tasks(self.app, self)  # this process runs them: senders publish by name
        self.state = SchedulerState(self.redis, settings.key_prefix)
        self.intermediates = make_intermediates(settings, self.redis)
        self.results = DirectoryResults(settings.results_dir)
        self.metrics = metrics or WorkerMetrics()
        self.build_stage = build_stage
        self.cache: ModelCache[GroupSpec, GroupRunner] = ModelCache(
            settings.model_cache_size, load=self._load, unload=GroupRunner.unload
        )
        self.batcher = Batcher(
            self._run_batch,
            max_batch=self._max_batch,
            wait_s=settings.batch_wait_s,
            max_waiting=concurrency,
            prepare_key=self._prepare_key,
            work_of=self._work_of,
        )
        self.tables = TableCache(DbTableSource(self.sessions, settings.fleet), settings.routing_refresh_s)
        self.ready = False
        self.started_at = time.time()  # jobs claimed under this name before it are a previous process's
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._monitor_loop, name="monitor", daemon=True)
        self._last_stats: BatcherStats | None = None
        self._last_tick = time.monotonic()
        self._done_times: dict[str, deque[tuple[float, int]]] = {p: deque() for p in self.pools}
        self._busy_marks: deque[tuple[float, float]] = deque()
        self._dispatcher: Dispatcher | None = None
        self.refused: dict[str, str] = {}  # pool -> why this worker does not serve it

    # Lifecycle.

    def start(self, *, preload: bool = True) -> None:
        self.check_models()
        if preload:
            for pool in list(self.pools)[: self.settings.model_cache_size]:
                try:
                    self._prepare_key(BatchKey(pool, 0, 0, None))
                except UnsupportedModelError as exc:  # weights that do not load (a corrupt file, a bad tokenizer)
                    self.refuse(pool, str(exc))
        self._last_stats = self.batcher.snapshot()
        self._last_tick = time.monotonic()
        self._busy_marks.append((self._last_tick, self._last_stats.busy_s))
        self.batcher.start()
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port)
        self._heartbeat()
        self._monitor.start()

    def mark_ready(self) -> None:
        self.ready = True
        self._heartbeat()

    def stop(self) -> None:
        self._stop.set()
        self.batcher.stop()
        self._monitor.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self.state.remove_worker(self.name)
        self.cache.clear()

    # Pools and the GPU thread.

    def check_models(self) -> None:
        """Check each pool's model folder before any queue is taken (a builder with a `check`): a pool whose model
        is missing or broken is refused, the others served."""
        check = getattr(self.build_stage, "check", None)
        if check is None:
            return
        for pool in list(self.pools):
            try:
                source = check(self.pools[pool].model)
                where = f" from {source.folder}" if source.folder else " (random: --synthetic)"
                log.info("pool %s: model %s, weights=%s%s", pool, source.model, source.weights, where)
            except UnsupportedModelError as exc:
                self.refuse(pool, str(exc))

    def refuse(self, pool: str, why: str) -> None:
        """Serve no jobs of this pool: its model cannot be built here (the reason is logged and kept)."""
        self.pools.pop(pool, None)
        self.refused[pool] = why
        log.error("pool %s refused: this worker takes none of its jobs: %s", pool, why)

    def _follow(self, planned: Pool, plan_id: int | None) -> None:
        """Serve what the plan in force says a pool is: a new plan may give a pool name other stages, recipes or
        batch, and a worker started under the old one would otherwise keep running the old configuration.

        The next batch loads the new stage group (the model cache swaps it in); the batch limit follows at once.
        """
        current = self.pools[planned.pool]
        before = (current.model, current.stages, dict(current.recipes), current.batch)
        after = (planned.model, planned.stages, dict(planned.recipes), planned.batch)
        if before == after:
            if current != planned:
                self.pools[planned.pool] = planned  # capacity, weight, planned image: drift and metrics follow
            return
        log.warning(
            "pool %s changed in plan %s: %s %s %s batch %d -> %s %s %s batch %d; serving the new configuration",
            planned.pool,
            plan_id,
            *(before[0], "+".join(before[1]), before[2], before[3]),
            *(after[0], "+".join(after[1]), after[2], after[3]),
        )
        self.pools[planned.pool] = planned

    def group_spec(self, pool: str) -> GroupSpec:
        p = self.pools[pool]
        return GroupSpec(p.model, p.stages, tuple(sorted(p.recipes.items())), self.settings.tiny, self.settings.device)

    def _load(self, spec: GroupSpec) -> GroupRunner:
        log.info("loading %s %s (recipes %s)", spec.model, "+".join(spec.stages), dict(spec.recipes))
        return GroupRunner.build(spec, self.build_stage)

    def _max_batch(self, pool: str) -> int:
        """The plan's batch, capped by the setting and by the task threads (a batch never outgrows them: a plan
        that raised the batch after start would otherwise never fill one)."""
        batch = min(self.pools[pool].batch, self.concurrency)
        return min(batch, self.settings.max_batch) if self.settings.max_batch else batch

    def _work_of(self, key: BatchKey) -> float:
        """One item's work in its pool's planned images (drift compares work, not images, with the plan)."""
        return job_work(self.pools[key.pool], key.height, key.width, key.steps)

    def warm_shape(self, pool: str) -> tuple[int, int, int]:
        """(height, width, steps) of a pool's warm-up batches: its planned image (the tiny shape in a tiny worker),
        at a few steps (a compiled graph is the same at every step)."""
        p = self.pools[pool]
        spec = catalog.models()[p.model]
        if self.settings.tiny:
            height, width = spec.tiny.height, spec.tiny.width
        else:
            height, width = p.ref_height or spec.height, p.ref_width or spec.width
        return height, width, min(WARM_STEPS, p.ref_steps or spec.default_steps)

    def _warm(self, runner: GroupRunner, pool: str) -> float:
        """Compile the group's static-shape stages at every batch size it will run (before jobs wait on it)."""
        runner.batch_sizes = shape_batches(self._max_batch(pool), self.settings.compiled_batches)
        if not runner.to_warm():
            return 0.0
        height, width, steps = self.warm_shape(pool)
        started = time.monotonic()
        sizes = runner.warm(height=height, width=width, steps=steps)
        seconds = time.monotonic() - started
        log.info(
            "pool %s: compiled stages warmed at batches %s (%dx%d, %d steps) in %.1f s",
            *(pool, ",".join(map(str, sizes)), width, height, steps, seconds),
        )
        return seconds

    def _prepare_key(self, key: BatchKey) -> float:
        """Load the pool's group (a swap) and warm it; the seconds count as swap time, not as busy time."""
        runner, load_s = self.cache.get(self.group_spec(key.pool))
        seconds = load_s + self._warm(runner, key.pool)
        if load_s > 0:
            self.metrics.swaps.labels(self.name).inc()
        if seconds > 0:
            self.metrics.swap_seconds.labels(self.name).inc(seconds)
        return seconds

    def _run_batch(self, key: BatchKey, items: Sequence[Item]) -> Sequence[Item]:
        runner, _ = self.cache.get(self.group_spec(key.pool))
        self.metrics.batch_size.labels(key.pool).observe(len(items))
        return runner.run(items)

    # One job's group (runs in a Celery thread).

    def max_attempts(self, groups: int) -> int:
        return groups * (self.settings.max_deliveries + self.settings.max_retries)

    def run_task(self, task: Task[Any, Any], payload: dict[str, Any]) -> dict[str, Any]:
        job_id: str = payload["job_id"]
        g = int(payload["group"])
        route: list[str] = payload["route"]
        last = g == len(route) - 1
        pool = route[g]
        if pool not in self.pools:
            queue = (task.request.delivery_info or {}).get("routing_key") or ""
            pool = self.settings.pool_of_queue(queue)
        if pool not in self.pools:
            self._end(job_id, payload, f"worker {self.name} does not serve pool {route[g]!r}", dead=True, pool=route[g])
            raise Ignore()
        with self.sessions() as session:
            claim = crud.claim_job(
                session, job_id=job_id, worker=self.name, pool=pool, max_attempts=self.max_attempts(len(route))
            )
            session.commit()
            request = crud.job_request(session, job_id=job_id)
        if request is not None:  # what it generates comes from the job row, not from the broker's message
            payload = {**payload, **request}
        if claim is crud.Claim.MISSING:
            if task.request.retries < self.settings.max_retries:
                raise task.retry(countdown=self._backoff(task), max_retries=self.settings.max_retries)
            log.error("job %s is not in the job store; dropping its message", job_id)
            self._release(payload)
            raise Ignore()
        chain_id = f"{job_id}:{payload.get('dispatch_id', '')}"
        if claim is crud.Claim.FINISHED or (not last and self.state.group_done(chain_id, g)):
            self.metrics.jobs.labels(pool, "duplicate").inc()
            self._release(payload)
            raise Ignore()
        if claim is crud.Claim.EXHAUSTED:
            self._end(
                job_id,
                payload,
                f"delivered {self.max_attempts(len(route))} times without finishing "
                "(workers died or timed out running it)",
                dead=True,
                pool=pool,
            )
            raise Ignore()
        try:
            return self._run(job_id, g, last, pool, payload)
        except (Ignore, Retry):
            raise
        except JobError as exc:
            self._end(job_id, payload, f"{type(exc).__name__}: {exc}", dead=exc.dead, pool=pool)
            raise Ignore() from exc
        except Exception as exc:
            if task.request.retries >= self.settings.max_retries:
                self._end(
                    job_id,
                    payload,
                    f"failed {task.request.retries + 1} times; last: {type(exc).__name__}: {exc}",
                    dead=True,
                    pool=pool,
                )
                raise Ignore() from exc
            log.warning("job %s group %d: %s: %s; retrying", job_id, g, type(exc).__name__, exc)
            self.metrics.jobs.labels(pool, "retried").inc()
            raise task.retry(exc=exc, countdown=self._backoff(task), max_retries=self.settings.max_retries) from exc

    def _backoff(self, task: Task[Any, Any]) -> float:
        s = self.settings
        return float(min(s.retry_backoff_s * 2**task.request.retries, s.retry_backoff_max_s))

    def _run(self, job_id: str, g: int, last: bool, pool: str, payload: dict[str, Any]) -> dict[str, Any]:
        # CPU work before the GPU: the request's fields, or the previous group's intermediate.
        if g == 0:
            item: Item = {k: payload[k] for k in ("prompt", "negative_prompt", "seed", "height", "width", "steps")}
        else:
            item = self.intermediates.get(payload["input_ref"])
        runner = self.cache.peek(self.group_spec(pool))
        if runner is not None:
            item = runner.prepare(item)
        key = BatchKey(pool, int(payload["height"]), int(payload["width"]), payload.get("steps"))
        out = self.batcher.submit(key, item).result(timeout=self.settings.job_timeout_s)
        # CPU work after the GPU, overlapped with the next batch: the result, or the next group's input.
        if last:
            # the PNG says what made it: weights real or synthetic, the model, the seed
            weights = str(out.get("weights") or "unknown")
            meta = {"weights": weights, "model": self.pools[pool].model, "seed": str(payload.get("seed"))}
            rel, sha = self.results.write(job_id, encode_png(out["image"], text=meta))
            with self.sessions() as session:
                won = crud.complete_job(
                    session, job_id=job_id, result_path=rel, result_sha256=sha, worker=self.name, weights=weights
                )
                session.commit()
            if not won:
                self.results.delete(rel)
                self.metrics.jobs.labels(pool, "duplicate").inc()
                self._release(payload)
                raise Ignore()
            self.results.discard_others(job_id, rel)
            result: dict[str, Any] = {"job_id": job_id, "state": "done", "result_path": rel, "weights": weights}
            log.info("job %s done on pool %s: weights=%s", job_id, pool, weights)
            self.metrics.latency.labels(pool).observe(max(time.time() - float(payload["submitted_at"]), 0.0))
            outcome = "done"
        else:
            chain_id = f"{job_id}:{payload.get('dispatch_id', '')}"
            ref = self.intermediates.put(chain_id, g + 1, out)
            if not self.state.mark_group_done(chain_id, g, self.settings.intermediate_ttl_s):
                self.metrics.jobs.labels(pool, "duplicate").inc()
                self._release(payload)
                raise Ignore()
            result = {**payload, "group": g + 1, "input_ref": ref}
            outcome = "forwarded"
        if payload.get("input_ref"):
            self.intermediates.delete(payload["input_ref"])
        self.state.add_backlog({pool: -float(payload["work"][g])})
        self.metrics.jobs.labels(pool, outcome).inc()
        self._done_times[pool].append((time.monotonic(), 1))
        return result

    def _end(self, job_id: str, payload: dict[str, Any], error: str, *, dead: bool, pool: str) -> None:
        """End a job without a result: failed or dead-lettered; its remaining work leaves the backlogs."""
        with self.sessions() as session:
            ended = crud.fail_job(session, job_id=job_id, error=error, dead=dead)
            session.commit()
        self._release(payload)
        if not ended:
            return
        log.error("job %s %s: %s", job_id, "dead-lettered" if dead else "failed", error)
        if dead:
            self.state.dead_letter(job_id, error, payload)
        if payload.get("input_ref"):
            self.intermediates.delete(payload["input_ref"])
        self.metrics.jobs.labels(pool, "dead" if dead else "failed").inc()

    def _release(self, payload: dict[str, Any]) -> None:
        """Take a message's remaining work (its group and the chain behind it) off the backlogs.

        Every publish (a first dispatch, a resend, an evacuation's republish) adds its route's work, so every
        message that ends without running its chain on, a duplicate included, must take it off again; otherwise
        the backlogs only grow and the router steers away from pools that are in fact idle.
        """
        g = int(payload["group"])
        remaining: dict[str, float] = {}
        for p, w in zip(payload["route"][g:], payload["work"][g:], strict=True):
            remaining[p] = remaining.get(p, 0.0) - float(w)
        self.state.add_backlog(remaining)

    # The monitor.

    def _heartbeat(self) -> None:
        self.state.heartbeat(
            WorkerInfo(
                self.name,
                self.settings.host_id,
                tuple(self.pools),
                time.time(),
                os.getpid(),
                self.ready,
                self.started_at,
                dict(self.refused),
            )
        )

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                self.tick()
            except Exception:  # the monitor must outlive a Redis or store hiccup
                log.exception("monitor tick failed")

    def tick(self) -> None:
        """One monitor pass (tests call it directly)."""
        self._heartbeat()
        now_mono = time.monotonic()
        now = time.time()
        stats = self.batcher.snapshot()
        prev = self._last_stats or stats
        interval = max(now_mono - self._last_tick, 1e-9)
        self._last_tick, self._last_stats = now_mono, stats
        busy_share = self._busy_share(now_mono, stats.busy_s)
        self.metrics.gpu_busy.labels(self.name).set(busy_share)
        table = self.tables.get()
        for pool, p in self.pools.items():
            cur = stats.pools.get(pool)
            old = prev.pools.get(pool)
            images = (cur.images if cur else 0) - (old.images if old else 0)
            busy = (cur.busy_s if cur else 0.0) - (old.busy_s if old else 0.0)
            full_work = (cur.full_work if cur else 0.0) - (old.full_work if old else 0.0)
            full_busy = (cur.full_busy_s if cur else 0.0) - (old.full_busy_s if old else 0.0)
            if full_busy > 0:
                self.state.push_samples(
                    pool, [Sample(now, full_work, full_busy)], self.settings.drift_window_s, plan_id=table.plan_id
                )
            done = self._done_times[pool]
            while done and done[0][0] < now_mono - self.settings.throughput_window_s:
                done.popleft()
            window = min(self.settings.throughput_window_s, now_mono - stats.started_at) or 1.0
            self.metrics.throughput.labels(pool).set(sum(n for _, n in done) / window)
            if cur and cur.busy_s > 0:
                self.metrics.service_rate.labels(pool).set(cur.images / cur.busy_s)
            planned = table.get(pool) or p
            self._follow(planned, table.plan_id)
            self.metrics.planned_rate.labels(pool).set(planned.replica_rate)
            if images:
                log.info(
                    "pool %s: %d images in %.1f s, %.3g per busy second (plan %.3g per replica), GPU busy %.0f%%",
                    pool,
                    images,
                    interval,
                    images / busy if busy else 0.0,
                    planned.replica_rate,
                    100 * busy_share,
                )
            if self.settings.broker_is_redis:
                self.metrics.queue_depth.labels(pool).set(
                    float(self.redis.llen(self.settings.key_prefix + self.settings.queue_name(pool)))
                )
            if table.get(pool) is not None and table.plan_id is not None:
                self._check_drift(table.plan_id, planned, now)
        self.intermediates.sweep()
        self._rebalance()

    def _busy_share(self, now: float, busy_total: float) -> float:
        """Share of the last throughput window the GPU thread spent running batches."""
        marks = self._busy_marks
        marks.append((now, busy_total))
        while len(marks) > 2 and marks[1][0] <= now - self.settings.throughput_window_s:
            marks.popleft()
        t0, b0 = marks[0]
        return min(max((busy_total - b0) / (now - t0), 0.0), 1.0) if now > t0 else 0.0

    def _check_drift(self, plan_id: int, pool: Pool, now: float) -> None:
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
            marked = mark_plan_stale(
                session,
                plan_id=plan_id,
                message=verdict.reason,
                data={**verdict.data, "worker": self.name},
                now=utcnow(),
            )
            session.commit()
        if marked:
            log.warning("plan %d marked stale: %s", plan_id, verdict.reason)

    def _rebalance(self) -> None:
        if not self.state.try_lock("rebalance", self.settings.heartbeat_s * 4, self.name):
            return
        try:
            if self._dispatcher is None:
                self._dispatcher = Dispatcher(self.settings, app=self.app, sessions=self.sessions, client=self.redis)
            report = rebalance_once(self._dispatcher)
            if report.moved or report.redispatched:
                log.warning("rebalance: moved %s, resent %d", report.moved, report.redispatched)
        finally:
            self.state.unlock("rebalance", self.name)


def default_worker_name(pools: Sequence[str]) -> str:
    return f"{pools[0]}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"


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
    if not pool_names:
        raise ConfigError("a worker needs at least one pool; pass --pool NAME")
    engine_probe = make_engine(settings.database_url)
    pools: list[Pool] = []
    with session_factory(engine_probe)() as session:
        for pool_name in pool_names:
            pool = find_pool(session, fleet=settings.fleet, pool=pool_name)
            if pool is None:
                raise ConfigError(
                    f"pool {pool_name!r} is in no plan of fleet {settings.fleet!r}; check SCHEDULER_FLEET and "
                    "the pool names of the plan in force (GET /v1/fleets/{fleet}/routing)"
                )
            pools.append(pool)
    engine_probe.dispose()
    largest = max(min(p.batch, settings.max_batch or p.batch) for p in pools)
    threads = concurrency or max(2, 2 * largest)
    name = name or default_worker_name(pool_names)
    app = make_celery(settings)
    runtime = WorkerRuntime(settings, pools, name=name, concurrency=threads, build_stage=build_stage, app=app)

    def _ready(**_: Any) -> None:
        runtime.mark_ready()

    worker_ready.connect(_ready, weak=False)
    runtime.start()
    served = list(runtime.pools)
    if not served:
        runtime.stop()
        reasons = "; ".join(f"{p}: {why}" for p, why in runtime.refused.items())
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
