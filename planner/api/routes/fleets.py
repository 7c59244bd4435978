"""Fleets (families, prices, availability) and their workloads."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from sqlalchemy.orm import Session

from planner.api.deps import AdminDep, NowDep, SessionDep, SettingsDep
from planner.core.config import Settings
from planner.crud import fleets as crud
from planner.crud.plans import plan_in_force
from planner.db import models as m
from planner.schemas.common import ERROR_RESPONSES, Name, responses
from planner.schemas.fleets import FleetFamilyOut, FleetIn, FleetOut, FleetRef, WorkloadIn, WorkloadOut

router = APIRouter(prefix="/v1/fleets", tags=["fleets"], responses=ERROR_RESPONSES)

FleetPath = Annotated[FleetRef, Path(description="the fleet's id or name")]
WorkloadName = Annotated[Name, Path(description="the workload's name")]


def fleet_out(session: Session, fleet: m.Fleet, *, now: datetime, settings: Settings) -> FleetOut:
    families = crud.availability(
        session, fleet=fleet, now=now, stale_s=settings.heartbeat_stale_s, lost_s=settings.heartbeat_lost_s
    )
    plan = plan_in_force(session, fleet_id=fleet.id)
    return FleetOut(
        id=fleet.id,
        name=fleet.name,
        energy_price_per_kwh=fleet.energy_price_per_kwh,
        availability_from_hosts=fleet.availability_from_hosts,
        created_at=fleet.created_at,
        families=[FleetFamilyOut.model_validate(f, from_attributes=True) for f in families],
        workloads=sorted(w.name for w in fleet.workloads),
        active_plan_id=plan.id if plan else None,
    )


def workload_out(row: m.Workload) -> WorkloadOut:
    return WorkloadOut(
        id=row.id,
        fleet_id=row.fleet_id,
        name=row.name,
        model=row.models[0] if len(row.models) == 1 else list(row.models),
        height=row.height,
        width=row.width,
        steps=row.steps,
        rate=row.rate,
        p95_latency_s=row.p95_latency_s,
        headroom=row.headroom,
        recipes=row.recipes,
        quality=row.quality or None,
        created_at=row.created_at,
    )


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=FleetOut, summary="Create a fleet", responses=responses(409)
)
def create_fleet(_: AdminDep, session: SessionDep, settings: SettingsDep, now: NowDep, body: FleetIn) -> FleetOut:
    fleet = crud.create_fleet(session, data=body)
    session.commit()
    return fleet_out(session, crud.get_fleet(session, fleet=fleet.id), now=now, settings=settings)


@router.get("", response_model=list[FleetOut], summary="List fleets")
def list_fleets(_: AdminDep, session: SessionDep, settings: SettingsDep, now: NowDep) -> list[FleetOut]:
    return [fleet_out(session, f, now=now, settings=settings) for f in crud.list_fleets(session)]


@router.get("/{fleet}", response_model=FleetOut, summary="A fleet, with availability now", responses=responses(404))
def get_fleet(fleet: FleetPath, _: AdminDep, session: SessionDep, settings: SettingsDep, now: NowDep) -> FleetOut:
    return fleet_out(session, crud.get_fleet(session, fleet=fleet), now=now, settings=settings)


@router.put(
    "/{fleet}",
    response_model=FleetOut,
    summary="Update a fleet: name, energy price, availability choice, families (replaced)",
    responses=responses(404, 409),
)
def update_fleet(
    fleet: FleetPath, _: AdminDep, session: SessionDep, settings: SettingsDep, now: NowDep, body: FleetIn
) -> FleetOut:
    row = crud.update_fleet(session, fleet=crud.get_fleet(session, fleet=fleet), data=body)
    session.commit()
    return fleet_out(session, crud.get_fleet(session, fleet=row.id), now=now, settings=settings)


@router.delete(
    "/{fleet}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a fleet with its workloads and plans",
    responses=responses(404),
)
def delete_fleet(fleet: FleetPath, _: AdminDep, session: SessionDep) -> Response:
    crud.delete_fleet(session, fleet=crud.get_fleet(session, fleet=fleet))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{fleet}/workloads",
    status_code=status.HTTP_201_CREATED,
    response_model=WorkloadOut,
    summary="Add a workload to a fleet",
    responses=responses(404, 409),
)
def create_workload(fleet: FleetPath, _: AdminDep, session: SessionDep, body: WorkloadIn) -> WorkloadOut:
    row = crud.create_workload(session, fleet=crud.get_fleet(session, fleet=fleet), data=body)
    session.commit()
    return workload_out(row)


@router.get(
    "/{fleet}/workloads", response_model=list[WorkloadOut], summary="A fleet's workloads", responses=responses(404)
)
def list_workloads(fleet: FleetPath, _: AdminDep, session: SessionDep) -> list[WorkloadOut]:
    return [workload_out(w) for w in crud.list_workloads(session, fleet=crud.get_fleet(session, fleet=fleet))]


@router.get("/{fleet}/workloads/{name}", response_model=WorkloadOut, summary="A workload", responses=responses(404))
def get_workload(fleet: FleetPath, name: WorkloadName, _: AdminDep, session: SessionDep) -> WorkloadOut:
    return workload_out(crud.get_workload(session, fleet=crud.get_fleet(session, fleet=fleet), name=name))


@router.put(
    "/{fleet}/workloads/{name}",
    response_model=WorkloadOut,
    summary="Replace a workload",
    responses=responses(404, 409),
)
def update_workload(
    fleet: FleetPath, name: WorkloadName, _: AdminDep, session: SessionDep, body: WorkloadIn
) -> WorkloadOut:
    row_fleet = crud.get_fleet(session, fleet=fleet)
    row = crud.update_workload(
        session, fleet=row_fleet, row=crud.get_workload(session, fleet=row_fleet, name=name), data=body
    )
    session.commit()
    return workload_out(row)


@router.delete(
    "/{fleet}/workloads/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a workload",
    responses=responses(404),
)
def delete_workload(fleet: FleetPath, name: WorkloadName, _: AdminDep, session: SessionDep) -> Response:
    row_fleet = crud.get_fleet(session, fleet=fleet)
    crud.delete_workload(session, row=crud.get_workload(session, fleet=row_fleet, name=name))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
