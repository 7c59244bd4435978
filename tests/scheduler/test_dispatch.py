"""Submission through the real Redis and store (no worker): queues, chains, backlogs, plan changes, lost hosts."""

from __future__ import annotations

import json
import time
import uuid
from base64 import b64decode
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import Engine, update

from planner.core.errors import ConflictError, InputError
from planner.crud import jobs as crud
from planner.db import models as m
from planner.db.session import session_factory, session_scope
from scheduler.config import SchedulerSettings
from scheduler.dispatch import Dispatcher
from scheduler.rebalance import pools_to_evacuate, rebalance_once
from scheduler.routing import NoCapacityError, NoRouteError
from scheduler.state import WorkerInfo
from tests.scheduler.conftest import PoolDef, create_plan

ALL = ["text_encoder", "denoiser", "vae_decoder"]


def req(workload: str = "w1", seed: int = 1, size: int = 64) -> crud.JobRequest:
    return crud.JobRequest(workload_name=workload, prompt="a cat", seed=seed, height=size, width=size, steps=2)


@pytest.fixture
def dispatcher(settings: SchedulerSettings, engine: Engine) -> Iterator[Dispatcher]:
    d = Dispatcher(settings, engine=engine)
    yield d
    d.redis.close()


def queued(client: redis.Redis, settings: SchedulerSettings, pool: str) -> list[dict[str, object]]:
    """The messages waiting in a pool's queue (oldest first), decoded."""
    raw = client.lrange(settings.key_prefix + settings.queue_name(pool), 0, -1)
    out = []
    for item in reversed(raw):
        envelope = json.loads(item)
        body = json.loads(b64decode(envelope["body"]))
        out.append({"headers": envelope["headers"], "args": body[0], "embed": body[2]})
    return out


def submit(d: Dispatcher, engine: Engine, request: crud.JobRequest, key: str | None = None) -> tuple[m.Job, bool]:
    with session_factory(engine)() as s:
        result = d.submit(s, idempotency_key=key or str(uuid.uuid4()), request=request)
        return result.job, result.created


def test_a_job_goes_to_its_pool_queue_once(
    dispatcher: Dispatcher, engine: Engine, settings: SchedulerSettings, fleet_name: str, redis_client: redis.Redis
) -> None:
    a = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL, capacity=2.0)
    plan_id = create_plan(engine, fleet_name, [a])
    key = str(uuid.uuid4())
    job, created = submit(dispatcher, engine, req(), key)
    again, created_again = submit(dispatcher, engine, req(), key)
    assert created
    assert not created_again
    assert again.id == job.id
    msgs = queued(redis_client, settings, a.name)
    assert len(msgs) == 1  # the resubmission sent nothing
    payload = msgs[0]["args"][0]  # type: ignore[index]
    assert payload["job_id"] == job.id
    assert payload["route"] == [a.name]
    assert payload["group"] == 0
    assert msgs[0]["headers"]["id"] == f"{job.id}.0"  # type: ignore[index]
    with session_factory(engine)() as s:
        stored = crud.get_job(s, job_id=job.id)
        assert stored is not None
        assert (stored.pool, stored.plan_id, stored.routing_version, stored.state) == (
            a.name,
            plan_id,
            plan_id,
            "queued",
        )
    assert dispatcher.state.snapshot().work[a.name] == pytest.approx(1.0)
    with pytest.raises(ConflictError):
        submit(dispatcher, engine, req(seed=2), key)


def test_unknown_workload_stores_nothing(dispatcher: Dispatcher, engine: Engine, fleet_name: str) -> None:
    create_plan(engine, fleet_name, [PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL)])
    key = str(uuid.uuid4())
    with pytest.raises(NoRouteError, match="nope"):
        submit(dispatcher, engine, req("nope"), key)
    with session_factory(engine)() as s:
        assert s.query(m.Job).filter(m.Job.idempotency_key == key).count() == 0


def test_split_jobs_are_chains_across_group_queues(
    dispatcher: Dispatcher, engine: Engine, settings: SchedulerSettings, fleet_name: str, redis_client: redis.Redis
) -> None:
    te = PoolDef("w2", 0, "l4-24gb", "sdxl", ["text_encoder"])
    dn = PoolDef("w2", 1, "h100-sxm-80gb", "sdxl", ["denoiser", "vae_decoder"])
    create_plan(engine, fleet_name, [te, dn], sizes={"w2": (64, 64, 2)})
    _job, _ = submit(dispatcher, engine, req("w2", size=128))
    msgs = queued(redis_client, settings, te.name)
    assert len(msgs) == 1
    assert queued(redis_client, settings, dn.name) == []
    payload = msgs[0]["args"][0]  # type: ignore[index]
    assert payload["route"] == [te.name, dn.name]
    assert payload["work"] == [1.0, pytest.approx(4.0)]  # 128^2 vs a planned 64^2: 4x the denoiser's work
    chain = msgs[0]["embed"]["chain"]  # type: ignore[index]
    assert [c["options"]["queue"] for c in chain] == [settings.queue_name(dn.name)]
    assert dispatcher.state.snapshot().work == {te.name: pytest.approx(1.0), dn.name: pytest.approx(4.0)}


def test_new_jobs_follow_a_new_plan_without_restart(dispatcher: Dispatcher, engine: Engine, fleet_name: str) -> None:
    old = PoolDef("w1", 0, "a100-80gb", "sd15", ALL)
    create_plan(engine, fleet_name, [old])
    first, _ = submit(dispatcher, engine, req())
    new = PoolDef("w1", 0, "h200-141gb", "sd15", ALL)
    plan2 = create_plan(engine, fleet_name, [new])
    second, _ = submit(dispatcher, engine, req())
    with session_factory(engine)() as s:
        a, b = crud.get_job(s, job_id=first.id), crud.get_job(s, job_id=second.id)
        assert a is not None
        assert b is not None
        assert a.pool == old.name
        assert (b.pool, b.routing_version) == (new.name, plan2)
    assert dispatcher.tables.reloads == 2


def test_a_stale_plan_keeps_routing(dispatcher: Dispatcher, engine: Engine, fleet_name: str) -> None:
    p = PoolDef("w1", 0, "a100-80gb", "sd15", ALL)
    plan_id = create_plan(engine, fleet_name, [p])
    with session_scope(engine) as s:
        s.execute(update(m.Plan).where(m.Plan.id == plan_id).values(status="stale", stale_reason="drift"))
    job, _ = submit(dispatcher, engine, req())
    assert job.id


def test_pools_of_lost_hosts() -> None:
    now = 1000.0
    workers = [
        WorkerInfo("a@x", "host-1", ("p1", "p2"), now),
        WorkerInfo("b@y", "host-2", ("p2",), now),
        WorkerInfo("c@z", "host-3", ("p3",), now - 100),  # silent, but its host is not lost: it may come back
        WorkerInfo("d@w", "host-2", ("p4",), now - 100),
    ]
    assert pools_to_evacuate(workers, {"host-1"}, now=now, worker_lost_s=30) == {"p1"}
    assert pools_to_evacuate(workers, {"host-1", "host-2"}, now=now, worker_lost_s=30) == {"p1", "p2", "p4"}
    assert pools_to_evacuate(workers, set(), now=now, worker_lost_s=30) == set()


def test_a_lost_hosts_queued_jobs_move_to_other_pools(
    dispatcher: Dispatcher, engine: Engine, settings: SchedulerSettings, fleet_name: str, redis_client: redis.Redis
) -> None:
    a = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL, capacity=100.0)
    b = PoolDef("w1", 0, "a100-80gb", "sd15", ALL, capacity=1.0)
    create_plan(engine, fleet_name, [a, b])
    jobs = [submit(dispatcher, engine, req(seed=i))[0] for i in range(6)]
    assert len(queued(redis_client, settings, a.name)) == 6  # the big pool finishes them first
    host_id = str(uuid.uuid4())
    with session_scope(engine) as s:
        s.add(m.Host(id=host_id, name=f"host-{host_id[:8]}", token_hash="x", status="lost"))
    dispatcher.state.heartbeat(WorkerInfo("wa@host", host_id, (a.name,), time.time()))
    dispatcher.state.heartbeat(WorkerInfo("wb@other", None, (b.name,), time.time()))
    report = rebalance_once(dispatcher)
    assert report.unavailable == {a.name}
    assert report.moved == {a.name: 6}
    assert queued(redis_client, settings, a.name) == []
    moved = queued(redis_client, settings, b.name)
    assert sorted(msg["args"][0]["job_id"] for msg in moved) == sorted(j.id for j in jobs)  # type: ignore[index]
    assert all(msg["args"][0]["route"] == [b.name] for msg in moved)  # type: ignore[index]
    with session_factory(engine)() as s:
        assert {crud.get_job(s, job_id=j.id).pool for j in jobs} == {b.name}  # type: ignore[union-attr]
    snap = dispatcher.state.snapshot()
    assert snap.work[a.name] == pytest.approx(0.0)
    assert snap.work[b.name] == pytest.approx(6.0)
    # new jobs avoid the lost pool
    job, _ = submit(dispatcher, engine, req(seed=99))
    assert job.id in [msg["args"][0]["job_id"] for msg in queued(redis_client, settings, b.name)]  # type: ignore[index]
    with session_scope(engine) as s:
        s.execute(update(m.Host).where(m.Host.id == host_id).values(status="active"))
    assert rebalance_once(dispatcher).unavailable == set()


def forgotten_job(engine: Engine, plan_id: int) -> m.Job:
    """A job stored 30 s ago whose submitter died before sending it (no dispatch recorded)."""
    with session_scope(engine) as s:
        job, _ = crud.create_job(s, idempotency_key=str(uuid.uuid4()), request=req(), plan_id=plan_id)
        s.flush()
        s.execute(update(m.Job).where(m.Job.id == job.id).values(created_at=datetime.now(UTC) - timedelta(seconds=30)))
    return job


def test_forgotten_jobs_are_sent_again(
    dispatcher: Dispatcher, engine: Engine, settings: SchedulerSettings, fleet_name: str, redis_client: redis.Redis
) -> None:
    """A submitter that died after storing a job but before sending it: the rebalancer sends it."""
    p = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL)
    plan_id = create_plan(engine, fleet_name, [p])
    job = forgotten_job(engine, plan_id)
    assert rebalance_once(dispatcher).redispatched >= 1
    assert job.id in [msg["args"][0]["job_id"] for msg in queued(redis_client, settings, p.name)]  # type: ignore[index]


def test_a_job_with_no_pool_up_waits_queued_and_goes_when_one_is_back(
    dispatcher: Dispatcher, engine: Engine, settings: SchedulerSettings, fleet_name: str, redis_client: redis.Redis
) -> None:
    """No capacity is a transient state, not the request's fault: the job is not failed, and new submissions
    are refused as retryable (NoCapacityError, a 503 at the API), not as bad input."""
    p = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL)
    plan_id = create_plan(engine, fleet_name, [p])
    job = forgotten_job(engine, plan_id)
    host_id = str(uuid.uuid4())
    with session_scope(engine) as s:
        s.add(m.Host(id=host_id, name=f"host-{host_id[:8]}", token_hash="x", status="lost"))
    dispatcher.state.heartbeat(WorkerInfo("wa@host", host_id, (p.name,), time.time()))
    report = rebalance_once(dispatcher)
    assert report.unavailable == {p.name}
    assert report.redispatched == 0
    with session_factory(engine)() as s:
        assert crud.get_job(s, job_id=job.id).state == "queued"  # type: ignore[union-attr]
    with pytest.raises(NoCapacityError, match="no available pool"):
        submit(dispatcher, engine, req(seed=5))
    assert not issubclass(NoCapacityError, InputError)  # so the API answers 503, not 422
    with session_scope(engine) as s:
        s.execute(update(m.Host).where(m.Host.id == host_id).values(status="active"))
    assert rebalance_once(dispatcher).redispatched == 1
    assert job.id in [msg["args"][0]["job_id"] for msg in queued(redis_client, settings, p.name)]  # type: ignore[index]


@pytest.mark.parametrize("settings", [{"lost_after_s": 5.0}], indirect=True)
def test_a_job_held_by_a_killed_worker_is_sent_again_before_the_visibility_timeout(
    dispatcher: Dispatcher, engine: Engine, settings: SchedulerSettings, fleet_name: str, redis_client: redis.Redis
) -> None:
    """A worker killed mid-job leaves its message unacknowledged until the visibility timeout (an hour by
    default): the job is sent again once its worker stops heartbeating, not an hour later; a job held by a live
    worker, or whose message waits in a queue (a later group's turn), is left alone."""
    p = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL)
    create_plan(engine, fleet_name, [p])
    held_dead, _ = submit(dispatcher, engine, req(seed=1))
    held_live, _ = submit(dispatcher, engine, req(seed=2))
    waiting, _ = submit(dispatcher, engine, req(seed=3))  # its message still waits in the queue
    key = settings.key_prefix + settings.queue_name(p.name)
    unacked = f"{settings.key_prefix}unacked"
    for tag in ("tag-1", "tag-2"):  # the workers took both and the transport holds them as unacknowledged
        raw = redis_client.rpop(key)
        assert raw is not None
        redis_client.hset(unacked, tag, json.dumps([json.loads(raw), "", p.name]))
    with session_scope(engine) as s:
        for job, worker in ((held_dead, "dead@host"), (held_live, "alive@host"), (waiting, "dead@host")):
            assert crud.claim_job(s, job_id=job.id, worker=worker, pool=p.name, max_attempts=5) == crud.Claim.CLAIMED
        old = datetime.now(UTC) - timedelta(seconds=60)
        s.execute(update(m.Job).where(m.Job.id.in_([held_dead.id, held_live.id, waiting.id])).values(updated_at=old))
    now = time.time()
    dispatcher.state.heartbeat(WorkerInfo("alive@host", None, (p.name,), now))
    dispatcher.state.heartbeat(WorkerInfo("dead@host", None, (p.name,), now - settings.worker_lost_s - 5))
    redis_client.delete(f"{settings.key_prefix}lock:lost-scan")
    assert rebalance_once(dispatcher).redispatched == 1
    assert [msg["args"][0]["job_id"] for msg in queued(redis_client, settings, p.name)] == [waiting.id, held_dead.id]  # type: ignore[index]


@pytest.mark.parametrize("settings", [{"lost_after_s": 5.0}], indirect=True)
def test_a_job_claimed_before_its_worker_restarted_under_the_same_name_is_sent_again(
    dispatcher: Dispatcher, engine: Engine, settings: SchedulerSettings, fleet_name: str, redis_client: redis.Redis
) -> None:
    """A worker restarted under its old name heartbeats as alive, but the job its previous process held is
    nobody's: it is sent again. A job the current process claimed (after it started) is left alone."""
    p = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL)
    create_plan(engine, fleet_name, [p])
    before, _ = submit(dispatcher, engine, req(seed=1))
    after, _ = submit(dispatcher, engine, req(seed=2))
    key = settings.key_prefix + settings.queue_name(p.name)
    for tag in ("tag-1", "tag-2"):
        raw = redis_client.rpop(key)
        assert raw is not None
        redis_client.hset(f"{settings.key_prefix}unacked", tag, json.dumps([json.loads(raw), "", p.name]))
    claimed_at = datetime.now(UTC) - timedelta(seconds=60)
    with session_scope(engine) as s:
        for job, at in ((before, claimed_at - timedelta(seconds=30)), (after, claimed_at)):
            assert crud.claim_job(s, job_id=job.id, worker="w@host", pool=p.name, max_attempts=5) == crud.Claim.CLAIMED
            s.execute(update(m.Job).where(m.Job.id == job.id).values(updated_at=at))
    now = time.time()
    restarted = claimed_at.timestamp() - 10  # between the two claims
    dispatcher.state.heartbeat(WorkerInfo("w@host", None, (p.name,), now, started_at=restarted))
    redis_client.delete(f"{settings.key_prefix}lock:lost-scan")
    assert rebalance_once(dispatcher).redispatched == 1
    assert [msg["args"][0]["job_id"] for msg in queued(redis_client, settings, p.name)] == [before.id]  # type: ignore[index]


@pytest.mark.parametrize("settings", [{"lost_after_s": 5.0}], indirect=True)
def test_a_message_lost_in_transit_is_sent_again(
    dispatcher: Dispatcher, engine: Engine, settings: SchedulerSettings, fleet_name: str, redis_client: redis.Redis
) -> None:
    """The Redis transport pops a message before it records it as unacknowledged: a worker killed in between
    loses it. The job, untouched for `lost_after_s` and nowhere in the broker, is sent again; others are not."""
    p = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL)
    create_plan(engine, fleet_name, [p])
    lost, _ = submit(dispatcher, engine, req(seed=1))
    waiting, _ = submit(dispatcher, engine, req(seed=2))
    key = settings.key_prefix + settings.queue_name(p.name)
    popped = redis_client.rpop(key)  # the oldest message, as BRPOP takes it, gone with its worker
    assert popped is not None
    assert lost.id in popped.decode()
    assert rebalance_once(dispatcher).redispatched == 0  # not stalled long enough yet
    with session_scope(engine) as s:
        old = datetime.now(UTC) - timedelta(seconds=60)
        s.execute(update(m.Job).where(m.Job.id.in_([lost.id, waiting.id])).values(updated_at=old))
    redis_client.delete(f"{settings.key_prefix}lock:lost-scan")
    assert rebalance_once(dispatcher).redispatched == 1
    msgs = queued(redis_client, settings, p.name)
    assert sorted(msg["args"][0]["job_id"] for msg in msgs) == sorted([lost.id, waiting.id])  # type: ignore[index]
    resent = next(msg["args"][0] for msg in msgs if msg["args"][0]["job_id"] == lost.id)  # type: ignore[index]
    assert resent["group"] == 0
    redis_client.delete(f"{settings.key_prefix}lock:lost-scan")
    assert rebalance_once(dispatcher).redispatched == 0  # touched when resent: not again


def test_a_jobs_message_does_not_carry_what_it_generates() -> None:
    """Issue 28: the prompt, negative prompt and seed stay in the job row; the worker reads them from there
    (`planner.crud.jobs.job_request`), so writing to the broker cannot change what is generated."""
    from scheduler.dispatch import job_payload
    from scheduler.routing import Route

    job = m.Job(
        id="j-1", workload_name="w", prompt="a secret prompt", negative_prompt="no", seed=7, height=64, width=64,
        steps=2,
    )  # fmt: skip
    payload = job_payload(job, Route(plan_id=1, version=1, pools=("p",), work=(1.0,)), "sd15")
    assert not {"prompt", "negative_prompt", "seed"} & set(payload)
    assert "a secret prompt" not in json.dumps(payload)
    assert crud.REQUEST_FIELDS == ("prompt", "negative_prompt", "seed", "height", "width", "steps")
