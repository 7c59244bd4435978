"""Probe runs (submit idempotently, list, get) and measurements (query with filters and pages, CSV export)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status
from sqlalchemy import func, select

from planner.api.deps import AdminDep, AgentDep, SessionDep, SettingsDep
from planner.api.schemas.common import ERROR_RESPONSES, Page, responses
from planner.api.schemas.probes import MeasurementFilters, MeasurementOut, ProbeRunIn, ProbeRunOut, QuarantineIn
from planner.core.errors import ForbiddenError
from planner.crud import probes as crud
from planner.db import models as m
from planner.measurements.csvio import rows_to_csv
from planner.measurements.store import iter_rows, measurements_query

router = APIRouter(prefix="/v1", tags=["probes"], responses=ERROR_RESPONSES)


def run_out(session: SessionDep, run: m.ProbeRun) -> ProbeRunOut:
    n_meas, n_cal, n_held = crud.counts(session, run_id=run.id)
    return ProbeRunOut.model_validate(
        {
            "id": run.id,
            "host_id": run.host_id,
            "kind": run.kind,
            "gpu_uuid": run.gpu_uuid,
            "gpu_family_id": run.gpu_family_id,
            "weights": run.weights,
            "provenance": run.provenance,
            "notes": run.notes,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "created_at": run.created_at,
            "measurements": n_meas,
            "calibrations": n_cal,
            "quarantined": n_held,
        }
    )


@router.post(
    "/probe-runs",
    status_code=status.HTTP_201_CREATED,
    response_model=ProbeRunOut,
    summary="Submit a probe run: stored whole or not at all; resending the same run is safe",
    responses=responses(
        409, extra={200: {"model": ProbeRunOut, "description": "already stored (a resend): nothing new was written"}}
    ),
)
def submit_probe_run(
    principal: AgentDep, session: SessionDep, settings: SettingsDep, response: Response, body: ProbeRunIn
) -> ProbeRunOut:
    if principal.role == "agent" and principal.host_id != str(body.host_id):
        raise ForbiddenError("an agent submits probe runs only for its own host (host_id must be its own)")
    outcome = crud.submit_probe_run(
        session, payload=body, agent=principal.role == "agent", outlier_ratio=settings.measurement_outlier_ratio
    )
    if not outcome.created:
        response.status_code = status.HTTP_200_OK
    return run_out(session, outcome.run)


@router.get("/probe-runs", response_model=Page[ProbeRunOut], summary="List probe runs, newest first")
def list_probe_runs(
    _: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    host_id: Annotated[uuid.UUID | None, Query()] = None,
    kind: Annotated[Literal["probe", "calibration", "import"] | None, Query()] = None,
    quarantined: Annotated[bool, Query(description="only runs with cells held back from plans")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[ProbeRunOut]:
    runs, total = crud.list_probe_runs(
        session,
        host_id=str(host_id) if host_id else None,
        kind=kind,
        quarantined=quarantined,
        limit=min(limit, settings.max_page_size),
        offset=offset,
    )
    return Page[ProbeRunOut](items=[run_out(session, r) for r in runs], total=total, limit=limit, offset=offset)


@router.get("/probe-runs/{run_id}", response_model=ProbeRunOut, summary="A probe run", responses=responses(404))
def get_probe_run(run_id: Annotated[uuid.UUID, Path()], principal: AgentDep, session: SessionDep) -> ProbeRunOut:
    run = crud.get_probe_run(session, run_id=str(run_id))
    if principal.role == "agent" and run.host_id != principal.host_id:
        raise ForbiddenError("an agent reads only its own host's probe runs")
    return run_out(session, run)


@router.post(
    "/probe-runs/{run_id}/quarantine",
    response_model=ProbeRunOut,
    summary="Hold every cell of a run back from plans (operator)",
    responses=responses(404),
)
def quarantine_probe_run(
    run_id: Annotated[uuid.UUID, Path()], _: AdminDep, session: SessionDep, body: QuarantineIn | None = None
) -> ProbeRunOut:
    run = crud.quarantine_run(session, run_id=str(run_id), reason=body.reason if body else "no reason given")
    session.commit()
    return run_out(session, run)


@router.post(
    "/probe-runs/{run_id}/accept",
    response_model=ProbeRunOut,
    summary="Release a run's held-back cells to plans (operator)",
    responses=responses(404),
)
def accept_probe_run(run_id: Annotated[uuid.UUID, Path()], _: AdminDep, session: SessionDep) -> ProbeRunOut:
    run = crud.accept_run(session, run_id=str(run_id))
    session.commit()
    return run_out(session, run)


@router.delete(
    "/probe-runs/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a run and its measurements (operator)",
    responses=responses(404),
)
def delete_probe_run(run_id: Annotated[uuid.UUID, Path()], _: AdminDep, session: SessionDep) -> Response:
    crud.delete_run(session, run_id=str(run_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/measurements",
    response_model=Page[MeasurementOut],
    summary="Query measurements (newest run per cell by default)",
)
def list_measurements(
    _: AgentDep,
    session: SessionDep,
    settings: SettingsDep,
    filters: Annotated[MeasurementFilters, Query()],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[MeasurementOut]:
    query = measurements_query(**filters.model_dump())
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = session.scalars(query.limit(min(limit, settings.max_page_size)).offset(offset)).all()
    return Page[MeasurementOut](
        items=[MeasurementOut.model_validate(r) for r in rows], total=int(total), limit=limit, offset=offset
    )


@router.get(
    "/measurements/export",
    response_class=Response,
    summary="Export measurements as the CSV contract (same filters as the query)",
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "contract-1 CSV"}},
)
def export_measurements(_: AgentDep, session: SessionDep, filters: Annotated[MeasurementFilters, Query()]) -> Response:
    body = rows_to_csv(iter_rows(session, measurements_query(**filters.model_dump())))
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="measurements.csv"'},
    )
