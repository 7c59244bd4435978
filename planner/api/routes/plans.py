"""Plans: solve, store a result, get, list, compare, activate, copy, events; the routing table in force."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status
from sqlalchemy.orm import Session

from planner.api.deps import AdminDep, NowDep, SessionDep, SettingsDep
from planner.api.schemas.common import ERROR_RESPONSES, Id32, Page, responses
from planner.api.schemas.fleets import FleetRef
from planner.api.schemas.plans import (
    PlanComparison,
    PlanEventIn,
    PlanEventOut,
    PlanIn,
    PlanOut,
    PlanResult,
    PlanSummary,
    RoutingPool,
    RoutingTable,
    SolveIn,
    SolveOut,
)
from planner.core.errors import NotFoundError
from planner.crud import plans as crud
from planner.crud.fleets import get_fleet
from planner.db import models as m
from planner.planning import solve_fleet
from planner.solver.replan import RunningPlan

router = APIRouter(prefix="/v1", tags=["plans"], responses=ERROR_RESPONSES)

FleetPath = Annotated[FleetRef, Path(description="the fleet's id or name")]
PlanId = Annotated[Id32, Path(description="the plan's id")]


def plan_out(session: Session, plan_id: int) -> PlanOut:
    plan = crud.get_plan(session, plan_id=plan_id)
    return PlanOut.model_validate(plan)


@router.post(
    "/fleets/{fleet}/plans",
    status_code=status.HTTP_201_CREATED,
    response_model=PlanOut,
    summary="Store a plan computed elsewhere (contract-3 JSON) as a draft, or activate it at once",
    responses=responses(404, 409),
)
def create_plan(fleet: FleetPath, _: AdminDep, session: SessionDep, now: NowDep, body: PlanIn) -> PlanOut:
    row = get_fleet(session, fleet=fleet)
    plan = crud.store_plan(session, fleet=row, result=body.result, inputs=dict(body.inputs), now=now)
    if body.activate:
        crud.activate(session, plan=plan, now=now)
    session.commit()
    return plan_out(session, plan.id)


def _running(session: Session, fleet_id: int) -> RunningPlan | None:
    """The fleet's plan in force as the solver's running plan (None when there is none)."""
    plan = crud.plan_in_force(session, fleet_id=fleet_id)
    return RunningPlan.from_plan_dict(plan.result) if plan is not None and plan.result else None


@router.post(
    "/fleets/{fleet}/plans/solve",
    status_code=status.HTTP_201_CREATED,
    response_model=SolveOut,
    summary="Solve the fleet's workloads against the stored measurements and store the plan",
    responses=responses(404, 409),
)
def solve(
    fleet: FleetPath, _: AdminDep, session: SessionDep, settings: SettingsDep, now: NowDep, body: SolveIn
) -> SolveOut:
    row = get_fleet(session, fleet=fleet)
    outcome = solve_fleet(
        session,
        fleet_id=row.id,
        now=now,
        settings=settings,
        time_limit_s=body.time_limit_s,
        mip_rel_gap=body.mip_rel_gap,
        share_gpus=body.share_gpus,
        allow_estimates=body.allow_estimates,
        running=_running(session, row.id) if body.from_active else None,
        move_cost_per_hour=body.move_cost_per_hour,
    )
    result = PlanResult.model_validate(outcome.result)
    inputs = {"scenario": outcome.scenario, "measurements": outcome.measurements, "solver": "planner.solver"}
    plan = crud.store_plan(session, fleet=row, result=result, inputs=inputs, now=now)
    if body.activate:
        crud.activate(session, plan=plan, now=now)
    session.commit()
    return SolveOut(plan=plan_out(session, plan.id), solve_time_s=outcome.solve_time_s)


@router.get(
    "/fleets/{fleet}/plans",
    response_model=Page[PlanSummary],
    summary="A fleet's plans, newest first",
    responses=responses(404),
)
def list_plans(
    fleet: FleetPath,
    _: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    status_: Annotated[Literal["draft", "active", "stale", "superseded"] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[PlanSummary]:
    plans, total = crud.list_plans(
        session,
        fleet=get_fleet(session, fleet=fleet),
        status=status_,
        limit=min(limit, settings.max_page_size),
        offset=offset,
    )
    return Page[PlanSummary](
        items=[PlanSummary.model_validate(p) for p in plans], total=total, limit=limit, offset=offset
    )


@router.get(
    "/fleets/{fleet}/routing",
    response_model=RoutingTable,
    summary="The routing table of the fleet's plan in force (version = plan id, only increases)",
    responses=responses(404),
)
def routing(fleet: FleetPath, _: AdminDep, session: SessionDep) -> RoutingTable:
    row = get_fleet(session, fleet=fleet)
    plan = crud.plan_in_force(session, fleet_id=row.id)
    if plan is None:
        raise NotFoundError(
            "active plan of fleet", row.name, hint="activate one with POST /v1/plans/{plan_id}/activate"
        )
    pools = sorted(plan.routes, key=lambda r: (r.workload_name, r.group_index))
    return RoutingTable(
        fleet_id=row.id,
        plan_id=plan.id,
        version=plan.id,
        status="stale" if plan.status == "stale" else "active",
        activated_at=plan.activated_at,
        pools=[RoutingPool.model_validate(p) for p in pools],
    )


@router.get("/plans/{plan_id}", response_model=PlanOut, summary="A plan", responses=responses(404))
def get_plan(plan_id: PlanId, _: AdminDep, session: SessionDep) -> PlanOut:
    return plan_out(session, plan_id)


@router.delete(
    "/plans/{plan_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a plan that is not in force",
    responses=responses(404, 409),
)
def delete_plan(plan_id: PlanId, _: AdminDep, session: SessionDep) -> Response:
    crud.delete_plan(session, plan=crud.get_plan(session, plan_id=plan_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/plans/{plan_id}/activate",
    response_model=PlanOut,
    summary="Activate a plan; the fleet's previous plan becomes superseded in the same transaction",
    responses=responses(404, 409),
)
def activate(plan_id: PlanId, _: AdminDep, session: SessionDep, now: NowDep) -> PlanOut:
    crud.activate(session, plan=crud.get_plan(session, plan_id=plan_id), now=now)
    session.commit()
    return plan_out(session, plan_id)


@router.post(
    "/plans/{plan_id}/copy",
    status_code=status.HTTP_201_CREATED,
    response_model=PlanOut,
    summary="Copy a plan into a new draft (to activate an older plan again under a newer version)",
    responses=responses(404),
)
def copy(plan_id: PlanId, _: AdminDep, session: SessionDep, now: NowDep) -> PlanOut:
    plan = crud.copy_plan(session, plan=crud.get_plan(session, plan_id=plan_id), now=now)
    session.commit()
    return plan_out(session, plan.id)


@router.post(
    "/plans/{plan_id}/events",
    status_code=status.HTTP_201_CREATED,
    response_model=PlanEventOut,
    summary="Record an event; `drift` marks the plan stale",
    responses=responses(404),
)
def add_event(plan_id: PlanId, _: AdminDep, session: SessionDep, now: NowDep, body: PlanEventIn) -> PlanEventOut:
    event = crud.add_event(session, plan=crud.get_plan(session, plan_id=plan_id), data=body, now=now)
    session.commit()
    return PlanEventOut.model_validate(event)


@router.get(
    "/plans/{plan_id}/compare/{other_id}",
    response_model=PlanComparison,
    summary="Compare two plans: cost and per-workload differences of the other against this one",
    responses=responses(404),
)
def compare(plan_id: PlanId, other_id: Annotated[Id32, Path()], _: AdminDep, session: SessionDep) -> PlanComparison:
    base: m.Plan = crud.get_plan(session, plan_id=plan_id)
    other: m.Plan = crud.get_plan(session, plan_id=other_id)
    return PlanComparison.model_validate(crud.compare(base, other))
