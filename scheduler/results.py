"""Result images, stored where the settings say: a directory (local or shared storage) by default.

Each attempt writes its own file (job id + a random token), then races for the job's `done` UPDATE; the loser
deletes its file, and the winner deletes what attempts that crashed between writing and recording left behind.
So a job has exactly one result recorded, one file, and never a half-written one. Paths in the store are
relative to the results directory, so the API and the workers may mount it in different places.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


class DirectoryResults:
    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, job_id: str, data: bytes, suffix: str = ".png") -> tuple[str, str]:
        """Store one attempt's result; returns (relative path, sha256)."""
        rel = f"{job_id[:2]}/{job_id}.{uuid.uuid4().hex[:8]}{suffix}"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return rel, hashlib.sha256(data).hexdigest()

    def path(self, rel: str) -> Path:
        """The file of a stored relative path (refusing paths that leave the results directory)."""
        root = self.root.resolve()
        path = (root / rel).resolve()
        if root not in path.parents:
            raise ValueError(f"result path {rel!r} leaves the results directory")
        return path

    def read(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def discard_others(self, job_id: str, keep: str) -> int:
        """Delete the files other attempts of a job left (a worker killed between writing and recording)."""
        removed = 0
        kept = self.path(keep)
        for path in (self.root / job_id[:2]).glob(f"{job_id}.*.png"):
            if path.resolve() != kept:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def delete(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)
