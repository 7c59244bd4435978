"""The worker's model cache: each pool's stage modules are built once and kept; LRU swapping when packed.

A worker normally serves one pool and builds its modules once, at start. When a plan packs several low-rate
workloads onto one GPU, the worker serves several pools; if their modules do not all fit (`model_cache_size`),
the least recently used group is unloaded to make room, and the swap is counted (and its time reported apart
from the GPU's busy time) so a plan that packs too much shows up in the metrics.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ModelCache(Generic[K, V]):
    def __init__(
        self,
        capacity: int,
        load: Callable[[K], V],
        unload: Callable[[V], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if capacity < 1:
            raise ValueError("a model cache holds at least one group")
        self.capacity = capacity
        self._load = load
        self._unload = unload
        self._clock = clock
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        self.hits = 0
        self.evictions = 0

    def get(self, key: K) -> tuple[V, float]:
        """The value for a key and the seconds spent loading it now (0.0 on a hit)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key], 0.0
            started = self._clock()
            while len(self._items) >= self.capacity:
                _, old = self._items.popitem(last=False)
                self.evictions += 1
                if self._unload is not None:
                    self._unload(old)
            value = self._load(key)
            self._items[key] = value
            self.loads += 1
            return value, self._clock() - started

    def peek(self, key: K) -> V | None:
        """The value if resident, without loading or reordering (for threads that must not trigger a swap)."""
        return self._items.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def clear(self) -> None:
        with self._lock:
            while self._items:
                _, old = self._items.popitem(last=False)
                if self._unload is not None:
                    self._unload(old)
