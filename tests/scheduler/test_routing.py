"""The routing decision is a pure function of (table, backlog snapshot, job): exercised here without I/O."""

from __future__ import annotations

from collections import Counter

import pytest

from scheduler.routing import (
    Backlog,
    JobShape,
    NoCapacityError,
    NoRouteError,
    Pool,
    RoutingTable,
    decide,
    job_work,
)


def pool(
    name: str,
    *,
    workload: str = "sdxl-prod",
    group: int = 0,
    capacity: float = 1.0,
    weight: float = 1.0,
    stages: tuple[str, ...] = ("text_encoder", "denoiser", "vae_decoder"),
) -> Pool:
    return Pool(
        pool=name,
        workload=workload,
        group_index=group,
        model="sdxl",
        stages=stages,
        family=name.rsplit(".", 1)[-1],
        recipes={},
        batch=4,
        replicas=1,
        capacity=capacity,
        weight=weight,
        ref_height=1024,
        ref_width=1024,
        ref_steps=30,
    )


def job(i: int | str = 0, *, workload: str = "sdxl-prod", size: int = 1024, steps: int | None = 30) -> JobShape:
    return JobShape(f"job-{i}", workload, size, size, steps)


def test_job_work_is_resolution_times_steps() -> None:
    p = pool("w.0.h100")
    assert job_work(p, 1024, 1024, 30) == pytest.approx(1.0)
    assert job_work(p, 2048, 2048, 30) == pytest.approx(4.0)
    assert job_work(p, 1024, 1024, 60) == pytest.approx(2.0)
    assert job_work(p, 512, 512, 15) == pytest.approx(0.125)
    te = pool("w.0.l4", stages=("text_encoder",))
    vae = pool("w.2.l4", stages=("vae_decoder",))
    assert job_work(te, 2048, 2048, 60) == 1.0  # a text encoder does the same work at any size
    assert job_work(vae, 2048, 2048, 60) == pytest.approx(4.0)  # a decoder scales with pixels, not steps


def test_idle_pools_of_equal_capacity_share_jobs_by_hash() -> None:
    table = RoutingTable(1, 1, (pool("sdxl-prod.0.a"), pool("sdxl-prod.0.b")))
    picks = Counter(decide(table, Backlog(), job(i)).pools[0] for i in range(400))
    assert set(picks) == {"sdxl-prod.0.a", "sdxl-prod.0.b"}
    assert 150 < picks["sdxl-prod.0.a"] < 250
    # deterministic: same inputs, same answer
    assert decide(table, Backlog(), job(7)) == decide(table, Backlog(), job(7))


def test_load_splits_in_proportion_to_capacity() -> None:
    """Feeding the decisions back as backlog, a 3:1 capacity split takes 3:1 of the jobs."""
    table = RoutingTable(1, 1, (pool("sdxl-prod.0.big", capacity=3.0), pool("sdxl-prod.0.small", capacity=1.0)))
    work: dict[str, float] = {}
    for i in range(400):
        r = decide(table, Backlog(work=work), job(i))
        work[r.pools[0]] = work.get(r.pools[0], 0.0) + r.work[0]
    assert work["sdxl-prod.0.big"] == pytest.approx(300, abs=2)
    assert work["sdxl-prod.0.small"] == pytest.approx(100, abs=2)


def test_backlog_steers_jobs_to_the_pool_that_finishes_first() -> None:
    table = RoutingTable(1, 1, (pool("sdxl-prod.0.big", capacity=4.0), pool("sdxl-prod.0.small", capacity=1.0)))
    assert decide(table, Backlog(), job()).pools == ("sdxl-prod.0.big",)
    # big: (40 + 1) / 4 = 10.25 s; small: (1 + 1) / 1 = 2 s
    snap = Backlog(work={"sdxl-prod.0.big": 40.0, "sdxl-prod.0.small": 1.0})
    assert decide(table, snap, job()).pools == ("sdxl-prod.0.small",)


def test_a_big_job_counts_as_more_work() -> None:
    table = RoutingTable(1, 1, (pool("sdxl-prod.0.big", capacity=4.0), pool("sdxl-prod.0.small", capacity=1.0)))
    snap = Backlog(work={"sdxl-prod.0.big": 6.0, "sdxl-prod.0.small": 0.0})
    # a 1-unit job: big (6+1)/4 = 1.75 s, small 1 s -> small; a 4-unit job: big 2.5 s, small 4 s -> big
    assert decide(table, snap, job(size=1024)).pools == ("sdxl-prod.0.small",)
    r = decide(table, snap, job(size=2048))
    assert r.pools == ("sdxl-prod.0.big",)
    assert r.work == (pytest.approx(4.0),)


def test_unavailable_drained_and_empty_pools_are_skipped() -> None:
    table = RoutingTable(
        1,
        1,
        (
            pool("sdxl-prod.0.a", capacity=10.0),
            pool("sdxl-prod.0.b", capacity=5.0, weight=0.0),
            pool("sdxl-prod.0.c", capacity=0.0),
            pool("sdxl-prod.0.d", capacity=1.0),
        ),
    )
    assert decide(table, Backlog(unavailable=frozenset({"sdxl-prod.0.a"})), job()).pools == ("sdxl-prod.0.d",)
    with pytest.raises(NoCapacityError, match="no available pool"):
        decide(table, Backlog(unavailable=frozenset({"sdxl-prod.0.a", "sdxl-prod.0.d"})), job())


def test_split_topology_gets_one_pool_per_group() -> None:
    table = RoutingTable(
        7,
        7,
        (
            pool("sdxl-prod.0.l4", group=0, stages=("text_encoder",)),
            pool("sdxl-prod.1.h100", group=1, stages=("denoiser", "vae_decoder"), capacity=2.0),
            pool("sdxl-prod.1.a100", group=1, stages=("denoiser", "vae_decoder"), capacity=1.0),
        ),
    )
    r = decide(table, Backlog(), job(size=2048))
    assert r.pools == ("sdxl-prod.0.l4", "sdxl-prod.1.h100")
    assert r.work == (1.0, pytest.approx(4.0))
    assert (r.plan_id, r.version) == (7, 7)


def test_unknown_workload_and_broken_tables_are_refused() -> None:
    table = RoutingTable(1, 1, (pool("sdxl-prod.0.a"),))
    with pytest.raises(NoRouteError, match="not in the active plan"):
        decide(table, Backlog(), job(workload="nope"))
    with pytest.raises(Exception, match=r"groups \[0, 2\]"):
        RoutingTable(1, 1, (pool("w.0.a", workload="w"), pool("w.2.a", workload="w", group=2)))


def test_negative_backlog_counts_as_empty() -> None:
    table = RoutingTable(1, 1, (pool("sdxl-prod.0.a", capacity=1.0), pool("sdxl-prod.0.b", capacity=1.0)))
    snap = Backlog(work={"sdxl-prod.0.a": -50.0, "sdxl-prod.0.b": 0.5})
    assert decide(table, snap, job()).pools == ("sdxl-prod.0.a",)


class FakeSource:
    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.key: tuple[int | None, int, int] = (table.plan_id, 1, len(table.pools))
        self.checks = 0
        self.loads = 0

    def version_key(self) -> tuple[int | None, int, int]:
        self.checks += 1
        return self.key

    def load(self) -> RoutingTable:
        self.loads += 1
        return self.table


def test_table_cache_checks_the_version_and_reloads_only_on_change() -> None:
    import time

    from scheduler.table import TableCache

    t1 = RoutingTable(1, 1, (pool("sdxl-prod.0.a"),))
    t2 = RoutingTable(2, 2, (pool("sdxl-prod.0.b"),))
    now = [0.0]
    source = FakeSource(t1)
    cache = TableCache(source, refresh_s=1.0, clock=lambda: now[0])
    assert cache.get() is t1  # the first load is synchronous
    now[0] = 0.5
    assert cache.get() is t1
    assert (source.checks, source.loads) == (1, 1)  # not due: no query at all
    source.table, source.key = t2, (2, 7, 1)  # a new plan is activated
    now[0] = 1.5
    cache.get()  # due: checked in the background, the old table meanwhile
    deadline = time.monotonic() + 5
    while cache.get() is not t2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get() is t2
    assert decide(cache.get(), Backlog(), job()).pools == ("sdxl-prod.0.b",)  # new jobs follow the new plan
    now[0] = 3.0
    cache.get()
    deadline = time.monotonic() + 5
    while source.checks < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.loads == 2  # same version: checked, not reloaded
    source.table, source.key = t1, (3, 9, 1)
    cache.invalidate()
    assert cache.get() is t1  # after invalidate, synchronously
