"""What routes depend on: the settings, a store session, the clock, and who is calling.

Credentials are `Authorization: Bearer <token>`: the admin token, the enrollment token (registers hosts,
nothing else), the submitter token (submits jobs and reads them, nothing else), or a host's agent token
(`<host_id>.<secret>`, only its own host's data). No or unknown credentials: 401. Known credentials without
the right: 403.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Path, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from planner.core.config import Settings
from planner.core.errors import ForbiddenError, UnauthorizedError
from planner.core.security import agent_token_matches, same_secret, split_agent_token
from planner.db import models as m

log = logging.getLogger("planner.api")

Role = Literal["admin", "agent", "enrollment", "submitter"]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The admin token, the enrollment token (POST /v1/hosts only), the submitter token (jobs), or a "
    "host's agent token.",
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin, an enrolling agent, or the agent of one host."""

    role: Role
    host_id: str | None = None


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in the thread pool, and a
# thread hop per dependency would cost more than the work (the heartbeat is the service's hot path).


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for one request; what the route did not commit is rolled back when it closes.

    Creating a session does no I/O (it connects on first use, in the route's thread), and closing one after a
    commit returns an idle connection to the pool, so that runs on the event loop; closing one with a transaction
    open sends a ROLLBACK, which runs in the thread pool (a hung store must not stop the event loop: /healthz).
    """
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    session = factory()
    try:
        yield session
    finally:
        if session.in_transaction():  # a ROLLBACK goes over the network: never on the event loop
            await run_in_threadpool(close_quietly, session)
        else:
            session.close()


def close_quietly(session: Session) -> None:
    """Close a session whose connection may be gone (the store hung or restarted): the pool drops it, and the
    request's answer, already decided, is not the client's to lose."""
    try:
        session.close()
    except SQLAlchemyError:
        log.warning("closing a session failed; its connection is dropped", exc_info=True)


async def get_now(request: Request) -> datetime:
    """The app's clock (tests give the app a fake one)."""
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
NowDep = Annotated[datetime, Depends(get_now)]


@dataclass(frozen=True)
class AgentClaim:
    """An agent token not yet checked against the store: the host it names and its secret."""

    host_id: str
    secret: str


async def get_claim(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> Principal | AgentClaim:
    """Who the caller says it is, from the token alone (no I/O): the admin and enrollment tokens are settled here."""
    if credentials is None:
        raise UnauthorizedError("no credentials: send `Authorization: Bearer <token>`")
    token = credentials.credentials
    if same_secret(token, settings.admin_token.get_secret_value()):
        return Principal("admin")
    if settings.enrollment_token is not None and same_secret(token, settings.enrollment_token.get_secret_value()):
        return Principal("enrollment")
    if settings.submitter_token is not None and same_secret(token, settings.submitter_token.get_secret_value()):
        return Principal("submitter")
    parsed = split_agent_token(token)
    if parsed is None:
        raise UNKNOWN_TOKEN
    return AgentClaim(*parsed)


ClaimDep = Annotated[Principal | AgentClaim, Depends(get_claim)]
UNKNOWN_TOKEN = UnauthorizedError("unknown token: use the admin token or the token this host got at registration")


def verify_claim(session: Session, claim: AgentClaim) -> Principal:
    """The agent principal of a claim whose secret matches its host's stored hash, else 401."""
    token_hash = session.scalar(select(m.Host.token_hash).where(m.Host.id == claim.host_id))
    if token_hash is None or not agent_token_matches(claim.secret, token_hash):
        raise UNKNOWN_TOKEN
    return Principal("agent", host_id=claim.host_id)


async def get_principal(session: SessionDep, claim: ClaimDep) -> Principal:
    if isinstance(claim, Principal):
        return claim
    return await run_in_threadpool(verify_claim, session, claim)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _roles(*allowed: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: PrincipalDep) -> Principal:
        if principal.role not in allowed:
            raise ForbiddenError(f"{principal.role} credentials cannot do this; it needs: {', '.join(allowed)}")
        return principal

    return check


async def require_host(
    host_id: Annotated[uuid.UUID, Path(description="the host's id")], principal: PrincipalDep
) -> Principal:
    """The admin, or the agent of the host in the path."""
    return require_host_sync(host_id, principal)


def require_host_sync(host_id: uuid.UUID, principal: Principal) -> Principal:
    if principal.role == "admin" or (principal.role == "agent" and principal.host_id == str(host_id)):
        return principal
    if principal.role == "agent":
        raise ForbiddenError("an agent token may read and write only its own host's data")
    raise ForbiddenError(f"{principal.role} credentials cannot do this; it needs: admin or this host's agent")


AdminDep = Annotated[Principal, Depends(_roles("admin"))]
SubmitterDep = Annotated[Principal, Depends(_roles("admin", "submitter"))]
"""The admin or the job submitter (submits jobs and reads their state and images, nothing else)."""
RegistrarDep = Annotated[Principal, Depends(_roles("admin", "enrollment"))]
AgentDep = Annotated[Principal, Depends(_roles("admin", "agent"))]
"""The admin or any host's agent (the route checks which host's data it touches)."""
HostAuthDep = Annotated[Principal, Depends(require_host)]
