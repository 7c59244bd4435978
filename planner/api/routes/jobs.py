"""The job API: submit a generation request (idempotent), read its state, fetch its image; the jobs summary.

Submitting a job and reading its state and image take the submitter token (`PLANNER_SUBMITTER_TOKEN`, for the
services that generate images) or the admin token; listing, the summary and requeueing take the admin token.

`POST /v1/jobs` stores the job and sends it to the scheduler's queues (scheduler.dispatch.Dispatcher, built from
the `SCHEDULER_*` settings on first use, or `app.state.dispatcher`): 201 with the new job, 200 with the job an
idempotency key already made, 409 if that key was used for another request, 422 for a workload the plan in
force does not route, 503 if the broker did not take it or no pool of the workload is up now (resend with the
same key).
"""

from __future__ import annotations

import threading
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from planner.api.deps import AdminDep, SessionDep, SubmitterDep
from planner.api.schemas.common import ERROR_RESPONSES, responses
from planner.api.schemas.jobs import JobIn, JobOut, JobsSummary
from planner.core.errors import ConflictError, FieldError, InputError
from planner.crud import jobs as crud
from planner.db import models as m
from scheduler.config import get_settings as scheduler_settings
from scheduler.dispatch import Dispatcher, DispatchError
from scheduler.results import DirectoryResults
from scheduler.routing import NoCapacityError, NoRouteError

_dispatcher_lock = threading.Lock()


def get_dispatcher(request: Request) -> Dispatcher:
    """The app's dispatcher (`app.state.dispatcher`), built on first use from the SCHEDULER_* settings, on the
    app's own store (the job store is the planner's store)."""
    dispatcher: Dispatcher | None = getattr(request.app.state, "dispatcher", None)
    if dispatcher is None:
        with _dispatcher_lock:
            dispatcher = getattr(request.app.state, "dispatcher", None)
            if dispatcher is None:
                dispatcher = Dispatcher(scheduler_settings(), sessions=request.app.state.sessionmaker)
                request.app.state.dispatcher = dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


def _out(request: Request, job: m.Job) -> JobOut:
    out = JobOut.model_validate(job)
    if job.state == "done":
        out.result_url = str(request.url_for("job_result", job_id=job.id).path)
    return out


def _job(session: Session, job_id: str) -> m.Job:
    job = crud.get_job(session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id!r} not found; submit with POST /v1/jobs")
    return job


@router.post(
    "",
    response_model=JobOut,
    status_code=status.HTTP_201_CREATED,
    summary="Submit a generation request",
    responses=responses(
        409,
        503,
        extra={
            200: {"description": "the job this idempotency key already made", "model": JobOut},
            422: {"description": "invalid request, or a workload the plan in force does not route"},
        },
    ),
)
def submit_job(
    _: SubmitterDep,
    body: JobIn,
    request: Request,
    response: Response,
    session: SessionDep,
    dispatcher: DispatcherDep,
    idempotency_header: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JobOut:
    key = body.idempotency_key or idempotency_header or str(uuid.uuid4())
    try:
        req = crud.JobRequest(
            workload_name=body.workload,
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            seed=body.seed,
            height=body.height,
            width=body.width,
            steps=body.steps,
        )
        submitted = dispatcher.submit(session, idempotency_key=key, request=req)
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except NoRouteError as exc:  # the documented 422 shape: a list of problems, each naming its field
        raise FieldError.at(("workload",), str(exc)) from exc
    except InputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except (DispatchError, NoCapacityError) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    if not submitted.created:
        response.status_code = status.HTTP_200_OK
    session.refresh(submitted.job)
    return _out(request, submitted.job)


@router.get("/summary", response_model=JobsSummary, summary="Jobs by state and by pool")
def summary(
    _: AdminDep,
    session: SessionDep,
    workload: Annotated[str | None, Query(description="one workload only", max_length=200)] = None,
) -> JobsSummary:
    return JobsSummary.model_validate(crud.summary(session, workload=workload))


@router.get("", response_model=list[JobOut], summary="List jobs (newest first), e.g. the dead letter: ?state=dead")
def list_jobs(
    _: AdminDep,
    request: Request,
    session: SessionDep,
    state: Annotated[str | None, Query(pattern="^(queued|running|done|failed|dead)$")] = None,
    workload: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[JobOut]:
    jobs = crud.list_jobs(session, state=state, workload=workload, limit=limit, offset=offset)
    return [_out(request, job) for job in jobs]


@router.get("/{job_id}", response_model=JobOut, summary="A job's state", responses=responses(404))
def get_job(_: SubmitterDep, job_id: str, request: Request, session: SessionDep) -> JobOut:
    return _out(request, _job(session, job_id))


@router.get(
    "/{job_id}/result",
    name="job_result",
    summary="A done job's image (PNG)",
    response_class=FileResponse,
    responses=responses(404, 409, extra={200: {"content": {"image/png": {}}}}),
)
def get_result(_: SubmitterDep, job_id: str, session: SessionDep, dispatcher: DispatcherDep) -> FileResponse:
    job = _job(session, job_id)
    if job.state != "done" or job.result_path is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is {job.state}, not done"
            + (f" ({job.error})" if job.error else "")
            + f"; poll GET /v1/jobs/{job_id} until its state is done",
        )
    path = DirectoryResults(dispatcher.settings.results_dir).path(job.result_path)
    if not path.is_file():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"job {job_id}'s result {job.result_path} is not in {dispatcher.settings.results_dir}; check that the "
            "service and the workers share SCHEDULER_RESULTS_DIR",
        )
    return FileResponse(path, media_type="image/png", headers={"ETag": f'"{job.result_sha256}"'})


@router.post(
    "/{job_id}/requeue",
    response_model=JobOut,
    summary="Send a dead or failed job again",
    responses=responses(404, 409, 503),
)
def requeue(_: AdminDep, job_id: str, request: Request, session: SessionDep, dispatcher: DispatcherDep) -> JobOut:
    job = _job(session, job_id)
    if not crud.requeue_job(session, job_id=job_id):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {job.state}; only dead or failed jobs requeue")
    session.commit()
    session.refresh(job)
    try:
        dispatcher.redispatch(session, job)
    except InputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except (DispatchError, NoCapacityError) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    session.refresh(job)
    return _out(request, job)
