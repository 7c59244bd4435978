"""The jobs summary: counts by state and pool, read from the jobs table the scheduler writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from planner.db import models as m

UNROUTED = "(none)"


def summary(session: Session, *, workload: str | None = None) -> dict[str, Any]:
    query = select(m.Job.state, m.Job.pool, func.count()).group_by(m.Job.state, m.Job.pool)
    if workload is not None:
        query = query.where(m.Job.workload_name == workload)
    by_state = dict.fromkeys(m.JOB_STATES, 0)
    by_pool: dict[str, dict[str, int]] = {}
    total = 0
    for state, pool, n in session.execute(query).all():
        by_state[state] = by_state.get(state, 0) + int(n)
        pool_counts = by_pool.setdefault(pool or UNROUTED, {})
        pool_counts[state] = pool_counts.get(state, 0) + int(n)
        total += int(n)
    return {"total": total, "by_state": by_state, "by_pool": dict(sorted(by_pool.items()))}
