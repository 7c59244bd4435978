"""Drift: a pool whose achieved throughput departs from its plan for a sustained window makes the plan stale.

What is compared: the rate a replica achieves while its GPU is busy on full batches (work per busy second,
summed over the pool's replicas) against the plan's rate per replica (capacity / replicas). Work is counted in
the plan's images: a job twice the planned pixels, or with twice the steps, is two. Only batches at the planned
size count: the plan's rate is the rate at that batch, and a batch of one under light load is slower per image
by design, not drift. The wall-clock throughput is not compared: it follows demand, and a pool with little
traffic would look slow while being exactly as fast as planned. A pool that never fills a batch is not judged.
"Sustained" means every one of `buckets` consecutive sub-windows of the window departs beyond the
tolerance in the same direction, each with enough busy time to be evidence; a burst, a warm-up or an idle
stretch does not. Faster than planned is drift too (the plan buys more than it needs).

`drift_decision` is a pure function of (planned rate, samples, clock): tests drive it with a fake clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

from planner.db import models as m


@dataclass(frozen=True, slots=True)
class Sample:
    """What one replica did in full batches in one interval ending at `t` (epoch seconds)."""

    t: float
    work: float  # planned images
    busy_s: float


@dataclass(frozen=True)
class DriftVerdict:
    stale: bool
    reason: str
    ratio: float | None = None
    bucket_ratios: tuple[float | None, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)


def drift_decision(
    *,
    planned_rate: float,
    samples: Sequence[Sample],
    now: float,
    tolerance: float,
    window_s: float,
    buckets: int = 5,
    min_busy_s: float = 5.0,
    pool: str = "",
) -> DriftVerdict:
    """Is the departure from `planned_rate` (images per busy replica-second) beyond tolerance for the window?"""
    if planned_rate <= 0:
        return DriftVerdict(False, f"pool {pool}: no planned rate to compare with")
    start = now - window_s
    width = window_s / buckets
    images = [0.0] * buckets
    busy = [0.0] * buckets
    for s in samples:
        if start < s.t <= now:
            b = min(int((s.t - start) / width), buckets - 1)
            images[b] += s.work
            busy[b] += s.busy_s
    ratios: list[float | None] = [
        (images[b] / busy[b]) / planned_rate if busy[b] >= min_busy_s and busy[b] > 0 else None for b in range(buckets)
    ]
    total_busy = sum(busy)
    ratio = (sum(images) / total_busy) / planned_rate if total_busy > 0 else None
    data: dict[str, Any] = {
        "pool": pool,
        "planned_rate": planned_rate,
        "achieved_rate": ratio * planned_rate if ratio is not None else None,
        "ratio": ratio,
        "bucket_ratios": ratios,
        "tolerance": tolerance,
        "window_s": window_s,
    }
    missing = [b for b, r in enumerate(ratios) if r is None]
    if missing:
        return DriftVerdict(
            False,
            f"pool {pool}: not enough busy time in {len(missing)} of {buckets} sub-windows to judge "
            f"(each needs {min_busy_s:g} s)",
            ratio,
            tuple(ratios),
            data,
        )
    known = cast(list[float], ratios)
    slow = all(r < 1 - tolerance for r in known)
    fast = all(r > 1 + tolerance for r in known)
    assert ratio is not None
    if not (slow or fast):
        return DriftVerdict(False, f"pool {pool}: within tolerance (ratio {ratio:.3f})", ratio, tuple(ratios), data)
    reason = (
        f"pool {pool} achieved {ratio * planned_rate:.4g} images/s per busy replica against a planned "
        f"{planned_rate:.4g} ({(ratio - 1) * 100:+.0f}%), {'below' if slow else 'above'} the ±{tolerance:.0%} "
        f"tolerance in each of {buckets} sub-windows over the last {window_s:g} s; re-plan with fresh measurements"
    )
    return DriftVerdict(True, reason, ratio, tuple(ratios), data)


def mark_plan_stale(session: Session, *, plan_id: int, message: str, data: Mapping[str, Any], now: datetime) -> bool:
    """Make an active plan stale with a drift event that says why; once (several workers may report it)."""
    result = session.execute(
        update(m.Plan)
        .where(m.Plan.id == plan_id, m.Plan.status == "active")
        .values(status="stale", stale_reason=message)
        .execution_options(synchronize_session=False)
    )
    if int(cast(CursorResult[Any], result).rowcount) != 1:
        return False
    session.add(m.PlanEvent(plan_id=plan_id, kind="drift", message=message, data=dict(data), created_at=now))
    session.flush()
    return True
