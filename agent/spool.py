"""The on-disk spool: probe runs waiting for the planner, one JSON file per run, written atomically.

Why: a result must survive the planner being down and the agent being stopped (SIGTERM, reboot). A run is
written to the spool first and sent after; it leaves the spool only once the planner has stored it (201, or
200 for a run it already had). The run's id is chosen by the agent (uuid4), so a resend after a lost answer
is not stored twice.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_ID = re.compile(r"^[0-9a-fA-F-]{8,64}$")


class Spool:
    """A directory of `<run id>.json` files. Only complete files are ever visible (write, fsync, rename)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def _path(self, run_id: str) -> Path:
        if not _ID.match(run_id):
            raise ValueError(f"spool: {run_id!r} is not a run id (uuid)")
        return self.dir / f"{run_id}.json"

    def put(self, run: dict[str, Any]) -> Path:
        """Store a run (its `id` names the file); replaces an older copy of the same run atomically."""
        path = self._path(str(run["id"]))
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(run, fh, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    def pending(self) -> list[str]:
        """Run ids waiting, oldest first (so results reach the planner in the order they were measured)."""
        files = [p for p in self.dir.glob("*.json") if not p.name.startswith(".")]
        files.sort(key=lambda p: (p.stat().st_mtime, p.name))
        return [p.stem for p in files]

    def load(self, run_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._path(run_id).read_text(encoding="utf-8"))
        return data

    def remove(self, run_id: str) -> None:
        self._path(run_id).unlink(missing_ok=True)

    def quarantine(self, run_id: str, reason: str) -> Path:
        """Move a run the planner refuses (4xx other than auth) aside, so it does not block the others."""
        bad = self.dir / "rejected"
        bad.mkdir(exist_ok=True)
        target = bad / f"{run_id}.json"
        os.replace(self._path(run_id), target)
        (bad / f"{run_id}.reason.txt").write_text(reason, encoding="utf-8")
        return target

    def __len__(self) -> int:
        return len(self.pending())
