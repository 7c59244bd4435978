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

from planner.client import ApiClient, ApiError

TERMINAL = ("done", "failed", "dead")


class JobClientError(ApiError):
    """The service refused a request (`status_code`, and the service's `detail`), or could not be reached."""

    @property
    def status_code(self) -> int | None:
        return self.status


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


class JobClient(ApiClient):
    """The job API's client. Only a proxy's or a restarting service's 502/503/504 are retried: a submission
    carries its idempotency key, so a retried one is the same job."""

    retry_status = frozenset({502, 503, 504})
    error = JobClientError

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url, token=token, timeout_s=timeout_s, attempts=retries + 1, wait_s=0.2, max_wait_s=5, client=client
        )

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
        return JobStatus.from_json(self.request("POST", "/v1/jobs", json=body).json())

    def get(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(self.request("GET", f"/v1/jobs/{job_id}").json())

    def result(self, job_id: str) -> bytes:
        """The job's image (PNG bytes); a job not done yet is a JobClientError 409."""
        return self.request("GET", f"/v1/jobs/{job_id}/result").content

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
