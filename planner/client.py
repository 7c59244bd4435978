"""The base of every client of the planner's HTTP API (the agent's `PlannerClient`, the scheduler's `JobClient`).

One httpx client with the base URL and a bearer token, and retries (tenacity, exponential backoff) of what a
retry can fix: transport errors and the statuses in `retry_status`. Other errors are the caller's and raised at
once. A subclass chooses its retry policy (`retry_status`, `wait_s`) and its exception (`error`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, Self

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses a later attempt may not meet: timeouts, rate limits, a server or a proxy that is down for now."""


class ApiError(Exception):
    """The API answered an error (`status`, the service's `detail`), or could not be reached (`status` None)."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class _Retry(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Retry | httpx.TransportError)


def detail_of(response: httpx.Response) -> Any:
    """The service's error detail (FastAPI's `detail`), else the body's text."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    return body.get("detail", response.text) if isinstance(body, dict) else response.text


class ApiClient:
    """Calls the API with a token; `transport` or `client` lets tests plug in an httpx mock or test client."""

    retry_status: ClassVar[frozenset[int]] = TRANSIENT_STATUS
    """Answers retried (with backoff) before they count as the answer."""
    error: ClassVar[type[ApiError]] = ApiError
    """What a failed call raises (a subclass names its own)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 4,
        wait_s: float = 0.5,
        max_wait_s: float = 8.0,
        transport: httpx.BaseTransport | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.token = token
        self.attempts = attempts
        self.wait_s = wait_s
        self.max_wait_s = max_wait_s
        self._sleep = sleep or time.sleep
        self.http = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """One call, retried while the failure is transient; an error answer raises `refused`'s exception."""
        bearer = token or self.token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.wait_s, max=self.max_wait_s),
            retry=retry_if_exception(_retryable),
            reraise=True,
            sleep=self._sleep,
        )
        try:
            for attempt in retrying:
                with attempt:
                    response = self.http.request(method, path, headers=headers, **kwargs)
                    if response.status_code in self.retry_status:
                        raise _Retry(response)
        except _Retry as exc:
            raise self._refused(method, path, exc.response, retried=True) from exc
        except httpx.TransportError as exc:
            message = f"{method} {path}: planner unreachable after {self.attempts} attempts ({exc})"
            raise self.error(message) from exc
        if response.status_code >= 400:
            raise self._refused(method, path, response, retried=False)
        return response

    def _refused(self, method: str, path: str, response: httpx.Response, *, retried: bool) -> ApiError:
        """The error for an error answer (`retried`: a transient status that outlasted the attempts)."""
        status = response.status_code
        if retried:
            message = f"{method} {path}: the planner kept answering {status} after {self.attempts} attempts"
        else:
            message = f"{method} {path}: {status} {response.text[:500]}"
        return self.error(message, status=status, detail=detail_of(response))
