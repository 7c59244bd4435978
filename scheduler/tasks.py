"""The one task: run one stage group of one job. Its body lives in the worker runtime (scheduler.worker),
imported on first call, so sending tasks (the API, the router) never imports worker code."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from scheduler.celery_app import RUN_GROUP


def run_group(self: Task[Any, Any], payload: dict[str, Any]) -> dict[str, Any]:
    from scheduler.worker import current_runtime

    return current_runtime().run_task(self, payload)


def register(app: Celery) -> None:
    """Register the task on this app only (not shared: several apps with other settings live in one process)."""
    app.task(name=RUN_GROUP, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False)(run_group)
