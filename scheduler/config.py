"""The scheduler's settings, declared once with types and defaults; read from `SCHEDULER_*` variables.

One settings object drives the Celery app (broker, result store, reliability options), the router (plan store,
table refresh), the workers (batching, model cache, intermediates, results) and the drift check. The checks
below refuse combinations that would break a guarantee rather than run with them: a visibility timeout shorter
than the longest job would hand a running job to a second worker.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from planner.core.batching import DEFAULT_BATCH_WAIT_S, DEFAULT_COMPILED_BATCHES, BatchingPolicy, CompiledBatches
from planner.core.config import default_data_dir, default_database_url
from planner.core.errors import ConfigError

MIB = 1024 * 1024


class SchedulerSettings(BaseSettings):
    """Scheduler settings. Environment variables: `SCHEDULER_<FIELD>` (e.g. `SCHEDULER_BROKER_URL`)."""

    model_config = SettingsConfigDict(env_prefix="SCHEDULER_", env_file=".env", extra="ignore")

    # Broker and result store: Redis by default; `amqp://...` switches the broker to RabbitMQ.
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (redis:// or amqp://)")
    result_backend: str = Field(default="redis://127.0.0.1:6379/0", description="Celery result store")
    redis_url: str | None = Field(
        default=None,
        description="Redis for the router's backlog counters, worker registry and intermediates; "
        "default: the broker URL when it is Redis",
    )
    key_prefix: str = Field(
        default="scheduler:",
        description="prefix of every Redis key the scheduler writes (kombu's global_keyprefix too), so several "
        "fleets or test runs share one Redis",
    )
    queue_prefix: str = Field(default="pool.", description="queue name = prefix + pool name")

    # Where plans and jobs live (the planner's store) and the planner API.
    database_url: str = Field(default_factory=default_database_url, description="the planner's store")
    planner_api_url: str = "http://127.0.0.1:8000"
    planner_token: SecretStr | None = Field(default=None, description="bearer token for the planner API")
    fleet: str = Field(default="default", description="the fleet whose active plan routes jobs")
    host_id: str | None = Field(default=None, description="the planner's id of the host this worker runs on")

    # Results and intermediates.
    results_dir: Path = Field(default_factory=lambda: default_data_dir() / "results")
    intermediates: Literal["redis", "directory"] = Field(
        default="redis", description="where split topologies pass embeddings and latents between groups"
    )
    intermediates_dir: Path = Field(default_factory=lambda: default_data_dir() / "intermediates")
    intermediate_max_bytes: int = Field(default=256 * MIB, gt=0, description="size bound of one intermediate")
    intermediate_ttl_s: float = Field(default=3600.0, gt=0, description="an unconsumed intermediate expires")

    # Reliability.
    job_timeout_s: float = Field(default=600.0, gt=0, description="the longest one stage group may run")
    visibility_timeout_s: float = Field(
        default=3600.0, gt=0, description="an unacknowledged job goes back to its queue after this (Redis broker)"
    )
    unacked_restore_interval_s: float = Field(
        default=10.0, gt=0, description="how often workers look for jobs of lost workers to restore"
    )
    max_retries: int = Field(default=5, ge=0, description="retries of a transient error before the dead letter")
    retry_backoff_s: float = Field(default=1.0, gt=0, description="first retry delay; doubles each retry")
    retry_backoff_max_s: float = Field(default=60.0, gt=0)
    max_deliveries: int = Field(
        default=5, ge=1, description="deliveries of one group of a job (worker crashes) before the dead letter"
    )
    dispatch_grace_s: float = Field(
        default=30.0, gt=0, description="a queued job with no dispatch record this old is dispatched again"
    )
    lost_after_s: float = Field(
        default=20.0,
        gt=0,
        description="a queued or running job unchanged this long whose message is nowhere in the broker is sent "
        "again (the Redis transport loses a message fetched by a worker killed in that very instant)",
    )

    # Routing.
    routing_refresh_s: float = Field(default=1.0, ge=0, description="how often the router checks the version")
    backlog_refresh_s: float = Field(default=0.1, ge=0, description="how often the router rereads backlogs")

    # Workers.
    device: str = Field(default="cuda", description="torch device of the worker's stages (cpu runs tiny models)")
    tiny: bool = Field(default=False, description="build stages from the catalog's tiny configs (CPU tests)")
    synthetic: bool = Field(
        default=False,
        description="serve models with no folder on random weights (timing only: images are noise); the folders "
        "come from --model-dir or GFP_MODEL_DIRS (docs/models.md)",
    )
    batch_wait_s: float | None = Field(
        default=None,
        ge=0,
        description=f"the longest a batch waits to fill up; default: the plan's `batching` (the scenario's), else "
        f"{DEFAULT_BATCH_WAIT_S} s. Set, it overrides the plan's (which was simulated with its own)",
    )
    max_batch: int | None = Field(default=None, ge=1, description="cap on the plan's batch (default: the plan's)")
    compiled_batches: CompiledBatches | None = Field(
        default=None,
        description="batch sizes a compiled (static-shape) stage runs at, each compiled when its group loads, "
        "before the worker takes jobs; a short batch is padded up to the next one. pow2: 1, 2, 4, ... and the "
        "plan's batch; plan: the plan's batch only; off: no padding (a new size compiles when first formed, "
        f"while its jobs wait). Default: the plan's `batching` (the scenario's), else {DEFAULT_COMPILED_BATCHES}; "
        "set, it overrides the plan's",
    )
    model_cache_size: int = Field(default=2, ge=1, description="stage groups resident on one GPU at once")
    heartbeat_s: float = Field(default=5.0, gt=0, description="worker registry, samples and drift check period")
    worker_lost_s: float = Field(
        default=15.0,
        gt=0,
        description="a worker silent this long is gone (three missed heartbeats); its running jobs are sent again",
    )
    rebalance_in_workers: bool = Field(
        default=True,
        description="workers take turns at the rebalance pass (moving jobs off lost hosts, resending lost ones) "
        "every heartbeat; false when `scheduler rebalance --loop` runs it as its own process",
    )
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus port (None: off)")
    throughput_window_s: float = Field(default=60.0, gt=0, description="window of the achieved throughput")

    # Drift.
    drift_tolerance: float = Field(default=0.2, gt=0, lt=1, description="allowed relative departure from plan")
    drift_window_s: float = Field(default=600.0, gt=0, description="how long a departure must last")
    drift_buckets: int = Field(default=5, ge=1, description="sub-windows that must all depart")
    drift_min_busy_s: float = Field(default=5.0, ge=0, description="busy time a sub-window needs to count")

    @model_validator(mode="after")
    def _consistent(self) -> SchedulerSettings:
        if self.visibility_timeout_s <= self.job_timeout_s:
            raise ConfigError(
                f"SCHEDULER_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s:g} is not above "
                f"SCHEDULER_JOB_TIMEOUT_S={self.job_timeout_s:g}: a running job would be handed to a second "
                "worker; raise the visibility timeout above the longest job."
            )
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ConfigError("SCHEDULER_RETRY_BACKOFF_MAX_S is below SCHEDULER_RETRY_BACKOFF_S; raise the former.")
        if self.redis_url is None and not self.broker_is_redis:
            raise ConfigError(
                f"the broker {self.broker_url.split('://', 1)[0]}:// is not Redis, so set SCHEDULER_REDIS_URL: "
                "the router's backlog counters and the intermediates need a Redis."
            )
        return self

    def batching(self, planned: BatchingPolicy | None) -> BatchingPolicy:
        """The policy this worker runs: its own settings where set, else the plan's, else the defaults."""
        base = planned or BatchingPolicy()
        return BatchingPolicy(
            compiled_batches=base.compiled_batches if self.compiled_batches is None else self.compiled_batches,
            batch_wait_s=base.batch_wait_s if self.batch_wait_s is None else self.batch_wait_s,
        )

    @property
    def broker_is_redis(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://", "unix://"))

    @property
    def state_redis_url(self) -> str:
        """The Redis holding the scheduler's own state (backlogs, workers, intermediates)."""
        return self.redis_url or self.broker_url

    def queue_name(self, pool: str) -> str:
        return f"{self.queue_prefix}{pool}"

    def pool_of_queue(self, queue: str) -> str:
        return queue[len(self.queue_prefix) :] if queue.startswith(self.queue_prefix) else queue


@lru_cache(maxsize=1)
def get_settings() -> SchedulerSettings:
    """The process's settings, read once from the environment."""
    return SchedulerSettings()
