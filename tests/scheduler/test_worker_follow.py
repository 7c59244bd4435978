"""A worker follows the plan in force: a pool name the next plan gives other stages, recipes or batch is served
with the new configuration (in-process runtime on the real store and Redis, no-op stages)."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import Engine

from planner.core.batching import BatchingPolicy
from planner.db import models as m
from planner.db.session import session_scope
from scheduler.config import SchedulerSettings
from scheduler.stages import noop_builder
from tests.scheduler.conftest import PoolDef, create_plan, in_process_worker

ALL = ["text_encoder", "denoiser", "vae_decoder"]


@pytest.mark.redis
def test_a_pool_the_next_plan_reconfigures_is_served_as_planned(
    settings: SchedulerSettings, engine: Engine, fleet_name: str, redis_client: redis.Redis
) -> None:
    first = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL, batch=4)
    runtime = in_process_worker(settings, engine, redis_client, first, noop_builder(0), name="follow@t", concurrency=32)
    runtime.start(preload=False)
    try:
        runtime.tick()
        assert runtime.pools.group_spec(first.name).stages == tuple(ALL)  # nothing changed yet
        second = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ["text_encoder"], batch=16, recipes={"text_encoder": "bf16"})
        rest = PoolDef("w1", 1, "l4-24gb", "sd15", ["denoiser", "vae_decoder"], batch=2)
        create_plan(engine, fleet_name, [second, rest])
        runtime.tick()
        spec = runtime.pools.group_spec(first.name)
        assert spec.stages == ("text_encoder",)
        assert dict(spec.recipes) == {"text_encoder": "bf16"}
        assert runtime.pools.max_batch(first.name) == min(16, settings.max_batch or 16)
    finally:
        runtime.stop()


@pytest.mark.redis
def test_a_worker_runs_the_batching_policy_its_plan_was_simulated_with(
    settings: SchedulerSettings, engine: Engine, fleet_name: str, redis_client: redis.Redis
) -> None:
    """The plan JSON's `batching` (its scenario's) reaches the worker through the routing table; a value the
    worker's own settings give (here the tests' SCHEDULER_BATCH_WAIT_S) overrides the plan's."""
    assert settings.compiled_batches is None  # the worker leaves the padding to the plan
    pool = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL, batch=4)
    runtime = in_process_worker(settings, engine, redis_client, pool, noop_builder(0), name="policy@t", concurrency=8)
    runtime.start(preload=False)
    try:
        assert runtime.pools.batching == BatchingPolicy(batch_wait_s=settings.batch_wait_s or 0.0)  # no policy yet
        plan_id = create_plan(engine, fleet_name, [pool])
        with session_scope(engine) as s:
            plan = s.get(m.Plan, plan_id)
            assert plan is not None
            plan.result = {"batching": {"compiled_batches": "plan", "batch_wait_s": 0.3}}
        runtime.tick()
        assert runtime.pools.batching.compiled_batches == "plan"
        assert runtime.pools.batching.batch_wait_s == settings.batch_wait_s  # the worker's own setting wins
        assert runtime.batcher.wait_s == settings.batch_wait_s
    finally:
        runtime.stop()
