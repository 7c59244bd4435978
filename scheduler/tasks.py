"""The tasks: run one stage group of one job, and a probe of the dispatch path.

Registered by the worker process that runs them (scheduler.worker.WorkerRuntime calls `register` with itself),
on that worker's app only; senders (the API, the router, the rebalancer) publish them by name (RUN_GROUP,
PROBE) and never import worker code, so the scheduler's modules import one way: no cycle.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

import redis
from celery import Celery, Task

from scheduler.celery_app import PROBE, RUN_GROUP


class TaskRuntime(Protocol):
    """What the tasks need of the worker runtime that runs them (scheduler.worker.WorkerRuntime)."""

    redis: redis.Redis
    key_prefix: str

    def run_task(self, task: Task[Any, Any], payload: dict[str, Any]) -> dict[str, Any]: ...


def register(app: Celery, runtime: TaskRuntime) -> None:
    """Register the tasks on this app only (not shared: several apps with other settings live in one process),
    each running in `runtime`."""

    def run_group(self: Task[Any, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return runtime.run_task(self, payload)

    def probe(payload: dict[str, Any]) -> None:
        """A job-less no-op that notes when it started (`sent_at` is the sender's clock), for the dispatch
        benchmark."""
        started = time.time()
        runtime.redis.rpush(f"{runtime.key_prefix}probe:{payload['run']}", json.dumps([payload["sent_at"], started]))

    app.task(name=RUN_GROUP, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False)(run_group)
    app.task(name=PROBE, acks_late=True, ignore_result=True, shared=False)(probe)
