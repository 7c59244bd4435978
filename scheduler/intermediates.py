"""Intermediates between the groups of a split topology: embeddings and latents, size-bounded, cleaned up.

Group k writes its outputs under a key derived from (job, k+1) and passes the key along the Celery chain;
group k+1 reads them and deletes them once its own output is safely stored (a redelivery of group k+1 still
finds them). Every intermediate also expires (`intermediate_ttl_s`), so a job that dies mid-chain leaves
nothing behind for long. Redis holds them by default; a shared directory suits large latents (video, 4K).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import redis

from scheduler import codec
from scheduler.config import SchedulerSettings
from scheduler.errors import IntermediateMissingError, IntermediateTooLargeError


class IntermediateStore(Protocol):
    """Where a job's values between stage groups wait (Redis, or a directory on shared storage)."""

    def put(self, job_id: str, group: int, values: Mapping[str, Any]) -> str: ...

    def get(self, ref: str) -> dict[str, Any]: ...

    def delete(self, ref: str) -> None: ...

    def sweep(self) -> int: ...


def _check_size(data: bytes, limit: int, job_id: str, group: int) -> None:
    if len(data) > limit:
        raise IntermediateTooLargeError(
            f"job {job_id}: the intermediate for group {group} is {len(data)} bytes, above the bound of {limit}; "
            "raise SCHEDULER_INTERMEDIATE_MAX_BYTES or use SCHEDULER_INTERMEDIATES=directory on shared storage"
        )


class RedisIntermediates:
    def __init__(self, client: redis.Redis, *, prefix: str, max_bytes: int, ttl_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.ttl_ms = int(ttl_s * 1000)

    def key(self, job_id: str, group: int) -> str:
        return f"{self.prefix}im:{job_id}:{group}"

    def put(self, job_id: str, group: int, values: Mapping[str, Any]) -> str:
        data = codec.pack(values)
        _check_size(data, self.max_bytes, job_id, group)
        key = self.key(job_id, group)
        self.client.set(key, data, px=self.ttl_ms)
        return key

    def get(self, ref: str) -> dict[str, Any]:
        data = self.client.get(ref)
        if data is None:
            raise IntermediateMissingError(f"intermediate {ref} is gone (expired or consumed); requeue the job")
        assert isinstance(data, bytes)
        return codec.unpack(data)

    def delete(self, ref: str) -> None:
        self.client.delete(ref)

    def sweep(self) -> int:
        return 0  # Redis expires them itself

    def count(self) -> int:
        return sum(1 for _ in self.client.scan_iter(match=f"{self.prefix}im:*", count=1000))


class DirectoryIntermediates:
    def __init__(self, root: Path, *, max_bytes: int, ttl_s: float) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        root.mkdir(parents=True, exist_ok=True)

    def put(self, job_id: str, group: int, values: Mapping[str, Any]) -> str:
        data = codec.pack(values)
        _check_size(data, self.max_bytes, job_id, group)
        name = f"{job_id.replace(':', '.')}.{group}.bin"
        tmp = self.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)
        return name

    def get(self, ref: str) -> dict[str, Any]:
        try:
            return codec.unpack((self.root / Path(ref).name).read_bytes())
        except FileNotFoundError:
            raise IntermediateMissingError(
                f"intermediate {ref} is gone (expired or consumed); requeue the job"
            ) from None

    def delete(self, ref: str) -> None:
        (self.root / Path(ref).name).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Delete intermediates older than the TTL (a job that died mid-chain)."""
        cutoff = time.time() - self.ttl_s
        removed = 0
        for path in self.root.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def count(self) -> int:
        return sum(1 for p in self.root.iterdir() if p.suffix == ".bin")


def make_intermediates(settings: SchedulerSettings, client: redis.Redis) -> IntermediateStore:
    if settings.intermediates == "directory":
        return DirectoryIntermediates(
            settings.intermediates_dir, max_bytes=settings.intermediate_max_bytes, ttl_s=settings.intermediate_ttl_s
        )
    return RedisIntermediates(
        client, prefix=settings.key_prefix, max_bytes=settings.intermediate_max_bytes, ttl_s=settings.intermediate_ttl_s
    )
