"""Hosts: registration with a token, heartbeats, drain, liveness sweep, and the requests queued for agents."""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import BindParameter, ColumnElement, Table, Update, and_, bindparam, case, func, select, update
from sqlalchemy.orm import Session, selectinload

from planner.core.errors import ConflictError, FieldError, NotFoundError, RateLimitedError, UnauthorizedError
from planner.core.liveness import HostStatus, host_status, thresholds
from planner.core.security import agent_token_matches, new_agent_token
from planner.db import models as m
from planner.schemas.hosts import HeartbeatIn, HostRegister, ProbeRequestComplete, ProbeRequestIn

HOST_STATUSES: tuple[HostStatus, ...] = ("active", "stale", "lost", "draining")


def last_seen(host: m.Host) -> datetime:
    """The host's last sign of life: its last heartbeat, else its registration."""
    return host.last_heartbeat_at or host.registered_at


def effective_status(host: m.Host, *, now: datetime, stale_s: float, lost_s: float) -> HostStatus:
    return host_status(
        now, last_seen=last_seen(host), drained=host.drained_at is not None, stale_s=stale_s, lost_s=lost_s
    )


def _last_seen_sql() -> ColumnElement[datetime]:
    return func.coalesce(m.Host.last_heartbeat_at, m.Host.registered_at)


def status_clause(status: HostStatus, *, now: datetime, stale_s: float, lost_s: float) -> ColumnElement[bool]:
    """The SQL form of `planner.core.liveness.host_status(...) == status`."""
    stale_at, lost_at = thresholds(now, stale_s=stale_s, lost_s=lost_s)
    seen = _last_seen_sql()
    if status == "lost":
        return seen <= lost_at
    if status == "stale":
        return and_(seen <= stale_at, seen > lost_at)
    alive = seen > stale_at
    if status == "draining":
        return and_(alive, m.Host.drained_at.is_not(None))
    return and_(alive, m.Host.drained_at.is_(None))


def _family_ids(session: Session) -> set[str]:
    return set(session.scalars(select(m.GpuFamily.id)))


def _match_family(session: Session, product_name: str) -> str | None:
    """The one family whose NVML patterns match a product name (catalog and operator-defined), else None."""
    hits = []
    for fam_id, patterns in session.execute(select(m.GpuFamily.id, m.GpuFamily.nvml_patterns)):
        for pattern in patterns or []:
            try:
                if re.search(pattern, product_name, flags=re.IGNORECASE):
                    hits.append(fam_id)
                    break
            except re.error:
                continue
    return hits[0] if len(hits) == 1 else None


def _set_gpus(session: Session, host: m.Host, data: HostRegister, now: datetime) -> None:
    families = _family_ids(session)
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, gpu in enumerate(data.gpus):
        if gpu.gpu_family is not None and gpu.gpu_family not in families:
            problems.append(
                (
                    ("gpus", i, "gpu_family"),
                    f"unknown GPU family {gpu.gpu_family!r}; send null, or define it with PUT /v1/gpu-families/{{id}}",
                )
            )
    uuids = [g.uuid for g in data.gpus]
    if uuids:
        owners = dict(session.execute(select(m.Gpu.uuid, m.Gpu.host_id).where(m.Gpu.uuid.in_(uuids))).all())
        for i, gpu in enumerate(data.gpus):
            owner = owners.get(gpu.uuid)
            if owner is not None and owner != host.id:
                raise ConflictError(
                    f"gpus.{i}.uuid: GPU {gpu.uuid!r} is registered to another host ({owner}); "
                    "remove that host first (DELETE /v1/hosts/{host_id}) if the card moved"
                )
    if problems:
        raise FieldError(problems)
    previous = {g.uuid: g for g in host.gpus}
    host.gpus.clear()
    session.flush()  # (host_id, index) is unique: drop the old layout before writing the new one
    for gpu in data.gpus:
        old = previous.get(gpu.uuid)
        host.gpus.append(
            m.Gpu(
                uuid=gpu.uuid,
                index=gpu.index,
                product_name=gpu.product_name,
                gpu_family_id=gpu.gpu_family or _match_family(session, gpu.product_name),
                memory_gib=gpu.memory_gib,
                compute_capability=gpu.compute_capability,
                mig_mode=gpu.mig_mode,
                power_limit_w=gpu.power_limit_w,
                flagged=old.flagged if old else False,
                flag_reason=old.flag_reason if old else None,
                telemetry=old.telemetry if old else {},
                last_seen_at=now,
            )
        )


def _apply_registration(host: m.Host, data: HostRegister) -> None:
    host.labels = dict(data.labels)
    host.driver_version = data.driver_version
    host.cuda_version = data.cuda_version
    host.agent_version = data.agent_version
    host.torch_version = data.torch_version


ENROLLMENT_WINDOW_S = 60


def check_enrollment_rate(session: Session, *, now: datetime, per_minute: int) -> None:
    """429 when `per_minute` hosts were registered in the last minute, fleet-wide (the store counts, so every
    worker process and replica of the service shares the budget). 0: no limit."""
    if per_minute <= 0:
        return
    since = now - timedelta(seconds=ENROLLMENT_WINDOW_S)
    recent = session.scalar(select(func.count()).select_from(m.Host).where(m.Host.registered_at >= since)) or 0
    if recent >= per_minute:
        raise RateLimitedError(
            f"{recent} hosts registered in the last minute, the limit (PLANNER_ENROLLMENT_PER_MINUTE={per_minute}); "
            "retry after Retry-After seconds (the agent does), or raise the limit for a planned roll-out",
            retry_after_s=ENROLLMENT_WINDOW_S // 4,
        )


def approve_host(session: Session, *, host: m.Host) -> m.Host:
    """An operator lets a host's GPUs count toward availability (under PLANNER_HOST_APPROVAL)."""
    host.approved = True
    session.flush()
    return host


def register_host(session: Session, *, data: HostRegister, now: datetime, approved: bool = True) -> tuple[m.Host, str]:
    """A new host and its token (returned once; the store keeps the hash). 409 if the name is taken."""
    if host_id_by_name(session, name=data.name) is not None:
        raise ConflictError(
            f"a host named {data.name!r} is registered; re-register with ?rotate=true and the admin token "
            "to replace its token"
        )
    host_id = str(uuid.uuid4())
    token, token_hash = new_agent_token(host_id)
    host = m.Host(
        id=host_id,
        name=data.name,
        token_hash=token_hash,
        status="active",
        registered_at=now,
        approved=approved,
        gpus=[],
    )
    _apply_registration(host, data)
    session.add(host)
    session.flush()
    _set_gpus(session, host, data, now)
    session.flush()
    return host, token


def reregister_host(session: Session, *, data: HostRegister, now: datetime) -> tuple[m.Host, str]:
    """Replace a registered host's details, GPUs and token (the old token stops working)."""
    host = session.scalar(select(m.Host).where(m.Host.name == data.name).options(selectinload(m.Host.gpus)))
    if host is None:
        return register_host(session, data=data, now=now)
    token, token_hash = new_agent_token(host.id)
    host.token_hash = token_hash
    _apply_registration(host, data)
    _set_gpus(session, host, data, now)
    host.last_heartbeat_at = now
    session.flush()
    return host, token


def host_id_by_name(session: Session, *, name: str) -> str | None:
    return session.scalar(select(m.Host.id).where(m.Host.name == name))


def get_host(session: Session, *, host_id: str, with_gpus: bool = True) -> m.Host:
    query = select(m.Host).where(m.Host.id == host_id)
    if with_gpus:
        query = query.options(selectinload(m.Host.gpus))
    host = session.scalar(query)
    if host is None:
        raise NotFoundError("host", host_id, hint="list hosts with GET /v1/hosts")
    return host


def list_hosts(
    session: Session,
    *,
    now: datetime,
    stale_s: float,
    lost_s: float,
    status: HostStatus | None = None,
    label: tuple[str, str] | None = None,
    limit: int,
    offset: int,
) -> tuple[Sequence[m.Host], int]:
    query = select(m.Host)
    if status is not None:
        query = query.where(status_clause(status, now=now, stale_s=stale_s, lost_s=lost_s))
    query = query.options(selectinload(m.Host.gpus)).order_by(m.Host.name)
    if label is None:
        total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
        return session.scalars(query.limit(limit).offset(offset)).all(), int(total)
    key, value = label  # labels are JSON: filtered here, the same on both backends
    hosts = [h for h in session.scalars(query) if h.labels.get(key) == value]
    return hosts[offset : offset + limit], len(hosts)


def delete_host(session: Session, *, host: m.Host) -> None:
    session.delete(host)
    session.flush()


HOSTS = cast(Table, m.Host.__table__)
GPUS = cast(Table, m.Gpu.__table__)
REQUESTS = cast(Table, m.ProbeRequest.__table__)


@functools.cache
def _heartbeat_statement(*, readings: bool, agent_version: bool, postgres: bool) -> Update:
    """The heartbeat UPDATE, built once per shape (Core, bound parameters): building it costs more than running it."""
    host_id: BindParameter[str] = bindparam("host_id", type_=HOSTS.c.id.type)
    values: dict[str, Any] = {
        "last_heartbeat_at": bindparam("now", type_=HOSTS.c.last_heartbeat_at.type),
        "status": case((HOSTS.c.drained_at.is_(None), "active"), else_="draining"),
    }
    if readings:  # a heartbeat without readings is a liveness ping: the last readings stay
        values["telemetry"] = bindparam("telemetry", type_=HOSTS.c.telemetry.type)
    if agent_version:
        values["agent_version"] = bindparam("agent_version")
    pending = (
        select(func.count())
        .select_from(REQUESTS)
        .where(REQUESTS.c.host_id == host_id, REQUESTS.c.state == "queued")
        .scalar_subquery()
    )
    known = (
        select(func.count())
        .select_from(GPUS)
        .where(GPUS.c.host_id == host_id, GPUS.c.uuid.in_(bindparam("uuids", expanding=True)))
        .scalar_subquery()
    )
    returning: list[Any] = [HOSTS.c.token_hash, HOSTS.c.drained_at, pending, known]
    if postgres:
        # A heartbeat lost in a crash is harmless (the next comes in seconds): don't wait for the WAL flush.
        # set_config(..., true) is SET LOCAL, riding on this statement instead of costing a round trip.
        returning.append(func.set_config("synchronous_commit", "off", True))
    return update(HOSTS).where(HOSTS.c.id == host_id).values(**values).returning(*returning)


def heartbeat(
    session: Session, *, host_id: str, data: HeartbeatIn, now: datetime, secret: str | None = None
) -> tuple[HostStatus, int]:
    """Record a heartbeat with live telemetry: (the host's status now, requests queued for it).

    The service's hot path (every agent, every few seconds), so it is one UPDATE: the readings replace the
    host row's (`telemetry.gpus`, by GPU uuid; none sent: the last ones stay), and RETURNING brings back the
    token hash, the drain, the queued requests and how many of the reported GPUs are this host's. With an
    agent's `secret`, the token is checked against that hash (in constant time) before anything commits: the
    check and the write share one round trip. A wrong token, or a GPU that is not this host's, rolls it back.
    """
    readings = {g.uuid: g.model_dump(exclude={"uuid"}, exclude_none=True) for g in data.gpus}
    params: dict[str, Any] = {"host_id": host_id, "now": now, "uuids": list(readings)}
    if readings:
        power = [g.power_w for g in data.gpus if g.power_w is not None]
        util = [g.utilization_pct for g in data.gpus if g.utilization_pct is not None]
        summary: dict[str, Any] = {"received_at": now.isoformat(), "gpus_reporting": len(readings), "gpus": readings}
        if power:
            summary["power_w"] = round(sum(power), 3)
        if util:
            summary["utilization_pct"] = round(sum(util) / len(util), 3)
        params["telemetry"] = summary
    if data.agent_version is not None:
        params["agent_version"] = data.agent_version
    statement = _heartbeat_statement(
        readings=bool(readings),
        agent_version=data.agent_version is not None,
        postgres=session.get_bind().dialect.name == "postgresql",
    )
    row = session.connection().execute(statement, params).first()
    if row is None:
        if secret is not None:
            raise UnauthorizedError("unknown token: use the admin token or the token this host got at registration")
        raise NotFoundError("host", host_id, hint="register it with POST /v1/hosts")
    token_hash, drained_at, queued, owned_reported = row[:4]
    if secret is not None and not agent_token_matches(secret, token_hash):
        session.rollback()
        raise UnauthorizedError("unknown token: use the admin token or the token this host got at registration")
    if owned_reported != len(readings):
        session.rollback()
        owned = set(session.scalars(select(m.Gpu.uuid).where(m.Gpu.host_id == host_id)))
        raise FieldError(
            [
                (("gpus", i, "uuid"), f"GPU {g.uuid!r} is not registered to this host; re-register the host")
                for i, g in enumerate(data.gpus)
                if g.uuid not in owned
            ]
        )
    status: HostStatus = "active" if drained_at is None else "draining"
    return status, int(queued or 0)


def set_drain(session: Session, *, host: m.Host, drain: bool, now: datetime) -> m.Host:
    host.drained_at = (host.drained_at or now) if drain else None
    session.flush()
    return host


def sweep_hosts(session: Session, *, now: datetime, stale_s: float, lost_s: float) -> dict[str, int]:
    """Write each host's computed status to the store; returns how many hosts moved to each status."""
    moved: dict[str, int] = {}
    for status in HOST_STATUSES:
        result = session.execute(
            update(m.Host)
            .where(status_clause(status, now=now, stale_s=stale_s, lost_s=lost_s), m.Host.status != status)
            .values(status=status)
            .execution_options(synchronize_session=False)
        )
        moved[status] = int(result.rowcount)  # type: ignore[attr-defined]
    session.flush()
    return moved


def count_by_status(session: Session, *, now: datetime, stale_s: float, lost_s: float) -> dict[str, int]:
    """Hosts per computed status (every status present, zero included)."""
    return {
        status: int(
            session.scalar(
                select(func.count())
                .select_from(m.Host)
                .where(status_clause(status, now=now, stale_s=stale_s, lost_s=lost_s))
            )
            or 0
        )
        for status in HOST_STATUSES
    }


def available_gpus(session: Session, *, now: datetime, stale_s: float, lost_s: float) -> dict[str, int]:
    """GPUs per family on active, approved hosts (alive, not draining), calibrations not flagging them."""
    rows = session.execute(
        select(m.Gpu.gpu_family_id, func.count())
        .join(m.Host, m.Gpu.host_id == m.Host.id)
        .where(
            status_clause("active", now=now, stale_s=stale_s, lost_s=lost_s),
            m.Host.approved.is_(True),
            m.Gpu.flagged.is_(False),
            m.Gpu.gpu_family_id.is_not(None),
        )
        .group_by(m.Gpu.gpu_family_id)
    ).all()
    return {str(family): int(n) for family, n in rows}


# Requests queued for an agent.


def queue_request(session: Session, *, host: m.Host, data: ProbeRequestIn, now: datetime) -> m.ProbeRequest:
    req = m.ProbeRequest(
        id=str(uuid.uuid4()), host_id=host.id, kind=data.kind, spec=dict(data.spec), state="queued", created_at=now
    )
    session.add(req)
    session.flush()
    return req


def expire_leases(session: Session, *, host_id: str, now: datetime, lease_s: float) -> int:
    """Claimed requests older than their lease go back to the queue (their agent died, or the planner did before
    it heard the result); a result that still arrives is taken (`complete_request` accepts a re-queued one)."""
    result = session.execute(
        update(m.ProbeRequest)
        .where(
            m.ProbeRequest.host_id == host_id,
            m.ProbeRequest.state == "claimed",
            m.ProbeRequest.claimed_at < now - timedelta(seconds=lease_s),
        )
        .values(state="queued", claimed_at=None, error="lease expired: returned to the queue")
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def list_requests(
    session: Session, *, host_id: str, state: str | None, now: datetime | None = None, lease_s: float | None = None
) -> Sequence[m.ProbeRequest]:
    """The host's requests, oldest first; expired leases are returned to the queue first (the caller commits)."""
    if now is not None and lease_s is not None:
        expire_leases(session, host_id=host_id, now=now, lease_s=lease_s)
    query = select(m.ProbeRequest).where(m.ProbeRequest.host_id == host_id)
    if state is not None:
        query = query.where(m.ProbeRequest.state == state)
    return session.scalars(query.order_by(m.ProbeRequest.created_at, m.ProbeRequest.id)).all()


def get_request(session: Session, *, host_id: str, request_id: str) -> m.ProbeRequest:
    req = session.get(m.ProbeRequest, request_id)
    if req is None or req.host_id != host_id:
        raise NotFoundError("request", request_id, hint=f"list them with GET /v1/hosts/{host_id}/requests")
    return req


def claim_request(session: Session, *, host_id: str, request_id: str, now: datetime) -> m.ProbeRequest:
    """Queued -> claimed, atomically: of two agents racing for one request, one wins and the other gets 409."""
    req = get_request(session, host_id=host_id, request_id=request_id)
    result = session.execute(
        update(m.ProbeRequest)
        .where(m.ProbeRequest.id == request_id, m.ProbeRequest.state == "queued")
        .values(state="claimed", claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(req)
        raise ConflictError(f"request {request_id} is {req.state}, not queued; only a queued request can be claimed")
    session.refresh(req)
    return req


def _check_result_run(session: Session, *, host_id: str, data: ProbeRequestComplete) -> None:
    """`done` names a run this host stored: a request must never end `done` pointing at nothing (issue 26)."""
    if data.result_run_id is None:
        raise FieldError.at(
            ("result_run_id",), "required when state is done (the run that answered the request); send it, or "
            "state failed with the error"
        )  # fmt: skip
    run = session.get(m.ProbeRun, str(data.result_run_id))
    if run is None or run.host_id != host_id:
        raise FieldError.at(
            ("result_run_id",),
            f"no stored run {data.result_run_id} of this host: submit it first (POST /v1/probe-runs), or, if the "
            "planner refused it, complete the request with state failed and the planner's reason",
        )


def complete_request(
    session: Session, *, host_id: str, request_id: str, data: ProbeRequestComplete, now: datetime
) -> m.ProbeRequest:
    req = get_request(session, host_id=host_id, request_id=request_id)
    if req.state == "queued" and req.error and req.error.startswith("lease expired"):
        pass  # its lease ran out while the agent worked: the result is still the answer to it
    elif req.state != "claimed":
        raise ConflictError(f"request {request_id} is {req.state}; claim it before completing it")
    if data.state == "done":
        _check_result_run(session, host_id=host_id, data=data)
    req.state = data.state
    req.result_run_id = str(data.result_run_id) if data.result_run_id else None
    req.error = data.error
    req.finished_at = now
    session.flush()
    return req
