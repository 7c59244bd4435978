"""Errors as HTTP answers: each names what was wrong (the field, the thing looked for) and how to fix it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from planner.core.errors import (
    ConflictError,
    FieldError,
    ForbiddenError,
    InputError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
)
from planner.db.store import StoreError

_FIELD_PREFIX = re.compile(r"^(?:Value error, )?([a-z_][a-z0-9_]*): ")


def _problem(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    path = list(loc)
    field = (
        ".".join(str(p) for p in path[1:])
        if path and path[0] in ("body", "query", "path", "header")
        else ".".join(str(p) for p in path)
    )
    return {"loc": path, "field": field, "msg": msg, "type": kind}


def validation_problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors without the input (it may hold NaN or secrets), and model-level errors moved to their field."""
    out = []
    for err in errors:
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid"))
        match = _FIELD_PREFIX.match(msg)
        if match and err.get("type") == "value_error":
            loc.append(match.group(1))
            msg = msg[match.end() :]
        out.append(_problem(loc, msg.removeprefix("Value error, "), str(err.get("type", "value_error"))))
    return out


def _json(code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=code, content=body, headers=headers)


def _unique_violation(exc: IntegrityError) -> bool:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(orig)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        broken = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if broken is not None:  # not a field's fault: the body did not parse (FastAPI puts the offset in loc)
            where = broken.get("loc", ("body", "?"))[-1]
            return _json(
                status.HTTP_400_BAD_REQUEST,
                {"detail": f"the body is not JSON ({broken.get('msg', 'decode error')} at character {where}); "
                 "send a JSON object with Content-Type: application/json"},
            )  # fmt: skip
        return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, {"detail": validation_problems(exc.errors())})

    @app.exception_handler(FieldError)
    async def _fields(_: Request, exc: FieldError) -> JSONResponse:
        detail = [_problem(("body", *loc), msg, "store") for loc, msg in exc.problems]
        return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, {"detail": detail})

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return _json(status.HTTP_422_UNPROCESSABLE_CONTENT, {"detail": [_problem(("body",), str(exc), "input")]})

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _json(status.HTTP_404_NOT_FOUND, {"detail": str(exc)})

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return _json(status.HTTP_409_CONFLICT, {"detail": str(exc)})

    @app.exception_handler(UnauthorizedError)
    async def _unauthorized(_: Request, exc: UnauthorizedError) -> JSONResponse:
        return _json(status.HTTP_401_UNAUTHORIZED, {"detail": str(exc)}, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ForbiddenError)
    async def _forbidden(_: Request, exc: ForbiddenError) -> JSONResponse:
        return _json(status.HTTP_403_FORBIDDEN, {"detail": str(exc)})

    @app.exception_handler(RateLimitedError)
    async def _rate_limited(_: Request, exc: RateLimitedError) -> JSONResponse:
        return _json(
            status.HTTP_429_TOO_MANY_REQUESTS, {"detail": str(exc)}, headers={"Retry-After": str(exc.retry_after_s)}
        )

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        return _json(status.HTTP_503_SERVICE_UNAVAILABLE, {"detail": str(exc)})

    @app.exception_handler(OperationalError)
    async def _store_down(_: Request, exc: OperationalError) -> JSONResponse:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        if "no such table" in reason or "no such column" in reason:  # SQLite behind this version's schema
            return _json(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                {"detail": f"the store is behind this version's schema ({reason}); run `planner db upgrade`"},
            )
        return _json(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            {"detail": f"the store did not answer ({reason}); retry shortly, and check the database if it persists"},
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(PoolTimeoutError)
    async def _pool_exhausted(_: Request, exc: PoolTimeoutError) -> JSONResponse:
        return _json(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            {"detail": "every store connection is busy (PLANNER_DB_POOL_TIMEOUT_S passed); retry shortly"},
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        if not _unique_violation(exc):
            raise exc
        return _json(
            status.HTTP_409_CONFLICT,
            {"detail": "another request stored the same thing at the same time; read it, or retry"},
        )
