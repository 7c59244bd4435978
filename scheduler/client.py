"""A small client of the planner's job API (httpx): submit, read the state, wait, fetch the image.

Submissions carry an idempotency key (a fresh one per call unless given), so the client retries a submission
that timed out or met a 502/503/504 without risking a second job: the service returns the same job for the key.
The seed is chosen here when not given, so a retried request is the same request.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

TERMINAL = ("done", "failed", "dead")


class JobClientError(Exception):
    """The service refused a request; the message is the service's."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"HTTP {status_code}: {detail}")


class JobFailedError(Exception):
    """The job ended without a result."""


class JobTimeoutError(TimeoutError):
    """The job did not end in time."""


@dataclass(frozen=True)
class JobStatus:
    id: str
    idempotency_key: str
    workload: str
    state: str
    attempts: int
    pool: str | None
    error: str | None
    result_url: str | None
    raw: dict[str, Any]
    weights: str | None = None
    """Which weights made the image, once done: real, or synthetic (random weights: noise)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        return cls(
            id=data["id"],
            idempotency_key=data["idempotency_key"],
            workload=data["workload"],
            state=data["state"],
            attempts=int(data.get("attempts", 0)),
            pool=data.get("pool"),
            error=data.get("error"),
            result_url=data.get("result_url"),
            raw=data,
            weights=data.get("weights"),
        )

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, JobClientError) and exc.status_code in (502, 503, 504)


class JobClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        client: httpx.Client | None = None,
    ) -> None:
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = client or httpx.Client(base_url=base_url, timeout=timeout_s)
        self.retries = retries

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception(_transient),
            reraise=True,
        ):
            with attempt:
                resp = self.http.request(method, url, headers=self.headers, **kwargs)
                if resp.status_code >= 400:
                    try:
                        detail = resp.json().get("detail", resp.text)
                    except ValueError:
                        detail = resp.text
                    raise JobClientError(resp.status_code, detail)
                return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def submit(
        self,
        *,
        workload: str,
        prompt: str,
        seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        negative_prompt: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobStatus:
        """Submit a generation request; resubmitting with the same key returns the same job."""
        body: dict[str, Any] = {
            "workload": workload,
            "prompt": prompt,
            "seed": seed if seed is not None else random.randrange(2**31),
            "idempotency_key": idempotency_key or str(uuid.uuid4()),
        }
        for key, value in (
            ("height", height),
            ("width", width),
            ("steps", steps),
            ("negative_prompt", negative_prompt),
        ):
            if value is not None:
                body[key] = value
        return JobStatus.from_json(self._call("POST", "/v1/jobs", json=body).json())

    def get(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(self._call("GET", f"/v1/jobs/{job_id}").json())

    def result(self, job_id: str) -> bytes:
        """The job's image (PNG bytes); a job not done yet is a JobClientError 409."""
        return self._call("GET", f"/v1/jobs/{job_id}/result").content

    def wait(self, job_id: str, *, timeout_s: float = 600.0, poll_s: float = 0.5) -> JobStatus:
        """Poll until the job ends; raises JobFailedError if it ended without a result."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get(job_id)
            if status.state == "done":
                return status
            if status.finished:
                raise JobFailedError(f"job {job_id} is {status.state}: {status.error}")
            if time.monotonic() > deadline:
                raise JobTimeoutError(f"job {job_id} still {status.state} after {timeout_s:g} s")
            time.sleep(poll_s)
