"""Liveness, readiness (the store answers) and Prometheus metrics; no credentials needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from planner.api.deps import SessionDep
from planner.api.schemas.common import ErrorOut

router = APIRouter(tags=["service"])


class Health(BaseModel):
    status: str


@router.get("/healthz", response_model=Health, summary="The process is up (never waits on the store)")
async def healthz() -> Health:  # on the event loop: a thread pool full of requests waiting on the store is no delay
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="The store is reachable",
    responses={503: {"model": ErrorOut, "description": "the store does not answer"}},
)
def readyz(session: SessionDep) -> Any:
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse(status_code=503, content={"detail": f"store unreachable: {type(exc).__name__}"})
    return Health(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics (`planner_` prefix, base units)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
