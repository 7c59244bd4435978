"""The jobs summary (the job API itself belongs to the scheduler)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from planner.api.deps import AdminDep, SessionDep
from planner.api.schemas.common import ERROR_RESPONSES, Name
from planner.api.schemas.jobs import JobsSummary
from planner.crud import jobs as crud

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("/summary", response_model=JobsSummary, summary="Jobs by state and by pool")
def summary(
    _: AdminDep, session: SessionDep, workload: Annotated[Name | None, Query(description="one workload only")] = None
) -> JobsSummary:
    return JobsSummary.model_validate(crud.summary(session, workload=workload))
