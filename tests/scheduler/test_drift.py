"""Drift is a pure decision of (plan rate, samples, clock), tested with a fake clock; marking a plan stale is once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from planner.db import models as m
from scheduler.drift import Sample, drift_decision, mark_plan_stale

WINDOW = 600.0


def samples(rate: float, *, start: float, end: float, every: float = 10.0, busy: float = 8.0) -> list[Sample]:
    """A replica busy `busy` s of every `every` s, making `rate` images per busy second."""
    out = []
    t = start + every
    while t <= end:
        out.append(Sample(t=t, work=rate * busy, busy_s=busy))
        t += every
    return out


def decide(rate_samples: list[Sample], now: float, planned: float = 2.0, tol: float = 0.2) -> bool:
    return drift_decision(
        planned_rate=planned, samples=rate_samples, now=now, tolerance=tol, window_s=WINDOW, buckets=5, min_busy_s=5
    ).stale


def test_on_plan_is_not_drift() -> None:
    assert not decide(samples(2.0, start=0, end=1000), now=1000)
    assert not decide(samples(2.3, start=0, end=1000), now=1000)  # +15% is within ±20%


def test_sustained_slowdown_is_drift_and_says_why() -> None:
    s = samples(1.25, start=0, end=1000)  # -37.5%
    v = drift_decision(planned_rate=2.0, samples=s, now=1000, tolerance=0.2, window_s=WINDOW, pool="p.0.h100")
    assert v.stale
    assert v.ratio == pytest.approx(0.625)
    assert "p.0.h100" in v.reason
    assert "below" in v.reason
    assert "-38%" in v.reason
    assert v.data["planned_rate"] == 2.0


def test_faster_than_planned_is_drift_too() -> None:
    assert decide(samples(3.0, start=0, end=1000), now=1000)


def test_a_burst_is_not_sustained() -> None:
    """Slow for the last 2 minutes of a 10-minute window: not every sub-window departs."""
    s = samples(2.0, start=0, end=880) + samples(1.0, start=880, end=1000)
    assert not decide(s, now=1000)
    # ... but once the slowdown has lasted the whole window, it is drift (the fake clock moves on)
    s += samples(1.0, start=1000, end=1500)
    assert decide(s, now=1500)


def test_idle_stretches_are_no_evidence() -> None:
    """A pool with no traffic for part of the window cannot be judged, whatever it did while busy."""
    s = samples(1.0, start=0, end=600) + samples(1.0, start=800, end=1000)  # idle 600..800
    v = drift_decision(planned_rate=2.0, samples=s, now=1000, tolerance=0.2, window_s=WINDOW, buckets=5, min_busy_s=5)
    assert not v.stale
    assert "not enough busy time" in v.reason
    assert not decide([], now=1000)


def test_samples_outside_the_window_are_ignored() -> None:
    s = samples(0.5, start=0, end=400) + samples(2.0, start=400, end=1000)
    assert not decide(s, now=1000)


def test_mark_plan_stale_once_with_an_event(session: Session) -> None:
    fleet = m.Fleet(name="drift-fleet")
    session.add(fleet)
    session.flush()
    plan = m.Plan(fleet_id=fleet.id, status="active", activated_at=datetime.now(UTC))
    session.add(plan)
    session.flush()
    now = datetime.now(UTC)
    assert mark_plan_stale(session, plan_id=plan.id, message="pool x drifted", data={"ratio": 0.6}, now=now)
    assert not mark_plan_stale(session, plan_id=plan.id, message="again", data={}, now=now)
    session.refresh(plan)
    assert plan.status == "stale"
    assert plan.stale_reason == "pool x drifted"
    events = session.scalars(select(m.PlanEvent).where(m.PlanEvent.plan_id == plan.id)).all()
    assert [(e.kind, e.message, e.data) for e in events] == [("drift", "pool x drifted", {"ratio": 0.6})]
