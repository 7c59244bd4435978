"""What routes depend on: the settings, a store session, the clock, and who is calling.

Credentials are `Authorization: Bearer <token>`: the admin token, the enrollment token (registers hosts,
nothing else), or a host's agent token (`<host_id>.<secret>`, only its own host's data). No or unknown
credentials: 401. Known credentials without the right: 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from planner.core.config import Settings
from planner.core.errors import ForbiddenError
from planner.core.security import agent_token_matches, same_secret, split_agent_token
from planner.db import models as m

Role = Literal["admin", "agent", "enrollment"]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The admin token, the enrollment token (POST /v1/hosts only), or a host's agent token.",
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin, an enrolling agent, or the agent of one host."""

    role: Role
    host_id: str | None = None


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """A session for one request; what the route did not commit is rolled back when it closes."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    session = factory()
    try:
        yield session
    finally:
        session.close()


def get_now(request: Request) -> datetime:
    """The app's clock (tests give the app a fake one)."""
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
NowDep = Annotated[datetime, Depends(get_now)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def get_principal(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    if credentials is None:
        raise _unauthorized("no credentials: send `Authorization: Bearer <token>`")
    token = credentials.credentials
    if same_secret(token, settings.admin_token.get_secret_value()):
        return Principal("admin")
    if settings.enrollment_token is not None and same_secret(token, settings.enrollment_token.get_secret_value()):
        return Principal("enrollment")
    parsed = split_agent_token(token)
    if parsed is not None:
        host_id, secret = parsed
        host = session.get(m.Host, host_id)
        if host is not None and agent_token_matches(secret, host.token_hash):
            return Principal("agent", host_id=host_id)
    raise _unauthorized("unknown token: use the admin token or the token this host got at registration")


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _roles(*allowed: Role) -> Callable[[Principal], Principal]:
    def check(principal: PrincipalDep) -> Principal:
        if principal.role not in allowed:
            raise ForbiddenError(f"{principal.role} credentials cannot do this; it needs: {', '.join(allowed)}")
        return principal

    return check


def require_host(
    host_id: Annotated[uuid.UUID, Path(description="the host's id")], principal: PrincipalDep
) -> Principal:
    """The admin, or the agent of the host in the path."""
    if principal.role == "admin" or (principal.role == "agent" and principal.host_id == str(host_id)):
        return principal
    if principal.role == "agent":
        raise ForbiddenError("an agent token may read and write only its own host's data")
    raise ForbiddenError(f"{principal.role} credentials cannot do this; it needs: admin or this host's agent")


AdminDep = Annotated[Principal, Depends(_roles("admin"))]
RegistrarDep = Annotated[Principal, Depends(_roles("admin", "enrollment"))]
AgentDep = Annotated[Principal, Depends(_roles("admin", "agent"))]
"""The admin or any host's agent (the route checks which host's data it touches)."""
HostAuthDep = Annotated[Principal, Depends(require_host)]
