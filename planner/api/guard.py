"""The edge of the service: what a request must be before any route reads or parses it.

A pure ASGI middleware (no body is buffered by a framework before it runs), in this order:
1. the path and query string carry no NUL (`%00`) and decode as UTF-8: PostgreSQL stores neither a NUL nor
   half a character, so such input is 422 on every route, on both stores, before it reaches a query;
2. a body larger than the route's limit is 413, from its Content-Length before a byte of it is read (or, for a
   chunked body, as soon as the bytes read pass the limit). Limits: `max_probe_run_bytes` (16 MiB) for
   `POST /v1/probe-runs`, `max_body_bytes` (1 MiB) for every other route;
3. a request with a body to /v1 must carry a bearer token of a known shape (the admin, enrollment or
   submitter token, or `<host id>.<secret>`), else 401 before its body is read: a stranger's upload costs
   nothing. The route still checks the token against the store and its rights;
4. a JSON body whose strings hold `\\u0000` or a lone surrogate (`\\ud800`) is 422, naming the field.
Everything else passes through unchanged, the body replayed to the route from the bytes read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from planner.core.config import Settings
from planner.core.security import same_secret, split_agent_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BAD_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})", re.IGNORECASE)
"""A JSON escape of NUL or of a surrogate (an even run of backslashes before it: not itself escaped)."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def body_limit(settings: Settings, method: str, path: str) -> int:
    """The largest body a route takes (module docstring, 2.)."""
    if method == "POST" and path.rstrip("/") == "/v1/probe-runs":
        return settings.max_probe_run_bytes
    return settings.max_body_bytes


def token_shape_ok(settings: Settings, authorization: str | None) -> bool:
    """Whether a request names credentials that could be valid, without touching the store."""
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    fixed = [settings.admin_token, settings.enrollment_token, settings.submitter_token]
    if any(s is not None and same_secret(token, s.get_secret_value()) for s in fixed):
        return True
    return split_agent_token(token) is not None


def refused_text(value: str, where: str) -> str | None:
    """Why PostgreSQL would refuse a string (a NUL, a lone surrogate), or None."""
    if "\x00" in value:
        return f"{where} holds a NUL character (\\u0000), which the store cannot keep; remove it"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{where} holds a lone UTF-16 surrogate (half a character); send whole characters"
    return None


def _walk(value: Any, loc: list[str | int]) -> tuple[list[str | int], str] | None:
    if isinstance(value, str):
        why = refused_text(value, ".".join(map(str, loc)) or "the body")
        return (loc, why) if why else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _walk(key, [*loc, "<key>"]) or _walk(item, [*loc, key])
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _walk(item, [*loc, i])
            if found:
                return found
    return None


def body_problem(body: bytes) -> tuple[list[str | int], str] | None:
    """(location, why) of the first string in a JSON body the store would refuse; cheap when there is none."""
    if not _BAD_ESCAPE.search(body):
        return None
    try:
        return _walk(json.loads(body), [])
    except ValueError:
        return None  # not JSON: the route answers 400 itself


def url_problem(scope: Scope) -> str | None:
    """Why the path or query string cannot reach the store, or None."""
    raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    for where, raw in (("the path", raw_path), ("the query string", scope.get("query_string", b""))):
        data = unquote_to_bytes(raw.replace(b"+", b" ")) if isinstance(raw, bytes) else b""
        if b"\x00" in data:
            return f"{where} holds a NUL character (%00), which the store cannot keep; remove it"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return f"{where} is not UTF-8 once percent-decoded; send UTF-8"
    return None


async def _answer(send: Send, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _problem(loc: list[str | int], msg: str) -> list[dict[str, Any]]:
    return [{"loc": loc, "field": ".".join(str(p) for p in loc[1:]), "msg": msg, "type": "input"}]


class RequestGuard:
    """The module docstring's checks, as ASGI middleware."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        why = url_problem(scope)
        if why is not None:
            await _answer(send, 422, _problem(["query"], why))
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        limit = body_limit(self.settings, method, path)
        too_big = [{"loc": ["body"], "field": "", "msg": f"the body is larger than {limit} bytes, this route's "
                    "limit; send less (split a probe run), or raise PLANNER_MAX_BODY_BYTES / "
                    "PLANNER_MAX_PROBE_RUN_BYTES", "type": "too_large"}]  # fmt: skip
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _answer(send, 413, too_big, {"connection": "close"})
            return
        if method not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        if path.startswith("/v1/") and not token_shape_ok(self.settings, headers.get("authorization")):
            await _answer(
                send,
                401,
                "no usable credentials: send `Authorization: Bearer <token>` (the admin, enrollment or submitter "
                "token, or the host's agent token)",
                {"www-authenticate": "Bearer", "connection": "close"},
            )
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, too_big, {"connection": "close"})
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        found = body_problem(body)
        if found is not None:
            await _answer(send, 422, _problem(["body", *found[0]], found[1]))
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
