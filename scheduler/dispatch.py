"""Submit a job: store it (idempotently), route it, and send it to its pools' queues as a Celery chain.

Order of a submission, and what a failure at each point leaves:
1. route (nothing stored yet: an unknown workload is refused before a job exists, unless the idempotency key
   already made a job, which is returned);
2. insert the job, `queued`, with its dispatch (pool, plan, routing version), and commit: one round trip, and a
   worker that takes the message finds the row;
3. send group 0's task, with the later groups chained behind it on their own pools' queues.
If the broker refuses 3, the dispatch is cleared and the caller told (503): a resubmission with the same key
after `dispatch_grace_s`, or the rebalancer, sends it. If the submitter dies between 2 and 3, the job is
queued with no message anywhere: the rebalancer finds it after `lost_after_s` and sends it. A message sent twice
(a retry that raced) still yields one result: the job store's transitions are guarded. At-least-once delivery,
exactly-once results.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from celery import Celery, chain
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from planner.core.errors import InputError, PlannerError
from planner.crud import jobs as crud
from planner.db import models as m
from planner.db.base import utcnow
from planner.db.session import engine_for, session_factory
from scheduler.celery_app import RUN_GROUP, make_celery
from scheduler.config import SchedulerSettings
from scheduler.routing import Backlog, JobShape, NoCapacityError, Route, RoutingTable, decide
from scheduler.state import SchedulerState
from scheduler.table import DbTableSource, TableCache, TableSource

log = logging.getLogger("scheduler.dispatch")


class DispatchError(PlannerError):
    """The broker did not take the job; it stays queued and is sent again (resubmit with the same key)."""


@dataclass(frozen=True)
class Submitted:
    job: m.Job
    created: bool
    route: Route | None


def job_payload(job: m.Job, route: Route, model: str) -> dict[str, Any]:
    """What travels with a job's messages (JSON): its id, its route, and where the chain is.

    The request itself (prompt, seed) does not travel: the worker reads it from the job row it claims
    (`planner.crud.jobs.job_request`), so whoever can write to the broker cannot change what is generated.
    The shape (height, width, steps) travels as a routing hint for the rebalancer; the worker uses the row's.
    """
    return {
        "job_id": job.id,
        "workload": job.workload_name,
        "model": model,
        "height": job.height,
        "width": job.width,
        "steps": job.steps,
        "route": list(route.pools),
        "work": list(route.work),
        "plan_id": route.plan_id,
        "version": route.version,
        "group": 0,
        "input_ref": None,
        "dispatch_id": uuid.uuid4().hex[:12],
        "submitted_at": time.time(),
    }


class Dispatcher:
    """The router and the sender, shared by the threads of one process (the API, the CLI, the rebalancer)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        app: Celery | None = None,
        engine: Engine | None = None,
        sessions: sessionmaker[Session] | None = None,
        client: redis.Redis | None = None,
        table_source: TableSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self.redis = client or redis.Redis.from_url(settings.state_redis_url)
        self.state = SchedulerState(self.redis, settings.key_prefix)
        # The job store: the sessions given (the planner service passes its own), else the engine given, else
        # one opened on SCHEDULER_DATABASE_URL.
        self.sessions = sessions or session_factory(engine or engine_for(settings.database_url))
        self.tables = TableCache(
            table_source or DbTableSource(self.sessions, settings.fleet), settings.routing_refresh_s, clock
        )
        self.clock = clock
        self._lock = threading.Lock()
        self._work: dict[str, float] = {}
        self._unavailable: frozenset[str] = frozenset()
        self._backlog_at = -float("inf")
        self._rereading = False

    # Routing.

    def table(self) -> RoutingTable:
        return self.tables.get()

    def backlog(self) -> Backlog:
        """The backlog snapshot, this process's own dispatches added since it was read.

        Reread every `backlog_refresh_s`: in the background once there is one (a decision never waits on
        Redis), synchronously for the first read, after `refresh_backlog()`, or when the period is 0.
        """
        if self.clock() - self._backlog_at >= self.settings.backlog_refresh_s:
            if self._backlog_at == -float("inf") or self.settings.backlog_refresh_s <= 0:
                self._reread_backlog()
            elif not self._rereading:
                self._rereading = True
                threading.Thread(target=self._reread_in_background, name="backlog-refresh", daemon=True).start()
        return Backlog(work=self._work, unavailable=self._unavailable)

    def _reread_backlog(self) -> None:
        snap = self.state.snapshot()
        with self._lock:
            self._work = dict(snap.work)
            self._unavailable = snap.unavailable
            self._backlog_at = self.clock()

    def _reread_in_background(self) -> None:
        try:
            self._reread_backlog()
        except redis.RedisError:
            log.warning("backlog snapshot refresh failed; routing on the previous one", exc_info=True)
        finally:
            self._rereading = False

    def refresh_backlog(self) -> None:
        """Reread the backlog snapshot on the next route, synchronously (the unavailable pools changed)."""
        self._backlog_at = -float("inf")

    def route(self, shape: JobShape) -> Route:
        return decide(self.table(), self.backlog(), shape)

    def resolve(self, request: crud.JobRequest) -> crud.JobRequest:
        """Fill what a request left out: a random seed, and its workload's planned size and steps."""
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        height, width = request.height, request.width
        if height is None or width is None:
            planned_h, planned_w = self.default_size(request.workload_name)
            height, width = height or planned_h, width or planned_w
        steps = request.steps
        if steps is None:
            groups = self.table().groups(request.workload_name)
            steps = next((p.ref_steps for g in groups for p in g if "denoiser" in p.stages and p.ref_steps), None)
        return dataclasses.replace(request, seed=seed, height=height, width=width, steps=steps)

    def default_size(self, workload: str) -> tuple[int, int]:
        """The planned (height, width) of a workload, for requests that give none."""
        for group in self.table().groups(workload):
            for p in group:
                if p.ref_height and p.ref_width:
                    return p.ref_height, p.ref_width
        raise InputError(f"workload {workload!r} has no planned size; give height and width in the request")

    # Submission.

    def submit(self, session: Session, *, idempotency_key: str, request: crud.JobRequest) -> Submitted:
        """Store and send a job; a resubmission of a key returns its job (and resends it if it never left).

        Only the fields the client gave are compared with the key's job (the scheduler fills seed, size and
        steps once, at creation). When the plan in force cannot route the request any more (it changed, or no
        pool is up), the key is looked up before giving up: a resend still gets its job back.
        """
        try:
            resolved = self.resolve(request)
            if resolved.height is None or resolved.width is None:  # pragma: no cover - resolve fills or raises
                raise InputError(f"workload {request.workload_name!r}: give height and width in the request")
            job_id = str(uuid.uuid4())
            route = self.route(
                JobShape(job_id, resolved.workload_name, resolved.height, resolved.width, resolved.steps)
            )
        except (InputError, NoCapacityError):
            known = crud.job_for_key(session, idempotency_key=idempotency_key, request=request)
            session.commit()
            if known is None:
                raise
            return self._resubmitted(session, known)
        job, created = crud.create_job(
            session,
            idempotency_key=idempotency_key,
            request=resolved,
            sent=request,
            job_id=job_id,
            pool=route.pools[0],
            plan_id=route.plan_id,
            routing_version=route.version,
        )
        session.commit()
        if created:
            try:
                self.publish(job, route)
            except DispatchError:
                crud.clear_dispatch(session, job_id=job.id)  # a resubmission or the rebalancer sends it
                session.commit()
                raise
            return Submitted(job, True, route)
        return self._resubmitted(session, job)

    def _resubmitted(self, session: Session, job: m.Job) -> Submitted:
        """A resubmitted key's job: sent again if its first dispatch never reached the broker (after a grace)."""
        if (
            job.state == "queued"
            and job.pool is None
            and job.created_at < utcnow() - timedelta(seconds=self.settings.dispatch_grace_s)
        ):
            return Submitted(job, False, self.redispatch(session, job))
        return Submitted(job, False, None)

    def redispatch(self, session: Session, job: m.Job) -> Route:
        """Route and send a stored queued job again (its first dispatch never reached the broker)."""
        route = self.route(JobShape(job.id, job.workload_name, job.height, job.width, job.steps))
        self.publish(job, route)
        crud.record_dispatch(
            session, job_id=job.id, plan_id=route.plan_id, routing_version=route.version, pool=route.pools[0]
        )
        session.commit()
        return route

    def publish(self, job: m.Job, route: Route) -> None:
        """Send group 0's task with the later groups chained behind it, and count the work in the backlogs."""
        table = self.table()
        first = table.get(route.pools[0])
        payload = job_payload(job, route, first.model if first else "")
        sigs = [
            self.app.signature(
                RUN_GROUP,
                args=(payload,) if g == 0 else (),
                queue=self.settings.queue_name(pool),
                task_id=f"{job.id}.{g}",
            )
            for g, pool in enumerate(route.pools)
        ]
        try:
            if len(sigs) == 1:
                sigs[0].apply_async()
            else:
                chain(*sigs).apply_async()
        except (KombuOperationalError, redis.RedisError, OSError) as exc:
            raise DispatchError(
                f"the broker did not take job {job.id}: {exc}; it stays queued and is sent again within "
                f"{self.settings.dispatch_grace_s:g} s, or resubmit with the same idempotency key"
            ) from exc
        work = dict.fromkeys(route.pools, 0.0)
        for pool, w in zip(route.pools, route.work, strict=True):
            work[pool] += w
        with self._lock:
            for pool, w in work.items():
                self._work[pool] = self._work.get(pool, 0.0) + w
        self.state.add_backlog(work)
