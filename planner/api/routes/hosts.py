"""Hosts: register (token issued once), heartbeat with telemetry, list, drain, and requests for their agents."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Response, status

from planner.api.deps import (
    AdminDep,
    AgentClaim,
    ClaimDep,
    HostAuthDep,
    NowDep,
    Principal,
    RegistrarDep,
    SessionDep,
    SettingsDep,
    require_host_sync,
    verify_claim,
)
from planner.api.schemas.common import ERROR_RESPONSES, Page, responses
from planner.api.schemas.hosts import (
    HeartbeatIn,
    HeartbeatOut,
    HostOut,
    HostRegister,
    HostRegistered,
    ProbeRequestComplete,
    ProbeRequestIn,
    ProbeRequestOut,
)
from planner.core.config import Settings
from planner.core.errors import ForbiddenError
from planner.core.liveness import HostStatus
from planner.crud import hosts as crud
from planner.db import models as m

router = APIRouter(prefix="/v1/hosts", tags=["hosts"], responses=ERROR_RESPONSES)

HostId = Annotated[uuid.UUID, Path(description="the host's id")]
RequestId = Annotated[uuid.UUID, Path(description="the request's id")]


def host_out(host: m.Host, *, now: datetime, settings: Settings) -> HostOut:
    out = HostOut.model_validate(host)
    readings = (host.telemetry or {}).get("gpus", {})
    for gpu in out.gpus:
        gpu.telemetry = readings.get(gpu.uuid, {})
    out.telemetry = {k: v for k, v in (host.telemetry or {}).items() if k != "gpus"}
    out.status = crud.effective_status(
        host, now=now, stale_s=settings.heartbeat_stale_s, lost_s=settings.heartbeat_lost_s
    )
    return out


def _host(session: SessionDep, host_id: uuid.UUID) -> m.Host:
    return crud.get_host(session, host_id=str(host_id))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=HostRegistered,
    summary="Register a host; its agent token is returned once",
    responses=responses(
        409, 429, extra={200: {"model": HostRegistered, "description": "re-registered (rotate=true): a new token"}}
    ),
)
def register_host(
    principal: RegistrarDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    response: Response,
    body: HostRegister,
    rotate: Annotated[
        bool, Query(description="admin only: re-register a host of that name, replacing its GPUs and token")
    ] = False,
) -> HostRegistered:
    if rotate:
        if principal.role != "admin":
            raise ForbiddenError("only the admin token may re-register a host (rotate=true)")
        existed = crud.host_id_by_name(session, name=body.name) is not None
        host, token = crud.reregister_host(session, data=body, now=now)
        if existed:
            response.status_code = status.HTTP_200_OK
    else:
        enrolled = principal.role == "enrollment"
        if enrolled:
            crud.check_enrollment_rate(session, now=now, per_minute=settings.enrollment_per_minute)
        approved = not (enrolled and settings.host_approval)
        host, token = crud.register_host(session, data=body, now=now, approved=approved)
    session.commit()
    return HostRegistered(host_id=host.id, name=host.name, token=token)


@router.get("", response_model=Page[HostOut], summary="List hosts with their GPUs and computed status")
def list_hosts(
    _: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    status_: Annotated[HostStatus | None, Query(alias="status", description="only hosts in this status")] = None,
    label: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*=[^\x00]*$", max_length=320, description="key=value"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[HostOut]:
    pair = tuple(label.split("=", 1)) if label else None
    hosts, total = crud.list_hosts(
        session,
        now=now,
        stale_s=settings.heartbeat_stale_s,
        lost_s=settings.heartbeat_lost_s,
        status=status_,
        label=pair,  # type: ignore[arg-type]
        limit=min(limit, settings.max_page_size),
        offset=offset,
    )
    items = [host_out(h, now=now, settings=settings) for h in hosts]
    return Page[HostOut](items=items, total=total, limit=limit, offset=offset)


@router.get("/{host_id}", response_model=HostOut, summary="A host", responses=responses(404))
def get_host(host_id: HostId, _: HostAuthDep, session: SessionDep, settings: SettingsDep, now: NowDep) -> HostOut:
    return host_out(_host(session, host_id), now=now, settings=settings)


@router.delete(
    "/{host_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a host and its GPUs", responses=responses(404)
)
def delete_host(host_id: HostId, _: AdminDep, session: SessionDep) -> Response:
    crud.delete_host(session, host=_host(session, host_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{host_id}/heartbeat",
    response_model=HeartbeatOut,
    summary="Heartbeat with live GPU telemetry",
    responses=responses(404),
)
def heartbeat(host_id: HostId, claim: ClaimDep, session: SessionDep, now: NowDep, body: HeartbeatIn) -> HeartbeatOut:
    # The hot path: an agent's token is checked inside the heartbeat's own UPDATE (one round trip, not two).
    secret: str | None = None
    if isinstance(claim, AgentClaim) and claim.host_id == str(host_id):
        secret = claim.secret
    else:
        require_host_sync(host_id, claim if isinstance(claim, Principal) else verify_claim(session, claim))
    state, pending = crud.heartbeat(session, host_id=str(host_id), data=body, now=now, secret=secret)
    session.commit()
    return HeartbeatOut(status=state, pending_requests=pending)


@router.post(
    "/{host_id}/drain",
    response_model=HostOut,
    summary="Drain a host: it takes no new work and its GPUs stop counting as available",
    responses=responses(404),
)
def drain(host_id: HostId, _: AdminDep, session: SessionDep, settings: SettingsDep, now: NowDep) -> HostOut:
    host = crud.set_drain(session, host=_host(session, host_id), drain=True, now=now)
    session.commit()
    return host_out(host, now=now, settings=settings)


@router.post(
    "/{host_id}/approve",
    response_model=HostOut,
    summary="Approve an enrolled host: its GPUs count toward availability (PLANNER_HOST_APPROVAL)",
    responses=responses(404),
)
def approve(host_id: HostId, _: AdminDep, session: SessionDep, settings: SettingsDep, now: NowDep) -> HostOut:
    host = crud.approve_host(session, host=_host(session, host_id))
    session.commit()
    return host_out(host, now=now, settings=settings)


@router.delete("/{host_id}/drain", response_model=HostOut, summary="Undrain a host", responses=responses(404))
def undrain(host_id: HostId, _: AdminDep, session: SessionDep, settings: SettingsDep, now: NowDep) -> HostOut:
    host = crud.set_drain(session, host=_host(session, host_id), drain=False, now=now)
    session.commit()
    return host_out(host, now=now, settings=settings)


@router.post(
    "/{host_id}/requests",
    status_code=status.HTTP_201_CREATED,
    response_model=ProbeRequestOut,
    summary="Queue a probe or calibration request for the host's agent",
    responses=responses(404),
)
def queue_request(
    host_id: HostId, _: AdminDep, session: SessionDep, now: NowDep, body: Annotated[ProbeRequestIn, Body()]
) -> ProbeRequestOut:
    req = crud.queue_request(session, host=_host(session, host_id), data=body, now=now)
    session.commit()
    return ProbeRequestOut.model_validate(req)


@router.get(
    "/{host_id}/requests",
    response_model=list[ProbeRequestOut],
    summary="Requests for the host's agent, oldest first",
    responses=responses(404),
)
def list_requests(
    host_id: HostId,
    _: HostAuthDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    state: Annotated[Literal["queued", "claimed", "done", "failed"] | None, Query()] = None,
) -> list[ProbeRequestOut]:
    _host(session, host_id)
    found = crud.list_requests(
        session, host_id=str(host_id), state=state, now=now, lease_s=settings.probe_request_lease_s
    )
    out = [ProbeRequestOut.model_validate(r) for r in found]
    session.commit()  # expired leases returned to the queue
    return out


@router.post(
    "/{host_id}/requests/{request_id}/claim",
    response_model=ProbeRequestOut,
    summary="Claim a queued request (409 if it is not queued)",
    responses=responses(404, 409),
)
def claim_request(
    host_id: HostId, request_id: RequestId, _: HostAuthDep, session: SessionDep, settings: SettingsDep, now: NowDep
) -> ProbeRequestOut:
    crud.expire_leases(session, host_id=str(host_id), now=now, lease_s=settings.probe_request_lease_s)
    req = crud.claim_request(session, host_id=str(host_id), request_id=str(request_id), now=now)
    session.commit()
    return ProbeRequestOut.model_validate(req)


@router.post(
    "/{host_id}/requests/{request_id}/complete",
    response_model=ProbeRequestOut,
    summary="Report a claimed request done or failed",
    responses=responses(404, 409),
)
def complete_request(
    host_id: HostId,
    request_id: RequestId,
    _: HostAuthDep,
    session: SessionDep,
    now: NowDep,
    body: ProbeRequestComplete,
) -> ProbeRequestOut:
    req = crud.complete_request(session, host_id=str(host_id), request_id=str(request_id), data=body, now=now)
    session.commit()
    return ProbeRequestOut.model_validate(req)
