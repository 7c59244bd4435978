"""Where the routing table comes from, and a cache that rereads it only when its version changes.

The plan in force of a fleet is the last activated plan still `active` or `stale` (drift marks a plan stale;
the fleet keeps running it until another is activated), as the planner API defines it. The routing table's
version is that plan's id (it only increases). The cache's check is one small aggregate query, (plan id, largest
routing entry id, entry count), so rewritten entries of the same plan are seen too; it runs at most every
`routing_refresh_s` and reloads the table when the key changes: new jobs follow a new plan without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from planner.core.batching import BatchingPolicy
from planner.db import models as m
from scheduler.routing import EMPTY_TABLE, Pool, RoutingTable

log = logging.getLogger("scheduler.table")

VersionKey = tuple[int | None, int, int]
IN_FORCE = ("active", "stale")


class TableSource(Protocol):
    def version_key(self) -> VersionKey: ...

    def load(self) -> RoutingTable: ...


def _current_plan_query(fleet: str) -> Any:
    return (
        select(m.Plan.id)
        .join(m.Fleet, m.Fleet.id == m.Plan.fleet_id)
        .where(m.Fleet.name == fleet, m.Plan.status.in_(IN_FORCE), m.Plan.activated_at.is_not(None))
        .order_by(m.Plan.id.desc())
        .limit(1)
    )


def current_plan_id(session: Session, *, fleet: str) -> int | None:
    """The plan in force: the last activated plan still active or stale; None when there is none."""
    return session.execute(_current_plan_query(fleet)).scalar_one_or_none()


def table_version(session: Session, *, fleet: str) -> VersionKey:
    """(plan id, largest entry id, entry count) of the fleet's routing table; (None, 0, 0) when there is none."""
    plan_id = current_plan_id(session, fleet=fleet)
    if plan_id is None:
        return (None, 0, 0)
    row = session.execute(
        select(func.max(m.RoutingEntry.id), func.count(m.RoutingEntry.id)).where(m.RoutingEntry.plan_id == plan_id)
    ).one()
    return (plan_id, int(row[0] or 0), int(row[1]))


def load_table(session: Session, *, fleet: str) -> RoutingTable:
    """The fleet's current routing table, each pool with its workload's planned image size and steps."""
    plan_id = current_plan_id(session, fleet=fleet)
    if plan_id is None:
        return EMPTY_TABLE
    plan = session.get(m.Plan, plan_id)
    assert plan is not None
    refs: dict[str, tuple[int, int, int | None]] = {}
    for wl in session.scalars(select(m.Workload).where(m.Workload.fleet_id == plan.fleet_id)):
        refs[wl.name] = (wl.height, wl.width, wl.steps)
    default_steps: dict[str, int] = {
        row[0]: row[1] for row in session.execute(select(m.Model.id, m.Model.default_steps))
    }
    entries = session.scalars(
        select(m.RoutingEntry)
        .where(m.RoutingEntry.plan_id == plan_id)
        .order_by(m.RoutingEntry.workload_name, m.RoutingEntry.group_index, m.RoutingEntry.pool)
    ).all()
    pools = []
    for e in entries:
        h, w, steps = refs.get(e.workload_name, (None, None, None))
        pools.append(_pool(e, ref_height=h, ref_width=w, ref_steps=steps or default_steps.get(e.model_id)))
    policy = (plan.result or {}).get("batching")
    batching = BatchingPolicy.from_dict(policy) if isinstance(policy, dict) else None
    return RoutingTable(plan_id=plan_id, version=plan_id, pools=tuple(pools), batching=batching)


def find_pool(session: Session, *, fleet: str, pool: str) -> Pool | None:
    """A pool's entry: from the current table, else from the most recent plan that had it (still draining)."""
    table = load_table(session, fleet=fleet)
    found = table.get(pool)
    if found is not None:
        return found
    entry = session.scalars(
        select(m.RoutingEntry)
        .join(m.Plan, m.Plan.id == m.RoutingEntry.plan_id)
        .join(m.Fleet, m.Fleet.id == m.Plan.fleet_id)
        .where(m.Fleet.name == fleet, m.RoutingEntry.pool == pool)
        .order_by(m.Plan.id.desc())
        .limit(1)
    ).first()
    if entry is None:
        return None
    return _pool(entry)


def _pool(entry: m.RoutingEntry, **ref: Any) -> Pool:
    """A routing entry as the router's pool; `ref` adds the workload's planned image size and steps."""
    return Pool(
        pool=entry.pool,
        workload=entry.workload_name,
        group_index=entry.group_index,
        model=entry.model_id,
        stages=tuple(entry.stages),
        family=entry.gpu_family_id,
        recipes=dict(entry.recipes),
        batch=entry.batch,
        replicas=entry.replicas,
        capacity=entry.capacity,
        weight=entry.weight,
        **ref,
    )


class DbTableSource:
    """The routing table read from the planner's store."""

    def __init__(self, sessions: sessionmaker[Session], fleet: str) -> None:
        self._sessions = sessions
        self.fleet = fleet

    def version_key(self) -> VersionKey:
        with self._sessions() as session:
            return table_version(session, fleet=self.fleet)

    def load(self) -> RoutingTable:
        with self._sessions() as session:
            return load_table(session, fleet=self.fleet)


def table_from_json(data: dict[str, Any]) -> RoutingTable:
    """A routing table from the planner API's `GET /v1/fleets/{fleet}/routing` answer."""
    pools = tuple(
        Pool(
            pool=p["pool"],
            workload=p["workload"],
            group_index=int(p["group_index"]),
            model=p["model"],
            stages=tuple(p["stages"]),
            family=p["family"],
            recipes=dict(p.get("recipes") or {}),
            batch=int(p["batch"]),
            replicas=float(p["replicas"]),
            capacity=float(p["capacity"]),
            weight=float(p.get("weight", 1.0)),
            ref_height=p.get("height"),
            ref_width=p.get("width"),
            ref_steps=p.get("steps"),
        )
        for p in data.get("pools", [])
    )
    return RoutingTable(plan_id=data.get("plan_id"), version=int(data.get("version") or 0), pools=pools)


class TableCache:
    """The current table, rechecked every `refresh_s` seconds and reloaded only when its version moved.

    Stale-while-revalidate: once a table is loaded, a due check runs in a background thread and callers keep
    the table they have meanwhile, so a routing decision never waits on the store. The first load, a cache
    with `refresh_s` 0, and the first read after `invalidate()` check synchronously.
    """

    def __init__(self, source: TableSource, refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.refresh_s = refresh_s
        self.clock = clock
        self._lock = threading.Lock()
        self._table = EMPTY_TABLE
        self._key: VersionKey | None = None
        self._checked = -float("inf")
        self._sync_next = True
        self._refreshing = False
        self.reloads = 0

    def _refresh(self) -> None:
        with self._lock:
            now = self.clock()
            if now - self._checked >= self.refresh_s or self._sync_next:
                key = self.source.version_key()
                if key != self._key:
                    self._table = self.source.load()
                    self._key = key
                    self.reloads += 1
                self._checked = now
                self._sync_next = False

    def _refresh_in_background(self) -> None:
        try:
            self._refresh()
        except Exception:  # keep the table we have; the next due check tries again
            log.exception("routing table refresh failed")
        finally:
            self._refreshing = False

    def get(self) -> RoutingTable:
        if self.clock() - self._checked < self.refresh_s and not self._sync_next:
            return self._table
        if self._sync_next or self.refresh_s <= 0 or self._key is None:
            self._refresh()
        elif not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._refresh_in_background, name="table-refresh", daemon=True).start()
        return self._table

    def invalidate(self) -> None:
        """Check the version on the next read, synchronously."""
        self._sync_next = True
