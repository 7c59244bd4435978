"""Dynamic batching: task threads hand items to one GPU thread, which runs them in batches.

A worker runs Celery's thread pool with about twice the plan's batch in threads, each holding one job (prefetch
1 per thread, acks late). A thread does the job's CPU work (tokenizing, reading an intermediate) itself, then
submits the item here and waits; the GPU thread takes the oldest pending items of one batch key (pool, size,
steps: items that can share a call), up to the plan's batch, waiting at most `wait_s` for a batch to fill, and
not at all when every thread is already waiting (no one else can arrive). While a batch runs, the other threads
prepare the next one and write the previous one's results: CPU work stays off the GPU's critical path.

The GPU thread's busy time (the batch calls, which synchronise the device) over the wall time is the share of
time the GPU was busy. Per pool, the work of full batches (at the batch limit, in the plan's images: a job's
resolution x steps against the planned image) over their busy seconds is the service rate the drift check
compares with the plan; a partial batch runs below the planned rate by design (light load) and is not evidence.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class BatchKey(NamedTuple):
    """Items batch together only when they run the same pool's modules at the same shape."""

    pool: str
    height: int
    width: int
    steps: int | None


@dataclass
class _Item:
    key: BatchKey
    inputs: Any
    future: Future[Any]
    enqueued_at: float


@dataclass
class PoolStats:
    images: int = 0
    batches: int = 0
    busy_s: float = 0.0
    full_work: float = 0.0  # planned images of work done in full batches
    full_busy_s: float = 0.0  # the busy seconds of those batches


@dataclass
class BatcherStats:
    """Counters since start; the monitor takes differences between two reads."""

    started_at: float
    busy_s: float = 0.0
    swap_s: float = 0.0
    batches: int = 0
    images: int = 0
    pools: dict[str, PoolStats] = field(default_factory=dict)

    def copy(self) -> BatcherStats:
        return BatcherStats(
            started_at=self.started_at,
            busy_s=self.busy_s,
            swap_s=self.swap_s,
            batches=self.batches,
            images=self.images,
            pools={
                k: PoolStats(v.images, v.batches, v.busy_s, v.full_work, v.full_busy_s) for k, v in self.pools.items()
            },
        )


RunBatch = Callable[[BatchKey, Sequence[Any]], Sequence[Any]]
"""Runs one batch and returns one output per input, in order (it must synchronise the device before returning)."""


class Batcher:
    """One GPU thread fed by many task threads."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: Callable[[str], int],
        wait_s: float,
        max_waiting: int,
        prepare_key: Callable[[BatchKey], float] | None = None,
        work_of: Callable[[BatchKey], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "gpu",
    ) -> None:
        """`max_waiting` is the number of task threads: when all of them wait here, a batch starts at once.

        `prepare_key(key)` runs in the GPU thread before a batch (loads or swaps the pool's modules) and returns
        the seconds it spent, counted as swap time, not as busy time. `work_of(key)` is one item's work in the
        pool's planned images (1 when not given).
        """
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_waiting = max(1, max_waiting)
        self.prepare_key = prepare_key
        self.work_of = work_of
        self.clock = clock
        self._cond = threading.Condition()
        self._pending: dict[BatchKey, deque[_Item]] = {}
        self._count = 0
        self._stop = False
        self.stats = BatcherStats(started_at=clock())
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            for items in self._pending.values():
                for item in items:
                    item.future.set_exception(RuntimeError("the worker is stopping"))
            self._pending.clear()

    def submit(self, key: BatchKey, inputs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._cond:
            if self._stop:
                raise RuntimeError("the worker is stopping")
            self._pending.setdefault(key, deque()).append(_Item(key, inputs, fut, self.clock()))
            self._count += 1
            self._cond.notify_all()
        return fut

    @property
    def pending(self) -> int:
        return self._count

    def snapshot(self) -> BatcherStats:
        with self._cond:
            return self.stats.copy()

    def _next_batch(self) -> tuple[list[_Item], bool] | None:
        """Wait for a batch that is full, or has waited `wait_s`, or cannot grow; None when stopping.

        Also says whether the batch is full (at the limit it was formed under): only full batches are drift
        evidence."""
        with self._cond:
            while True:
                if self._stop:
                    return None
                if not self._count:
                    self._cond.wait()
                    continue
                key, queue = min(((k, q) for k, q in self._pending.items() if q), key=lambda kq: kq[1][0].enqueued_at)
                limit = max(1, self.max_batch(key.pool))
                due = queue[0].enqueued_at + self.wait_s
                now = self.clock()
                if len(queue) >= limit or now >= due or self._count >= self.max_waiting:
                    batch = [queue.popleft() for _ in range(min(limit, len(queue)))]
                    if not queue:
                        del self._pending[key]
                    self._count -= len(batch)
                    return batch, len(batch) >= limit
                self._cond.wait(timeout=due - now)

    def _loop(self) -> None:
        while True:
            formed = self._next_batch()
            if formed is None:
                return
            batch, full = formed
            key = batch[0].key
            try:
                if self.prepare_key is not None:
                    swap = self.prepare_key(key)
                    with self._cond:
                        self.stats.swap_s += swap
                started = self.clock()
                outputs = list(self.run_batch(key, [item.inputs for item in batch]))
                busy = self.clock() - started
                if len(outputs) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} returned {len(outputs)} outputs")
            except BaseException as exc:  # every waiting thread gets the error and decides to retry
                for item in batch:
                    item.future.set_exception(exc)
                continue
            full_work = len(batch) * (self.work_of(key) if self.work_of is not None else 1.0) if full else 0.0
            with self._cond:
                self.stats.busy_s += busy
                self.stats.batches += 1
                self.stats.images += len(batch)
                ps = self.stats.pools.setdefault(key.pool, PoolStats())
                ps.images += len(batch)
                ps.batches += 1
                ps.busy_s += busy
                if full:
                    ps.full_work += full_work
                    ps.full_busy_s += busy
            for item, out in zip(batch, outputs, strict=True):
                item.future.set_result(out)
