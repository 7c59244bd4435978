"""The scheduler's shared state in Redis, every key under the settings' prefix.

- `backlog` (hash pool -> outstanding work in planned images): the router adds a job's work to each pool of its
  route when it dispatches; a worker subtracts it when it finishes the group. The router reads it as its
  backlog snapshot.
- `unavailable` (set of pools): pools whose every worker was on a host the planner marked lost.
- `workers` (hash worker -> JSON: host, pools, last heartbeat): the registry the rebalancer reads.
- `samples:<pool>` (list of JSON samples, newest first): what each replica achieved, for the drift check.
- `group-done:<job>:<group>`: set once by the delivery that finished a group, so a duplicate delivery of an
  intermediate group neither continues the chain twice nor counts its work twice.
- `dead-letter` (list): the jobs that ended dead, with why, for an operator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from scheduler.drift import Sample
from scheduler.routing import Backlog

SAMPLES_KEPT = 2000


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    host_id: str | None
    pools: tuple[str, ...]
    seen_at: float
    pid: int = 0
    ready: bool = False
    started_at: float = 0.0  # wall time this process started: a restart under the same name is a new worker
    refused: dict[str, str] = field(default_factory=dict)
    """Pools this worker was given but does not serve, with why (a model folder missing a part, a corrupt file):
    an operator reading the registry sees them without the worker's log."""


class SchedulerState:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.backlog_key = f"{prefix}backlog"
        self.unavailable_key = f"{prefix}unavailable"
        self.workers_key = f"{prefix}workers"
        self.dead_letter_key = f"{prefix}dead-letter"

    # Backlog.

    def add_backlog(self, work: Mapping[str, float]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for pool, w in work.items():
            pipe.hincrbyfloat(self.backlog_key, pool, w)
        pipe.execute()

    def snapshot(self) -> Backlog:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.backlog_key)
        pipe.smembers(self.unavailable_key)
        raw, unavailable = pipe.execute()
        work = {k.decode(): float(v) for k, v in cast(dict[bytes, bytes], raw).items()}
        return Backlog(work=work, unavailable=frozenset(u.decode() for u in cast(set[bytes], unavailable)))

    def set_unavailable(self, pools: Iterable[str]) -> None:
        pools = sorted(set(pools))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.unavailable_key)
        if pools:
            pipe.sadd(self.unavailable_key, *pools)
        pipe.execute()

    # Group completion markers.

    def mark_group_done(self, job_id: str, group: int, ttl_s: float) -> bool:
        """True for the first delivery that finished this group of this job."""
        return bool(self.client.set(f"{self.prefix}group-done:{job_id}:{group}", b"1", nx=True, px=int(ttl_s * 1000)))

    def group_done(self, job_id: str, group: int) -> bool:
        return bool(self.client.exists(f"{self.prefix}group-done:{job_id}:{group}"))

    # Workers.

    def heartbeat(self, info: WorkerInfo) -> None:
        self.client.hset(self.workers_key, info.name, json.dumps(asdict(info)))

    def remove_worker(self, name: str) -> None:
        self.client.hdel(self.workers_key, name)

    def workers(self) -> list[WorkerInfo]:
        out = []
        for raw in cast(dict[bytes, bytes], self.client.hgetall(self.workers_key)).values():
            d = json.loads(raw)
            out.append(
                WorkerInfo(
                    d["name"],
                    d.get("host_id"),
                    tuple(d["pools"]),
                    float(d["seen_at"]),
                    d.get("pid", 0),
                    d.get("ready", False),
                    float(d.get("started_at", 0.0)),
                    dict(d.get("refused") or {}),
                )
            )
        return out

    # Samples for the drift check.

    def push_samples(self, pool: str, samples: Iterable[Sample], ttl_s: float, *, plan_id: int | None) -> None:
        """Keyed by plan too: a pool name the next plan reuses starts with no samples of the old one."""
        key = f"{self.prefix}samples:{plan_id}:{pool}"
        rows = [json.dumps([s.t, s.work, s.busy_s]) for s in samples]
        if not rows:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(key, *rows)
        pipe.ltrim(key, 0, SAMPLES_KEPT - 1)
        pipe.expire(key, int(ttl_s) + 60)
        pipe.execute()

    def samples(self, pool: str, since: float, *, plan_id: int | None) -> list[Sample]:
        out = []
        key = f"{self.prefix}samples:{plan_id}:{pool}"
        for raw in cast(list[bytes], self.client.lrange(key, 0, SAMPLES_KEPT - 1)):
            t, work, busy = json.loads(raw)
            if t >= since:
                out.append(Sample(t=float(t), work=float(work), busy_s=float(busy)))
        out.reverse()
        return out

    # Dead letter.

    def dead_letter(self, job_id: str, error: str, payload: Mapping[str, Any]) -> None:
        entry = {"job_id": job_id, "error": error, "at": time.time(), "payload": dict(payload)}
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.dead_letter_key, json.dumps(entry, default=str))
        pipe.ltrim(self.dead_letter_key, 0, 9999)
        pipe.execute()

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(r) for r in cast(list[bytes], self.client.lrange(self.dead_letter_key, 0, limit - 1))]

    # Locks.

    def try_lock(self, name: str, ttl_s: float, owner: str) -> bool:
        return bool(self.client.set(f"{self.prefix}lock:{name}", owner.encode(), nx=True, px=int(ttl_s * 1000)))

    def unlock(self, name: str, owner: str) -> None:
        key = f"{self.prefix}lock:{name}"
        if self.client.get(key) == owner.encode():
            self.client.delete(key)
