"""The pools a worker serves and their stage groups on its GPU: which pools, what the plan says each is, and
the loaded (and warmed) modules that run their batches.

Several pools packed on one GPU share a model cache: a group that does not fit with the others is swapped in
when its batch comes. A pool whose model cannot be built here is refused (its jobs are left to other workers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from planner import catalog
from planner.core.batching import BatchingPolicy, shape_batches
from planner.core.errors import ConfigError
from scheduler.batching import BatchKey
from scheduler.config import SchedulerSettings
from scheduler.metrics import WorkerMetrics
from scheduler.model_cache import ModelCache
from scheduler.routing import Pool, job_work
from scheduler.stages import BuildStage, GroupRunner, GroupSpec, Item
from stagekit.errors import UnsupportedModelError

log = logging.getLogger("scheduler.worker")

WARM_STEPS = 3
"""Steps of a warm-up batch: enough for a step cache's full and cached steps, short of a whole image."""


class WorkerPools:
    """The pools this worker serves (`served`, by name), those it refused and why, and their stage groups."""

    def __init__(
        self,
        settings: SchedulerSettings,
        pools: Sequence[Pool],
        *,
        name: str,
        concurrency: int,
        build_stage: BuildStage,
        metrics: WorkerMetrics,
    ) -> None:
        if not pools:
            raise ConfigError("a worker needs at least one pool; pass --pool NAME")
        self.settings = settings
        self.name = name
        self.served = {p.pool: p for p in pools}
        self.refused: dict[str, str] = {}  # pool -> why this worker does not serve it
        self.concurrency = concurrency
        self.build_stage = build_stage
        self.metrics = metrics
        self.batching = settings.batching(None)
        """The batching policy in force (the plan's, under this worker's own settings): `follow_batching`."""
        self.cache: ModelCache[GroupSpec, GroupRunner] = ModelCache(
            settings.model_cache_size, load=self._load, unload=GroupRunner.unload
        )

    # Which pools.

    def check_models(self) -> None:
        """Check each pool's model folder before any queue is taken (a builder with a `check`): a pool whose model
        is missing or broken is refused, the others served."""
        check = getattr(self.build_stage, "check", None)
        if check is None:
            return
        for pool in list(self.served):
            try:
                source = check(self.served[pool].model)
                where = f" from {source.folder}" if source.folder else " (random: --synthetic)"
                log.info("pool %s: model %s, weights=%s%s", pool, source.model, source.weights, where)
            except UnsupportedModelError as exc:
                self.refuse(pool, str(exc))

    def preload(self) -> None:
        """Load and warm the groups the cache holds at once, before any job waits on them."""
        for pool in list(self.served)[: self.settings.model_cache_size]:
            try:
                self.prepare(BatchKey(pool, 0, 0, None))
            except UnsupportedModelError as exc:  # weights that do not load (a corrupt file, a bad tokenizer)
                self.refuse(pool, str(exc))

    def refuse(self, pool: str, why: str) -> None:
        """Serve no jobs of this pool: its model cannot be built here (the reason is logged and kept)."""
        self.served.pop(pool, None)
        self.refused[pool] = why
        log.error("pool %s refused: this worker takes none of its jobs: %s", pool, why)

    def follow(self, planned: Pool, plan_id: int | None) -> None:
        """Serve what the plan in force says a pool is: a new plan may give a pool name other stages, recipes or
        batch, and a worker started under the old one would otherwise keep running the old configuration.

        The next batch loads the new stage group (the model cache swaps it in); the batch limit follows at once.
        """
        current = self.served[planned.pool]
        before = (current.model, current.stages, dict(current.recipes), current.batch)
        after = (planned.model, planned.stages, dict(planned.recipes), planned.batch)
        if before == after:
            if current != planned:
                self.served[planned.pool] = planned  # capacity, weight, planned image: drift and metrics follow
            return
        log.warning(
            "pool %s changed in plan %s: %s %s %s batch %d -> %s %s %s batch %d; serving the new configuration",
            planned.pool,
            plan_id,
            *(before[0], "+".join(before[1]), before[2], before[3]),
            *(after[0], "+".join(after[1]), after[2], after[3]),
        )
        self.served[planned.pool] = planned

    def follow_batching(self, planned: BatchingPolicy | None, plan_id: int | None) -> BatchingPolicy:
        """Run the batching policy the plan in force was simulated with (unless this worker's settings say
        otherwise); the next group loaded or warmed compiles the new sizes."""
        policy = self.settings.batching(planned)
        if policy != self.batching:
            log.warning("plan %s: batching %s -> %s", plan_id, self.batching, policy)
            if planned is not None and policy != planned:
                log.warning("plan %s was simulated with %s; this worker's settings override it", plan_id, planned)
            self.batching = policy
        return policy

    # What the plan says of a pool.

    def group_spec(self, pool: str) -> GroupSpec:
        p = self.served[pool]
        return GroupSpec(p.model, p.stages, tuple(sorted(p.recipes.items())), self.settings.tiny, self.settings.device)

    def max_batch(self, pool: str) -> int:
        """The plan's batch, capped by the setting and by the task threads (a batch never outgrows them: a plan
        that raised the batch after start would otherwise never fill one)."""
        batch = min(self.served[pool].batch, self.concurrency)
        return min(batch, self.settings.max_batch) if self.settings.max_batch else batch

    def work_of(self, key: BatchKey) -> float:
        """One item's work in its pool's planned images (drift compares work, not images, with the plan)."""
        return job_work(self.served[key.pool], key.height, key.width, key.steps)

    def warm_shape(self, pool: str) -> tuple[int, int, int]:
        """(height, width, steps) of a pool's warm-up batches: its planned image (the tiny shape in a tiny worker),
        at a few steps (a compiled graph is the same at every step)."""
        p = self.served[pool]
        spec = catalog.models()[p.model]
        if self.settings.tiny:
            height, width = spec.tiny.height, spec.tiny.width
        else:
            height, width = p.ref_height or spec.height, p.ref_width or spec.width
        return height, width, min(WARM_STEPS, p.ref_steps or spec.default_steps)

    # The stage groups on the GPU.

    def _load(self, spec: GroupSpec) -> GroupRunner:
        log.info("loading %s %s (recipes %s)", spec.model, "+".join(spec.stages), dict(spec.recipes))
        return GroupRunner.build(spec, self.build_stage)

    def _warm(self, runner: GroupRunner, pool: str) -> float:
        """Compile the group's static-shape stages at every batch size it will run (before jobs wait on it)."""
        runner.batch_sizes = shape_batches(self.max_batch(pool), self.batching.compiled_batches)
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

    def prepare(self, key: BatchKey) -> float:
        """Load the pool's group (a swap) and warm it; the seconds count as swap time, not as busy time."""
        runner, load_s = self.cache.get(self.group_spec(key.pool))
        seconds = load_s + self._warm(runner, key.pool)
        if load_s > 0:
            self.metrics.swaps.labels(self.name).inc()
        if seconds > 0:
            self.metrics.swap_seconds.labels(self.name).inc(seconds)
        return seconds

    def run_batch(self, key: BatchKey, items: Sequence[Item]) -> Sequence[Item]:
        """One batch on the GPU thread."""
        runner, _ = self.cache.get(self.group_spec(key.pool))
        self.metrics.batch_size.labels(key.pool).observe(len(items))
        return runner.run(items)

    def runner_of(self, pool: str) -> GroupRunner | None:
        """The pool's group if it is loaded (a task thread's CPU work uses it; it never loads one)."""
        return self.cache.peek(self.group_spec(pool))
