"""The job store's guarded transitions: idempotent creation, one winner per transition, the dead letter."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from planner.core.errors import ConflictError
from planner.crud import jobs as crud
from planner.db import models as m
from planner.db.session import session_factory, session_scope

REQ = crud.JobRequest(workload_name="w", prompt="a cat", seed=1, height=64, width=64, steps=2)


def test_a_key_makes_one_job(session: Session) -> None:
    key = str(uuid.uuid4())
    job, created = crud.create_job(session, idempotency_key=key, request=REQ)
    again, created_again = crud.create_job(session, idempotency_key=key, request=REQ)
    assert created
    assert not created_again
    assert again.id == job.id
    assert job.state == "queued"
    assert job.pool is None
    with pytest.raises(ConflictError, match="seed"):
        crud.create_job(session, idempotency_key=key, request=crud.JobRequest(**{**REQ.__dict__, "seed": 2}))


def test_concurrent_submissions_of_a_key_race_to_one_job(engine: Engine) -> None:
    key = str(uuid.uuid4())
    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def submit() -> None:
        try:
            barrier.wait()
            with session_scope(engine) as s:
                job, _ = crud.create_job(s, idempotency_key=key, request=REQ)
                ids.append(job.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(ids) == 6
    assert len(set(ids)) == 1


def test_claims_and_the_one_result(session: Session) -> None:
    job, _ = crud.create_job(session, idempotency_key=str(uuid.uuid4()), request=REQ)
    assert crud.claim_job(session, job_id=job.id, worker="a", pool="p", max_attempts=3) is crud.Claim.CLAIMED
    # a crashed worker's job is claimed again by another (running -> running), counting the delivery
    assert crud.claim_job(session, job_id=job.id, worker="b", pool="p", max_attempts=3) is crud.Claim.CLAIMED
    assert crud.complete_job(session, job_id=job.id, result_path="b.png", result_sha256="x")
    assert not crud.complete_job(session, job_id=job.id, result_path="a.png", result_sha256="y")
    assert not crud.fail_job(session, job_id=job.id, error="late", dead=True)
    assert crud.claim_job(session, job_id=job.id, worker="c", pool="p", max_attempts=3) is crud.Claim.FINISHED
    job = crud.get_job(session, job_id=job.id)
    assert job is not None
    assert (job.state, job.result_path, job.attempts, job.worker) == ("done", "b.png", 2, "b")
    assert crud.claim_job(session, job_id="nope", worker="a", pool="p", max_attempts=3) is crud.Claim.MISSING


def test_too_many_deliveries_and_requeue(session: Session) -> None:
    job, _ = crud.create_job(session, idempotency_key=str(uuid.uuid4()), request=REQ)
    for _ in range(2):
        assert crud.claim_job(session, job_id=job.id, worker="a", pool="p", max_attempts=2) is crud.Claim.CLAIMED
    assert crud.claim_job(session, job_id=job.id, worker="a", pool="p", max_attempts=2) is crud.Claim.EXHAUSTED
    assert crud.fail_job(session, job_id=job.id, error="kept killing workers", dead=True)
    assert [j.id for j in crud.list_jobs(session, state="dead", limit=1000)].count(job.id) == 1
    assert crud.requeue_job(session, job_id=job.id)
    job = crud.get_job(session, job_id=job.id)
    assert job is not None
    assert (job.state, job.attempts, job.pool, job.error) == ("queued", 0, None, None)


def test_dispatch_is_recorded_once_and_forgotten_jobs_are_found(session: Session) -> None:
    job, _ = crud.create_job(session, idempotency_key=str(uuid.uuid4()), request=REQ)
    assert crud.record_dispatch(session, job_id=job.id, plan_id=None, routing_version=3, pool="p1")
    assert not crud.record_dispatch(session, job_id=job.id, plan_id=None, routing_version=4, pool="p2")
    assert crud.clear_dispatch(session, job_id=job.id)
    session.execute(update(m.Job).where(m.Job.id == job.id).values(created_at=datetime.now(UTC) - timedelta(minutes=5)))
    forgotten = crud.undispatched_jobs(session, created_before=datetime.now(UTC) - timedelta(minutes=1))
    assert job.id in [j.id for j in forgotten]
    assert crud.summary(session)["by_state"]["queued"] >= 1


def test_two_workers_finishing_one_job_record_one_result(engine: Engine) -> None:
    """The race a redelivery creates: many completions at once, exactly one wins."""
    with session_scope(engine) as s:
        job, _ = crud.create_job(s, idempotency_key=str(uuid.uuid4()), request=REQ)
        crud.claim_job(s, job_id=job.id, worker="a", pool="p", max_attempts=9)
    wins: list[str] = []
    barrier = threading.Barrier(8)
    sessions = session_factory(engine)

    def finish(i: int) -> None:
        barrier.wait()
        with sessions() as s:
            if crud.complete_job(s, job_id=job.id, result_path=f"{i}.png", result_sha256=str(i)):
                wins.append(f"{i}.png")
            s.commit()

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    with sessions() as s:
        stored = crud.get_job(s, job_id=job.id)
        assert stored is not None
        assert stored.result_path == wins[0]
