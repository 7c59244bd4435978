"""Host liveness from heartbeats, as pure functions of (now, last sign of life): easy to test with a fake clock.

The idea is Ray Serve's health checks: a host that misses heartbeats for `stale_s` is `stale` (its GPUs stop
counting as available, a plan built now would not count on them), and after `lost_s` it is `lost`. A draining
host (an operator's choice) is `draining` while it is alive; liveness wins over draining, since a host that
stopped reporting is lost whatever it was asked to do. The status is computed on every read, and a periodic
sweep writes it to the store for programs that read the table directly.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

Liveness = Literal["active", "stale", "lost"]
HostStatus = Literal["active", "stale", "lost", "draining"]


def liveness(now: datetime, last_seen: datetime, *, stale_s: float, lost_s: float) -> Liveness:
    """`active`, `stale` or `lost` by the time since the host was last heard from (a future time counts as now)."""
    silent = (now - last_seen).total_seconds()
    if silent >= lost_s:
        return "lost"
    if silent >= stale_s:
        return "stale"
    return "active"


def host_status(now: datetime, *, last_seen: datetime, drained: bool, stale_s: float, lost_s: float) -> HostStatus:
    """A host's status: liveness first, then the operator's drain."""
    alive = liveness(now, last_seen, stale_s=stale_s, lost_s=lost_s)
    if alive == "active" and drained:
        return "draining"
    return alive


def thresholds(now: datetime, *, stale_s: float, lost_s: float) -> tuple[datetime, datetime]:
    """The last-seen times at or before which a host is stale, and lost (for the same rule in SQL)."""
    return now - timedelta(seconds=stale_s), now - timedelta(seconds=lost_s)
