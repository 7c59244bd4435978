"""Fleets (families, prices, availability) and their workloads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from planner.core.errors import ConflictError, FieldError, NotFoundError
from planner.crud.catalog import default_price
from planner.crud.hosts import available_gpus
from planner.db import models as m
from planner.schemas.common import MAX_INT32
from planner.schemas.fleets import FleetIn, WorkloadIn

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class FamilyAvailability:
    family: str
    price_per_hour: float
    available: int | None
    available_from_hosts: int | None
    available_effective: int | None
    memory_gib: float | None


def get_fleet(session: Session, *, fleet: str | int) -> m.Fleet:
    """A fleet by id (digits) or name."""
    query = select(m.Fleet).options(selectinload(m.Fleet.families), selectinload(m.Fleet.workloads))
    if isinstance(fleet, int) or fleet.isdigit():
        if int(fleet) > MAX_INT32:  # no such id; a bigger integer overflows the store's column type
            raise NotFoundError("fleet", fleet, hint="list fleets with GET /v1/fleets")
        query = query.where(m.Fleet.id == int(fleet))
    else:
        query = query.where(m.Fleet.name == fleet)
    found = session.scalar(query)
    if found is None:
        raise NotFoundError("fleet", fleet, hint="list fleets with GET /v1/fleets")
    return found


def list_fleets(session: Session) -> Sequence[m.Fleet]:
    return session.scalars(
        select(m.Fleet).options(selectinload(m.Fleet.families), selectinload(m.Fleet.workloads)).order_by(m.Fleet.id)
    ).all()


def _families(session: Session, data: FleetIn) -> list[m.FleetFamily]:
    known = {f.id: f for f in session.scalars(select(m.GpuFamily).options(selectinload(m.GpuFamily.prices)))}
    problems: list[tuple[Loc, str]] = []
    rows: list[m.FleetFamily] = []
    for i, entry in enumerate(data.families):
        fam = known.get(entry.family)
        if fam is None:
            problems.append(
                (
                    ("families", i, "family"),
                    f"unknown GPU family {entry.family!r}; define it with PUT /v1/gpu-families/{{id}} first",
                )
            )
            continue
        price = entry.price_per_hour if entry.price_per_hour is not None else default_price(fam)
        if price is None:
            problems.append(
                (("families", i, "price_per_hour"), f"{entry.family!r} has no price; give price_per_hour ($/GPU-hour)")
            )
            continue
        rows.append(
            m.FleetFamily(
                gpu_family_id=entry.family, price_per_hour=price, available=entry.available, memory_gib=entry.memory_gib
            )
        )
    if problems:
        raise FieldError(problems)
    return rows


def create_fleet(session: Session, *, data: FleetIn) -> m.Fleet:
    if session.scalar(select(m.Fleet.id).where(m.Fleet.name == data.name)) is not None:
        raise ConflictError(f"a fleet named {data.name!r} exists; update it with PUT /v1/fleets/{data.name}")
    fleet = m.Fleet(
        name=data.name,
        energy_price_per_kwh=data.energy_price_per_kwh,
        availability_from_hosts=data.availability_from_hosts,
        families=_families(session, data),
        workloads=[],
    )
    session.add(fleet)
    session.flush()
    return fleet


def update_fleet(session: Session, *, fleet: m.Fleet, data: FleetIn) -> m.Fleet:
    """Replace a fleet's name, energy price, availability choice and families."""
    if data.name != fleet.name and session.scalar(select(m.Fleet.id).where(m.Fleet.name == data.name)) is not None:
        raise ConflictError(f"a fleet named {data.name!r} exists; choose another name")
    families = _families(session, data)
    fleet.name = data.name
    fleet.energy_price_per_kwh = data.energy_price_per_kwh
    fleet.availability_from_hosts = data.availability_from_hosts
    fleet.families.clear()
    session.flush()
    fleet.families.extend(families)
    session.flush()
    return fleet


def delete_fleet(session: Session, *, fleet: m.Fleet) -> None:
    session.delete(fleet)
    session.flush()


def availability(
    session: Session, *, fleet: m.Fleet, now: datetime, stale_s: float, lost_s: float
) -> list[FamilyAvailability]:
    """Each family of the fleet with what a plan may use now (hosts' active GPUs when the fleet opts in)."""
    live = available_gpus(session, now=now, stale_s=stale_s, lost_s=lost_s) if fleet.availability_from_hosts else None
    out = []
    for ff in sorted(fleet.families, key=lambda f: f.gpu_family_id):
        from_hosts = live.get(ff.gpu_family_id, 0) if live is not None else None
        if from_hosts is None:
            effective = ff.available
        elif ff.available is None:
            effective = from_hosts
        else:
            effective = min(ff.available, from_hosts)
        out.append(
            FamilyAvailability(
                family=ff.gpu_family_id,
                price_per_hour=ff.price_per_hour,
                available=ff.available,
                available_from_hosts=from_hosts,
                available_effective=effective,
                memory_gib=ff.memory_gib,
            )
        )
    return out


# Workloads.


def _check_workload(session: Session, data: WorkloadIn) -> None:
    problems: list[tuple[Loc, str]] = []
    known_models = set(session.scalars(select(m.Model.id)))
    for j, model_id in enumerate(data.models):
        if model_id not in known_models:
            loc: Loc = ("model", j) if isinstance(data.model, list) else ("model",)
            problems.append((loc, f"unknown model {model_id!r}; known: {', '.join(sorted(known_models))}"))
    recipes = {r.id: r for r in session.scalars(select(m.Recipe))}
    for stage, allowed in data.recipes.items():
        for j, recipe_id in enumerate(allowed):
            rec = recipes.get(recipe_id)
            if rec is None:
                problems.append((("recipes", stage, j), f"unknown recipe {recipe_id!r}; see GET /v1/recipes"))
            elif rec.stages and stage not in rec.stages:
                problems.append((("recipes", stage, j), f"recipe {recipe_id!r} does not apply to {stage}"))
    if problems:
        raise FieldError(problems)


def _apply_workload(row: m.Workload, data: WorkloadIn) -> None:
    row.name = data.name
    row.models = data.models
    row.height = data.height
    row.width = data.width
    row.steps = data.steps
    row.rate = data.rate
    row.p95_latency_s = data.p95_latency_s
    row.headroom = data.headroom
    row.recipes = {str(k): list(v) for k, v in data.recipes.items()}
    row.quality = data.quality.model_dump() if data.quality is not None else {}


def get_workload(session: Session, *, fleet: m.Fleet, name: str) -> m.Workload:
    row = session.scalar(select(m.Workload).where(m.Workload.fleet_id == fleet.id, m.Workload.name == name))
    if row is None:
        raise NotFoundError(
            "workload", name, hint=f"list the fleet's workloads with GET /v1/fleets/{fleet.id}/workloads"
        )
    return row


def create_workload(session: Session, *, fleet: m.Fleet, data: WorkloadIn) -> m.Workload:
    _check_workload(session, data)
    if (
        session.scalar(select(m.Workload.id).where(m.Workload.fleet_id == fleet.id, m.Workload.name == data.name))
        is not None
    ):
        raise ConflictError(f"fleet {fleet.name!r} has a workload named {data.name!r}; update it with PUT")
    row = m.Workload(fleet_id=fleet.id)
    _apply_workload(row, data)
    session.add(row)
    session.flush()
    return row


def update_workload(session: Session, *, fleet: m.Fleet, row: m.Workload, data: WorkloadIn) -> m.Workload:
    _check_workload(session, data)
    if (
        data.name != row.name
        and session.scalar(select(m.Workload.id).where(m.Workload.fleet_id == fleet.id, m.Workload.name == data.name))
        is not None
    ):
        raise ConflictError(f"fleet {fleet.name!r} has a workload named {data.name!r}; choose another name")
    _apply_workload(row, data)
    session.flush()
    return row


def delete_workload(session: Session, *, row: m.Workload) -> None:
    session.delete(row)
    session.flush()


def list_workloads(session: Session, *, fleet: m.Fleet) -> Sequence[m.Workload]:
    return session.scalars(select(m.Workload).where(m.Workload.fleet_id == fleet.id).order_by(m.Workload.name)).all()
