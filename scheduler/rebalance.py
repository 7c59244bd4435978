"""When the planner marks a host lost, its pools' queued jobs move to other pools; forgotten jobs are resent.

A pool is evacuated when it had a worker on a lost host and has no live worker left elsewhere (a pool whose
other replicas are alive keeps its queue: they serve it, and the router's backlog steers new jobs away from its
reduced capacity). Evacuation pulls each queued message off the pool's queue, routes its group again with the
pool excluded, and republishes it unchanged except for that group's pool (the Celery chain behind it is kept),
then acknowledges the original: a crash in between duplicates a message, which the job store absorbs; none is
lost. The router stops choosing the pool too (the `unavailable` set) until a worker serves it again. Jobs that
the lost workers had taken come back to the pool's queue after the visibility timeout and are moved on the
next pass.

One worker at a time runs a pass (a Redis lock, `RebalanceTurns`), every heartbeat, on its own thread;
`scheduler rebalance` runs one by hand, `scheduler rebalance --loop` as its own process (then
`SCHEDULER_REBALANCE_IN_WORKERS=false` leaves it to that process).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import select

from planner.crud import jobs as crud
from planner.db import models as m
from planner.db.base import utcnow
from scheduler.dispatch import Dispatcher, DispatchError
from scheduler.routing import JobShape, NoCapacityError, NoRouteError, RoutingTable, decide_group, job_salt
from scheduler.state import SchedulerState, WorkerInfo

log = logging.getLogger("scheduler.rebalance")


def pools_to_evacuate(
    workers: Sequence[WorkerInfo], lost_hosts: set[str], *, now: float, worker_lost_s: float
) -> set[str]:
    """Pools that had a worker on a lost host and have no live worker on another host."""
    serving: dict[str, list[WorkerInfo]] = {}
    for w in workers:
        for pool in w.pools:
            serving.setdefault(pool, []).append(w)
    out = set()
    for pool, ws in serving.items():
        if not any(w.host_id in lost_hosts for w in ws):
            continue
        if not any(w.host_id not in lost_hosts and now - w.seen_at <= worker_lost_s for w in ws):
            out.add(pool)
    return out


@dataclass
class RebalanceReport:
    unavailable: set[str] = field(default_factory=set)
    moved: dict[str, int] = field(default_factory=dict)
    redispatched: int = 0


def lost_hosts(dispatcher: Dispatcher) -> set[str]:
    with dispatcher.sessions() as session:
        return set(session.scalars(select(m.Host.id).where(m.Host.status == "lost")))


def evacuate_pool(dispatcher: Dispatcher, pool: str, table: RoutingTable, *, limit: int = 100_000) -> int:
    """Move the queued messages of a pool to other pools of the same group; returns how many moved."""
    settings = dispatcher.settings
    app = dispatcher.app
    source = settings.queue_name(pool)
    exclude = frozenset({pool})
    moved = 0
    sessions = dispatcher.sessions
    with app.connection_for_write() as conn, app.producer_or_acquire() as producer:
        channel: Any = conn.default_channel
        while moved < limit:
            message = channel.basic_get(queue=source, no_ack=False)
            if message is None:
                break
            args, kwargs, embed = message.decode()
            payload: dict[str, Any] = args[0]
            g = int(payload["group"])
            shape = JobShape(
                payload["job_id"], payload["workload"], payload["height"], payload["width"], payload["steps"]
            )
            try:
                groups = table.groups(payload["workload"])
                if g >= len(groups):
                    raise NoRouteError(f"the plan in force has no group {g} for workload {payload['workload']!r}")
                target, work = decide_group(groups[g], dispatcher.backlog(), shape, job_salt(shape.job_id), exclude)
            except (NoRouteError, NoCapacityError) as exc:
                # Nowhere to go: leave it where it is (first in line), for when the pool or another comes back.
                message.reject(requeue=True)
                log.warning("cannot move job %s off pool %s: %s", payload["job_id"], pool, exc)
                break
            old_work = float(payload["work"][g])
            payload["route"][g] = target.pool
            payload["work"][g] = work
            queue = app.amqp.queues[settings.queue_name(target.pool)]
            props = {k: message.properties[k] for k in ("correlation_id", "reply_to") if k in message.properties}
            producer.publish(
                [args, kwargs, embed],
                serializer="json",
                headers=message.headers,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                retry=True,
                **props,
            )
            message.ack()
            dispatcher.state.add_backlog({pool: -old_work, target.pool: work})
            with sessions() as session:
                crud.move_job(session, job_id=payload["job_id"], pool=target.pool)
                session.commit()
            moved += 1
    if moved:
        log.info("moved %d queued jobs off pool %s", moved, pool)
    return moved


def resend_forgotten(dispatcher: Dispatcher) -> int:
    """Send again the queued jobs whose dispatch never got recorded (their submitter died mid-way)."""
    before = utcnow() - timedelta(seconds=dispatcher.settings.dispatch_grace_s)
    sent = 0
    with dispatcher.sessions() as session:
        for job in crud.undispatched_jobs(session, created_before=before, fleet=dispatcher.settings.fleet):
            try:
                dispatcher.redispatch(session, job)
                sent += 1
            except NoCapacityError as exc:  # it stays queued for the next pass, when a pool is back
                log.warning("job %s waits for capacity: %s", job.id, exc)
            except NoRouteError as exc:
                crud.fail_job(session, job_id=job.id, error=str(exc), dead=False)
                session.commit()
            except DispatchError:
                log.warning("broker refused job %s again; next pass", job.id)
                break
    return sent


def _job_id_of(message: Any) -> str | None:
    """The job id in a kombu Redis message (its Celery body: base64 JSON [args, kwargs, embed])."""
    try:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return str(json.loads(body)[0][0]["job_id"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def messages_in_broker(dispatcher: Dispatcher, wanted: set[str]) -> tuple[dict[str, float], set[str]]:
    """Which of these jobs have a message held (unacknowledged) by a worker, with when it was delivered (the
    transport's `unacked_index` score, epoch seconds), and which one waiting in a queue."""
    settings = dispatcher.settings
    client = dispatcher.redis
    held: dict[str, float] = {}
    scored: Any = client.zrange(f"{settings.key_prefix}unacked_index", 0, -1, withscores=True)
    delivered: dict[Any, float] = {tag: float(score) for tag, score in scored}
    for tag, raw in client.hgetall(f"{settings.key_prefix}unacked").items():  # [message, exchange, routing key]
        try:
            job = _job_id_of(json.loads(raw)[0])
        except (ValueError, IndexError, TypeError):
            job = None
        if job in wanted:
            held[job] = float(delivered.get(tag, time.time()))
    found: set[str] = set()
    for key in client.scan_iter(match=f"{settings.key_prefix}{settings.queue_prefix}*", count=1000):
        if found | set(held) >= wanted:
            break
        if client.type(key) != b"list":
            continue
        for envelope in client.lrange(key, 0, -1):
            try:
                job = _job_id_of(json.loads(envelope))
            except ValueError:
                job = None
            if job in wanted:
                found.add(job)
    return held, found


def _held_by(job: m.Job, worker: WorkerInfo | None) -> bool:
    """Whether a live worker of the job's worker name is the process that claimed it: a worker restarted under
    the same name (a fixed `--name`, a supervisor's restart) heartbeats as alive, but the jobs its previous
    process claimed (before this one started; both times from that host's clock) are nobody's."""
    if worker is None:
        return False
    claimed = job.updated_at if job.updated_at.tzinfo else job.updated_at.replace(tzinfo=UTC)
    return claimed.timestamp() >= worker.started_at


def resend_lost(dispatcher: Dispatcher, workers: Sequence[WorkerInfo]) -> int:
    """Send again the dispatched jobs whose message is nowhere: not queued, not held by a live worker.

    The Redis transport takes a message off its queue (BRPOP) before it records it as unacknowledged, so a worker
    killed in between loses it. Such a job stays queued (or running, mid-chain) and nothing touches it: after
    `lost_after_s` it is looked for in the broker and, if absent, sent again from its first group (a message
    that was only in transit makes a duplicate, which the job store absorbs). A running job whose worker is gone
    (no heartbeat for `worker_lost_s`: killed, its host down) is sent again as soon as that is known, whether its
    message is held unacknowledged (which would otherwise wait for the visibility timeout, an hour by default)
    or not: with the shipped defaults (heartbeat 5 s, `worker_lost_s` 15 s, a pass every 5 s) a killed worker's
    jobs are sent again within about 25 s (docs/scheduler.md: "Recovery time"); the held message
    comes back after that timeout as a duplicate, which the job store absorbs; so is one claimed by an earlier
    process of a worker that was restarted under the same name. A job with a message waiting in a
    queue (a later group of its chain) is left alone: it runs when its turn comes. Rate-limited: one pass per
    min(`lost_after_s` / 2, `worker_lost_s` / 3) across the workers.
    """
    settings = dispatcher.settings
    if not settings.broker_is_redis:
        return 0  # AMQP brokers hand a message over atomically
    cadence_s = min(settings.lost_after_s / 2, settings.worker_lost_s / 3)
    if not dispatcher.redis.set(f"{settings.key_prefix}lock:lost-scan", b"1", nx=True, px=int(cadence_s * 1000)):
        return 0
    since = utcnow() - timedelta(seconds=settings.lost_after_s)
    orphaned_since = utcnow() - timedelta(seconds=settings.worker_lost_s)
    now = time.time()
    live = {w.name: w for w in workers if now - w.seen_at <= settings.worker_lost_s}
    sessions = dispatcher.sessions
    with sessions() as session:
        candidates = {j.id: j for j in crud.stalled_jobs(session, unchanged_since=orphaned_since, fleet=settings.fleet)}
        if not candidates:
            return 0
        held, waiting = messages_in_broker(dispatcher, set(candidates))
        sent = 0
        for job_id, job in candidates.items():
            if job_id in waiting:
                continue
            # Its worker's silence is the evidence, no `lost_after_s` needed: a running job whose worker is gone,
            # or a queued one whose message was delivered `worker_lost_s` ago and never claimed (a live worker
            # claims what it takes at once: it reserves one message per thread).
            holder_gone = (
                job.state == "running" and job.worker is not None and not _held_by(job, live.get(job.worker))
            ) or (job.state == "queued" and job_id in held and now - held[job_id] > settings.worker_lost_s)
            if job_id in held and not holder_gone:
                continue
            if not holder_gone and job.updated_at.replace(tzinfo=job.updated_at.tzinfo or UTC) >= since:
                continue  # nowhere in the broker, but not for `lost_after_s` yet: maybe in transit
            fresh = crud.get_job(session, job_id=job_id)
            cutoff = orphaned_since if holder_gone else since
            if fresh is None or fresh.state not in crud.ACTIVE_STATES or fresh.updated_at >= cutoff:
                continue  # it moved meanwhile
            why = f"its worker {job.worker} is gone" if holder_gone else "it has no message in the broker"
            log.warning("job %s (%s on %s): %s; sending it again", job_id, job.state, job.pool, why)
            try:
                route = dispatcher.redispatch(session, fresh)
                crud.move_job(session, job_id=job_id, pool=route.pools[0])  # and it was touched now
                session.commit()
                sent += 1
            except NoCapacityError as exc:  # it stays as it is; the next pass looks again
                log.warning("job %s waits for capacity: %s", job_id, exc)
            except NoRouteError as exc:
                crud.fail_job(session, job_id=job_id, error=str(exc), dead=False)
                session.commit()
            except DispatchError:
                break
    return sent


def rebalance_once(dispatcher: Dispatcher, *, now: float | None = None) -> RebalanceReport:
    """One pass: recompute unavailable pools, evacuate them, resend forgotten jobs."""
    settings = dispatcher.settings
    now = time.time() if now is None else now
    workers = dispatcher.state.workers()
    for w in workers:  # forget workers long gone (restarted under another name)
        if now - w.seen_at > 20 * settings.worker_lost_s:
            dispatcher.state.remove_worker(w.name)
    lost = pools_to_evacuate(workers, lost_hosts(dispatcher), now=now, worker_lost_s=settings.worker_lost_s)
    report = RebalanceReport(unavailable=lost)
    dispatcher.state.set_unavailable(lost)
    dispatcher.tables.invalidate()
    if lost:
        table = dispatcher.table()
        dispatcher.refresh_backlog()
        for pool in sorted(lost):
            n = evacuate_pool(dispatcher, pool, table)
            if n:
                report.moved[pool] = n
    report.redispatched = resend_forgotten(dispatcher) + resend_lost(dispatcher, workers)
    return report


class RebalanceTurns:
    """Passes taken in turn by everyone offering them (each worker, every heartbeat, and `scheduler rebalance
    --loop`): whoever holds the Redis lock runs the pass, the others skip it. The dispatcher is built on first
    use (a worker that never wins a turn never connects a producer)."""

    def __init__(self, make_dispatcher: Callable[[], Dispatcher], *, holder: str, lock_s: float) -> None:
        self.make_dispatcher = make_dispatcher
        self.holder = holder
        self.lock_s = lock_s
        self._dispatcher: Dispatcher | None = None

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = self.make_dispatcher()
        return self._dispatcher

    def take_turn(self, state: SchedulerState) -> RebalanceReport | None:
        """One pass if no one else is running one (None if someone is)."""
        if not state.try_lock("rebalance", self.lock_s, self.holder):
            return None
        try:
            report = rebalance_once(self.dispatcher)
        finally:
            state.unlock("rebalance", self.holder)
        if report.moved or report.redispatched:
            log.warning("rebalance: moved %s, resent %d", report.moved, report.redispatched)
        return report
