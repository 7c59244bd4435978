"""The routing decision: a pure function of (routing table, backlog snapshot, job).

A plan's routing table lists pools: one queue per (workload, group, family), each with its planned capacity in
images/s at the workload's planned size and steps. A job goes, for each group of its workload's topology, to
the pool where it would finish first: `(backlog + work) / capacity`, with the backlog and the job's work in the
pool's planned images. The job's work is resolution x steps relative to the planned image (a 2048^2 job at 50
steps is 8x the work of a 1024^2 job at 25 steps on a denoiser pool), not 1. Under load this sends each pool a
share of the traffic in proportion to its capacity, and it steers around a pool whose backlog has grown (a slow
or lost replica). Ties (idle pools of equal capacity) are broken by a hash of the job id, so the function stays
deterministic and still spreads jobs.

Nothing here does I/O: the table and the snapshot are passed in, which makes the decision easy to test and
cheap (the benchmark measures it in microseconds).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import inf

from planner.core.batching import BatchingPolicy
from planner.core.errors import InputError, UnavailableError, UnroutableError

DENOISER = "denoiser"
VAE_DECODER = "vae_decoder"


class NoRouteError(UnroutableError):
    """The plan in force does not route the job's workload: the request's fault (422), or the plan's."""


class NoCapacityError(UnavailableError):
    """The workload is routed, but none of a group's pools can take a job now (drained, lost): a transient state,
    so a job waits (queued) and a new submission is a 503 to resend, not a failure of the request."""


@dataclass(frozen=True, slots=True)
class Pool:
    """One pool of the routing table (the API's `pools[]` entry, plus the workload's planned image)."""

    pool: str
    workload: str
    group_index: int
    model: str
    stages: tuple[str, ...]
    family: str
    recipes: Mapping[str, str]
    batch: int
    replicas: float
    capacity: float
    weight: float
    ref_height: int | None = None
    ref_width: int | None = None
    ref_steps: int | None = None

    @property
    def replica_rate(self) -> float:
        """Planned images/s of one replica (the service rate a worker should achieve while busy)."""
        return self.capacity / self.replicas if self.replicas > 0 else self.capacity


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """A versioned routing table; `groups(workload)` is precomputed for the hot path."""

    plan_id: int | None
    version: int
    pools: tuple[Pool, ...]
    batching: BatchingPolicy | None = None
    """The batching policy the plan was simulated with (its JSON's `batching`); None: the plan names none."""
    _groups: dict[str, tuple[tuple[Pool, ...], ...]] = field(default_factory=dict, compare=False, repr=False)
    _by_name: dict[str, Pool] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        staged: dict[str, dict[int, list[Pool]]] = {}
        for p in self.pools:
            staged.setdefault(p.workload, {}).setdefault(p.group_index, []).append(p)
            self._by_name[p.pool] = p
        for workload, groups in staged.items():
            indices = sorted(groups)
            if indices != list(range(len(indices))):
                raise InputError(
                    f"routing table v{self.version}: workload {workload!r} has groups {indices}, not 0..n-1; "
                    "fix the plan's routing entries (every group of a topology needs a pool)."
                )
            self._groups[workload] = tuple(tuple(groups[i]) for i in indices)

    def groups(self, workload: str) -> tuple[tuple[Pool, ...], ...]:
        try:
            return self._groups[workload]
        except KeyError:
            raise NoRouteError(
                f"workload {workload!r} is not in the active plan (plan {self.plan_id}, routing v{self.version}); "
                f"known workloads: {sorted(self._groups)}. Submit to one of them or activate a plan that has it."
            ) from None

    def get(self, pool: str) -> Pool | None:
        return self._by_name.get(pool)

    @property
    def workloads(self) -> list[str]:
        return sorted(self._groups)


EMPTY_TABLE = RoutingTable(plan_id=None, version=0, pools=())


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the router knows of the pools right now: outstanding work (planned images) and unavailable pools."""

    work: Mapping[str, float] = field(default_factory=dict)
    unavailable: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class JobShape:
    """The part of a job routing looks at."""

    job_id: str
    workload: str
    height: int
    width: int
    steps: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """The decision: one pool per group, the job's work on each, and the table version it came from."""

    plan_id: int | None
    version: int
    pools: tuple[str, ...]
    work: tuple[float, ...]


def job_work(pool: Pool, height: int, width: int, steps: int | None) -> float:
    """A job's work on a pool, in the pool's planned images: resolution (x steps where the denoiser runs).

    A text-encoder-only pool does the same work for any image size (1). A pool with no planned image recorded
    counts pixels x steps relative to the job itself (1).
    """
    if DENOISER not in pool.stages and VAE_DECODER not in pool.stages:
        return 1.0
    ref_px = (pool.ref_height or height) * (pool.ref_width or width)
    work = (height * width) / ref_px
    if DENOISER in pool.stages and steps is not None and pool.ref_steps:
        work *= steps / pool.ref_steps
    return work


def decide_group(
    candidates: tuple[Pool, ...], backlog: Backlog, job: JobShape, salt: int, exclude: frozenset[str] = frozenset()
) -> tuple[Pool, float]:
    """The pool of one group with the earliest expected finish, and the job's work there."""
    best: list[Pool] = []
    best_work: list[float] = []
    best_t = inf
    for p in candidates:
        if p.capacity <= 0 or p.weight <= 0 or p.pool in backlog.unavailable or p.pool in exclude:
            continue
        w = job_work(p, job.height, job.width, job.steps)
        t = (max(backlog.work.get(p.pool, 0.0), 0.0) + w) / p.capacity
        if t < best_t * (1 - 1e-9):
            best, best_work, best_t = [p], [w], t
        elif t <= best_t * (1 + 1e-9):
            best.append(p)
            best_work.append(w)
    if not best:
        names = [p.pool for p in candidates]
        raise NoCapacityError(
            f"no available pool for workload {job.workload!r} group {candidates[0].group_index} "
            f"(pools {names} are drained, lost or have no capacity); bring a worker of one of them up "
            "or activate a plan with capacity for it."
        )
    pick = salt % len(best)
    return best[pick], best_work[pick]


def decide(table: RoutingTable, backlog: Backlog, job: JobShape) -> Route:
    """Pick one pool per group: the earliest expected finish, `(backlog + work) / capacity`."""
    chosen: list[str] = []
    works: list[float] = []
    salt = job_salt(job.job_id)
    for candidates in table.groups(job.workload):
        pool, w = decide_group(candidates, backlog, job, salt)
        chosen.append(pool.pool)
        works.append(w)
    return Route(plan_id=table.plan_id, version=table.version, pools=tuple(chosen), work=tuple(works))


def job_salt(job_id: str) -> int:
    return zlib.crc32(job_id.encode())
