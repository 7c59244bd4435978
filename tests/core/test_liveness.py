"""Host liveness is a pure function of (now, last sign of life); its SQL form agrees with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from planner.core.liveness import host_status, liveness

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("silent_s", "expected"),
    [
        (0, "active"),
        (59.999, "active"),
        (60, "stale"),
        (299.9, "stale"),
        (300, "lost"),
        (86400, "lost"),
        (-5, "active"),
    ],
)
def test_liveness_thresholds(silent_s: float, expected: str) -> None:
    now = T0 + timedelta(seconds=silent_s)
    assert liveness(now, T0, stale_s=60, lost_s=300) == expected


def test_draining_only_while_alive() -> None:
    assert host_status(T0, last_seen=T0, drained=True, stale_s=60, lost_s=300) == "draining"
    later = T0 + timedelta(seconds=400)
    assert host_status(later, last_seen=T0, drained=True, stale_s=60, lost_s=300) == "lost"
