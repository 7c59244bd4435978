"""The job store: create jobs idempotently and move them through their states with guarded UPDATEs.

Every state change is one conditional UPDATE (`... WHERE id = :id AND state IN (...)`) whose row count says
whether this caller won: two workers that both finish a job (a redelivery after a crash, a duplicate message)
race on the same UPDATE and exactly one of them records its result. The result is written once: a job leaves
`running` for `done` once, with its result path, and nothing moves it back.

States: queued -> running -> done | failed | dead. `failed` is a permanent error (bad input); `dead` is the
dead letter: retries or deliveries exhausted. An operator may requeue a dead or failed job.
Callers own the transaction (commit after the call).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from planner.core.errors import ConflictError
from planner.db import models as m
from planner.db.base import utcnow

UNROUTED = "(none)"
ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("done", "failed", "dead")


class Claim(StrEnum):
    """What a worker's claim of a job found."""

    CLAIMED = "claimed"  # the job is this worker's to run now
    FINISHED = "finished"  # already done, failed or dead: a duplicate delivery, skip it
    EXHAUSTED = "exhausted"  # delivered too often (it keeps killing workers): dead-letter it
    MISSING = "missing"  # no such job (yet): the submitter has not committed, or it was deleted


@dataclass(frozen=True)
class JobRequest:
    """What a client asks for; an idempotent resubmission must ask for the same thing.

    `seed`, `height`, `width` and `steps` may be left out (None): the scheduler fills them once, when it creates
    the job (a random seed, the workload's planned size and steps). A resend that leaves them out again asks for
    the same thing, whatever was filled in and whatever the plan in force says now.
    """

    workload_name: str
    prompt: str
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    negative_prompt: str | None = None

    def differs_from(self, job: m.Job) -> list[str]:
        """The fields this request gave that the job has otherwise (left-out fields match anything)."""
        always = ("workload_name", "prompt", "negative_prompt")
        given = [name for name in ("seed", "height", "width", "steps") if getattr(self, name) is not None]
        return [name for name in (*always, *given) if getattr(self, name) != getattr(job, name)]


def job_for_key(session: Session, *, idempotency_key: str, request: JobRequest) -> m.Job | None:
    """The job an idempotency key already made (None: a new key); a key reused for another request conflicts."""
    job = session.scalars(
        select(m.Job).where(m.Job.idempotency_key == idempotency_key).execution_options(populate_existing=True)
    ).first()
    if job is None:
        return None
    changed = request.differs_from(job)
    if changed:
        raise ConflictError(
            f"idempotency key {idempotency_key!r} was used for job {job.id} with other {', '.join(changed)}; "
            "use a new key for a new request, or resend the same request"
        )
    return job


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def create_job(
    session: Session,
    *,
    idempotency_key: str,
    request: JobRequest,
    job_id: str | None = None,
    pool: str | None = None,
    plan_id: int | None = None,
    routing_version: int | None = None,
    sent: JobRequest | None = None,
) -> tuple[m.Job, bool]:
    """The job of an idempotency key: a new queued job (created=True), or the one that key already made.

    Concurrent submissions of one key race on the unique key with INSERT ... ON CONFLICT DO NOTHING, so both
    get the same job and neither sees an integrity error. A key reused for a different request is a conflict,
    judged on `sent` (what the client gave, before the scheduler filled seed, size and steps) when given.
    A new job may be stored with its dispatch (pool, plan, routing version) in the same statement: one round
    trip on the submission path.
    """
    if request.seed is None or request.height is None or request.width is None:
        raise ValueError("create_job needs a resolved request (seed, height and width); Dispatcher.resolve fills them")
    now = utcnow()
    values = {
        "id": job_id or str(uuid.uuid4()),
        "idempotency_key": idempotency_key,
        "workload_name": request.workload_name,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "height": request.height,
        "width": request.width,
        "steps": request.steps,
        "state": "queued",
        "attempts": 0,
        "pool": pool,
        "plan_id": plan_id,
        "routing_version": routing_version,
        "created_at": now,
        "updated_at": now,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(m.Job).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(m.Job)
    job = session.scalars(stmt, execution_options={"populate_existing": True}).first()
    if job is not None:
        return job, True
    existing = job_for_key(session, idempotency_key=idempotency_key, request=sent or request)
    if existing is None:
        raise RuntimeError(f"idempotency key {idempotency_key!r}: the insert conflicted but no job has the key")
    return existing, False


def get_job(session: Session, *, job_id: str) -> m.Job | None:
    return session.get(m.Job, job_id, populate_existing=True)


REQUEST_FIELDS = ("prompt", "negative_prompt", "seed", "height", "width", "steps")
"""What a worker generates, read from the job row it claimed: never from the broker's message."""


def job_request(session: Session, *, job_id: str) -> dict[str, Any] | None:
    """The generation request of a job as stored (`REQUEST_FIELDS`), or None if there is no such job."""
    job = get_job(session, job_id=job_id)
    return None if job is None else {k: getattr(job, k) for k in REQUEST_FIELDS}


def list_jobs(
    session: Session, *, state: str | None = None, workload: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[m.Job]:
    query = select(m.Job)
    if state is not None:
        query = query.where(m.Job.state == state)
    if workload is not None:
        query = query.where(m.Job.workload_name == workload)
    return session.scalars(query.order_by(m.Job.created_at.desc(), m.Job.id).limit(limit).offset(offset)).all()


def record_dispatch(session: Session, *, job_id: str, plan_id: int | None, routing_version: int, pool: str) -> bool:
    """Note where a queued job was sent; False if another submission recorded a dispatch first."""
    stmt = (
        update(m.Job)
        .where(m.Job.id == job_id, m.Job.state == "queued", m.Job.pool.is_(None))
        .values(plan_id=plan_id, routing_version=routing_version, pool=pool, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(session.execute(stmt)) == 1


def clear_dispatch(session: Session, *, job_id: str) -> bool:
    """Forget a dispatch that did not reach the broker, so a resubmission or the sweeper sends it again."""
    stmt = (
        update(m.Job)
        .where(m.Job.id == job_id, m.Job.state == "queued")
        .values(pool=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(session.execute(stmt)) == 1


def _of_fleet(query: Any, fleet: str | None) -> Any:
    """Jobs routed by a plan of this fleet (several fleets may share a store, each with its own broker)."""
    if fleet is None:
        return query
    return (
        query.join(m.Plan, m.Plan.id == m.Job.plan_id)
        .join(m.Fleet, m.Fleet.id == m.Plan.fleet_id)
        .where(m.Fleet.name == fleet)
    )


def undispatched_jobs(
    session: Session, *, created_before: datetime, fleet: str | None = None, limit: int = 500
) -> Sequence[m.Job]:
    """Queued jobs with no dispatch recorded since before a time: the broker refused them, or their submitter died."""
    query = select(m.Job).where(m.Job.state == "queued", m.Job.pool.is_(None), m.Job.created_at < created_before)
    return session.scalars(_of_fleet(query, fleet).order_by(m.Job.created_at).limit(limit)).all()


def stalled_jobs(
    session: Session,
    *,
    unchanged_since: datetime,
    fleet: str | None = None,
    limit: int = 1000,
    states: Sequence[str] = ACTIVE_STATES,
) -> Sequence[m.Job]:
    """Dispatched jobs, queued or running (or `states`), that nothing has touched since a time (oldest first)."""
    query = select(m.Job).where(m.Job.state.in_(states), m.Job.pool.is_not(None), m.Job.updated_at < unchanged_since)
    return session.scalars(_of_fleet(query, fleet).order_by(m.Job.updated_at).limit(limit)).all()


def claim_job(session: Session, *, job_id: str, worker: str, pool: str, max_attempts: int) -> Claim:
    """Take a job to run: queued or running (a crashed worker's) -> running, counting the delivery."""
    now = utcnow()
    stmt = (
        update(m.Job)
        .where(m.Job.id == job_id, m.Job.state.in_(ACTIVE_STATES), m.Job.attempts < max_attempts)
        .values(
            state="running",
            attempts=m.Job.attempts + 1,
            worker=worker,
            pool=pool,
            started_at=func.coalesce(m.Job.started_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(session.execute(stmt)) == 1:
        return Claim.CLAIMED
    state = session.scalar(select(m.Job.state).where(m.Job.id == job_id))
    if state is None:
        return Claim.MISSING
    if state in TERMINAL_STATES:
        return Claim.FINISHED
    return Claim.EXHAUSTED


def complete_job(
    session: Session,
    *,
    job_id: str,
    result_path: str,
    result_sha256: str | None,
    worker: str | None = None,
    weights: str | None = None,
) -> bool:
    """Record a job's result once: True for the one caller that moved it to done, False for every other."""
    now = utcnow()
    values: dict[str, Any] = {
        "state": "done",
        "result_path": result_path,
        "result_sha256": result_sha256,
        "weights": weights,
        "error": None,
        "finished_at": now,
        "updated_at": now,
    }
    if worker is not None:
        values["worker"] = worker
    stmt = (
        update(m.Job)
        .where(m.Job.id == job_id, m.Job.state.in_(ACTIVE_STATES))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(session.execute(stmt)) == 1


def fail_job(session: Session, *, job_id: str, error: str, dead: bool) -> bool:
    """End a job without a result: `dead` (the dead letter: it kept failing) or `failed` (a permanent error)."""
    now = utcnow()
    stmt = (
        update(m.Job)
        .where(m.Job.id == job_id, m.Job.state.in_(ACTIVE_STATES))
        .values(state="dead" if dead else "failed", error=error[:4000], finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(session.execute(stmt)) == 1


def requeue_job(session: Session, *, job_id: str) -> bool:
    """Give a dead or failed job another go: queued, no dispatch, attempts reset (the sweeper sends it)."""
    stmt = (
        update(m.Job)
        .where(m.Job.id == job_id, m.Job.state.in_(("dead", "failed")))
        .values(state="queued", pool=None, attempts=0, error=None, finished_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(session.execute(stmt)) == 1


def move_job(session: Session, *, job_id: str, pool: str) -> bool:
    """Note that a job's queued message moved to another pool (its host was lost)."""
    stmt = (
        update(m.Job)
        .where(m.Job.id == job_id, m.Job.state.in_(ACTIVE_STATES))
        .values(pool=pool, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(session.execute(stmt)) == 1


def summary(session: Session, *, workload: str | None = None) -> dict[str, Any]:
    """Counts by state and by pool (jobs not yet routed count under `(none)`)."""
    query = select(m.Job.state, m.Job.pool, func.count()).group_by(m.Job.state, m.Job.pool)
    if workload is not None:
        query = query.where(m.Job.workload_name == workload)
    by_state = dict.fromkeys(m.JOB_STATES, 0)
    by_pool: dict[str, dict[str, int]] = {}
    total = 0
    for state, pool, n in session.execute(query).all():
        by_state[state] = by_state.get(state, 0) + int(n)
        pool_counts = by_pool.setdefault(pool or UNROUTED, {})
        pool_counts[state] = pool_counts.get(state, 0) + int(n)
        total += int(n)
    return {"total": total, "by_state": by_state, "by_pool": dict(sorted(by_pool.items()))}
