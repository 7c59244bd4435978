"""What the job routes need of a job dispatcher: a small interface the scheduler implements.

The API never imports the scheduler (pyproject's [tool.importlinter] contracts): `planner serve` wires the
scheduler's dispatcher in (planner.cli.serve.app_from_env -> scheduler.dispatch.for_store), and a test passes its
own. Errors cross the line as the planner's own: `UnroutableError` (422, at the workload), `UnavailableError`
(503, resend), `InputError` (422), `ConflictError` (409).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from planner.crud.jobs import JobRequest
from planner.db import models as m


class SubmittedJob(Protocol):
    """A submission's outcome: the stored job, and whether this request created it (201) or found it (200)."""

    @property
    def job(self) -> m.Job: ...

    @property
    def created(self) -> bool: ...


class JobDispatcher(Protocol):
    """Stores and sends jobs to the workers' queues; finds a done job's image."""

    def submit(self, session: Session, *, idempotency_key: str, request: JobRequest) -> SubmittedJob: ...

    def redispatch(self, session: Session, job: m.Job) -> object: ...

    @property
    def results_dir(self) -> Path: ...

    def result_file(self, name: str) -> Path: ...


DispatcherFactory = Callable[[sessionmaker[Session]], JobDispatcher]
"""Builds the app's dispatcher on the app's own store, on first use."""
