"""Dynamic batching: full batches, the wait bound, no waiting when nobody else can arrive, busy share, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from scheduler.batching import Batcher, BatchKey
from scheduler.model_cache import ModelCache

KEY = BatchKey("p.0.cpu", 64, 64, 2)


class Recorder:
    def __init__(self, sleep_s: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.sleep_s = sleep_s

    def __call__(self, key: BatchKey, items: Sequence[Any]) -> list[Any]:
        self.batches.append(list(items))
        time.sleep(self.sleep_s)
        return [x * 10 for x in items]


def test_fills_batches_up_to_the_plan_batch() -> None:
    rec = Recorder(sleep_s=0.05)
    b = Batcher(rec, max_batch=lambda pool: 4, wait_s=1.0, max_waiting=100)
    b.start()
    try:
        futs = [b.submit(KEY, i) for i in range(10)]
        assert [f.result(timeout=10) for f in futs] == [i * 10 for i in range(10)]
    finally:
        b.stop()
    sizes = [len(x) for x in rec.batches]
    assert sizes[:2] == [4, 4]
    assert sum(sizes) == 10
    assert b.stats.images == 10
    assert b.stats.batches == len(sizes)


def test_only_full_batches_count_as_drift_evidence_weighed_by_their_work() -> None:
    """The plan's rate is the rate at its batch: a partial batch (light load) is not evidence of drift, and a
    job bigger than the planned image counts as more work."""
    rec = Recorder(sleep_s=0.02)
    big = BatchKey("p.0.cpu", 128, 64, 2)
    b = Batcher(rec, max_batch=lambda pool: 4, wait_s=0.05, max_waiting=100, work_of=lambda k: k.height / 64)
    b.start()
    try:
        for f in [b.submit(KEY, i) for i in range(4)]:  # one full batch of planned images
            f.result(timeout=10)
        b.submit(KEY, 9).result(timeout=10)  # alone: a partial batch
        for f in [b.submit(big, i) for i in range(4)]:  # a full batch of double-size jobs
            f.result(timeout=10)
    finally:
        b.stop()
    assert [len(x) for x in rec.batches] == [4, 1, 4]
    stats = b.snapshot().pools["p.0.cpu"]
    assert stats.images == 9
    assert stats.full_work == pytest.approx(4 + 4 * 2)
    assert 0 < stats.full_busy_s < stats.busy_s


def test_a_lone_item_waits_at_most_the_wait_bound() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch=lambda pool: 8, wait_s=0.2, max_waiting=100)
    b.start()
    try:
        started = time.monotonic()
        assert b.submit(KEY, 1).result(timeout=5) == 10
        waited = time.monotonic() - started
    finally:
        b.stop()
    assert 0.15 <= waited < 1.5
    assert rec.batches == [[1]]


def test_no_wait_when_every_thread_is_already_waiting() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch=lambda pool: 8, wait_s=5.0, max_waiting=2)
    b.start()
    try:
        started = time.monotonic()
        futs = [b.submit(KEY, i) for i in range(2)]
        assert [f.result(timeout=5) for f in futs] == [0, 10]
        assert time.monotonic() - started < 1.0
    finally:
        b.stop()


def test_items_batch_only_with_their_own_key_oldest_first() -> None:
    rec = Recorder()
    other = BatchKey("p.0.cpu", 128, 128, 2)
    b = Batcher(rec, max_batch=lambda pool: 8, wait_s=0.05, max_waiting=100)
    futs = [b.submit(KEY, 1), b.submit(other, 2), b.submit(KEY, 3)]
    b.start()
    try:
        assert [f.result(timeout=5) for f in futs] == [10, 20, 30]
    finally:
        b.stop()
    assert rec.batches == [[1, 3], [2]]


def test_cpu_work_overlaps_the_gpu_and_busy_time_is_measured() -> None:
    """Threads doing 'CPU work' between batches keep the GPU thread busy: busy share near 1."""
    gpu_s = 0.05
    rec = Recorder(sleep_s=gpu_s)
    b = Batcher(rec, max_batch=lambda pool: 2, wait_s=0.01, max_waiting=4)
    b.start()

    def job(i: int) -> int:
        time.sleep(0.03)  # tokenizing
        out: int = b.submit(KEY, i).result(timeout=10)
        time.sleep(0.03)  # encoding and writing the image
        return out

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(4) as pool:
            assert sorted(pool.map(job, range(24))) == [i * 10 for i in range(24)]
    finally:
        b.stop()
    wall = time.monotonic() - started
    assert b.stats.busy_s == pytest.approx(gpu_s * len(rec.batches), rel=0.5)
    assert b.stats.busy_s / wall > 0.6
    assert b.stats.pools["p.0.cpu"].images == 24


def test_a_failing_batch_fails_each_of_its_items() -> None:
    def boom(key: BatchKey, items: Sequence[Any]) -> list[Any]:
        raise RuntimeError("CUDA error: out of memory")

    b = Batcher(boom, max_batch=lambda pool: 4, wait_s=0.01, max_waiting=100)
    b.start()
    try:
        futs = [b.submit(KEY, i) for i in range(3)]
        for f in futs:
            with pytest.raises(RuntimeError, match="out of memory"):
                f.result(timeout=5)
        assert b.submit(KEY, 1).exception(timeout=5) is not None  # still serving
    finally:
        b.stop()


def test_model_cache_loads_once_and_swaps_least_recently_used() -> None:
    loaded: list[str] = []
    unloaded: list[str] = []
    cache: ModelCache[str, str] = ModelCache(2, load=lambda k: loaded.append(k) or k.upper(), unload=unloaded.append)
    assert cache.get("a")[0] == "A"
    assert cache.get("a")[1] == 0.0
    cache.get("b")
    cache.get("a")
    cache.get("c")  # evicts b, the least recently used
    assert loaded == ["a", "b", "c"]
    assert unloaded == ["B"]
    assert cache.peek("b") is None
    assert cache.peek("a") == "A"
    assert (cache.loads, cache.hits, cache.evictions) == (3, 2, 1)
    lock_free = threading.Thread(target=cache.clear)
    lock_free.start()
    lock_free.join()
    assert sorted(unloaded) == ["A", "B", "C"]
