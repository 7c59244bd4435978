"""The tasks: run one stage group of one job, and a probe of the dispatch path. Their bodies live in the worker
runtime (scheduler.worker), imported on first call, so sending tasks (the API, the router) never imports
worker code."""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Celery, Task

from scheduler.celery_app import PROBE, RUN_GROUP


def run_group(self: Task[Any, Any], payload: dict[str, Any]) -> dict[str, Any]:
    from scheduler.worker import current_runtime

    return current_runtime().run_task(self, payload)


def probe(payload: dict[str, Any]) -> None:
    """A job-less no-op that notes when it started (`sent_at` is the sender's clock), for the dispatch benchmark."""
    started = time.time()
    from scheduler.worker import current_runtime

    runtime = current_runtime()
    runtime.redis.rpush(
        f"{runtime.settings.key_prefix}probe:{payload['run']}", json.dumps([payload["sent_at"], started])
    )


def register(app: Celery) -> None:
    """Register the tasks on this app only (not shared: several apps with other settings live in one process)."""
    app.task(name=RUN_GROUP, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False)(run_group)
    app.task(name=PROBE, acks_late=True, ignore_result=True, shared=False)(probe)
