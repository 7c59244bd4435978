"""One HTTP client base (planner.client) for the agent's and the scheduler's clients: each keeps its own retry
policy and exception, both send the token and retry a transient answer."""

from __future__ import annotations

import httpx
import pytest

from agent.client import PlannerClient, PlannerError
from planner.client import ApiError
from scheduler.client import JobClient, JobClientError


def answering(*statuses: int) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering these statuses in turn (the last one from then on), with a JSON detail."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = statuses[min(len(seen), len(statuses)) - 1]
        return httpx.Response(status, json={"detail": f"answer {len(seen)}", "id": "j"})

    return httpx.MockTransport(handle), seen


def job_client(transport: httpx.MockTransport) -> JobClient:
    http = httpx.Client(base_url="http://planner.test", transport=transport)
    client = JobClient(token="t0k", client=http, retries=2)
    client._sleep = lambda _s: None
    return client


def test_both_clients_send_the_token_and_retry_a_transient_answer() -> None:
    transport, seen = answering(503, 200)
    planner = PlannerClient("http://planner.test", token="t0k", transport=transport, sleep=lambda _s: None)
    assert planner.request("GET", "/v1/x").status_code == 200
    assert [r.headers["Authorization"] for r in seen] == ["Bearer t0k"] * 2
    transport, seen = answering(503, 200)
    assert job_client(transport).request("GET", "/v1/x").status_code == 200
    assert len(seen) == 2
    assert seen[0].headers["Authorization"] == "Bearer t0k"


def test_each_keeps_its_policy_and_its_exception() -> None:
    transport, seen = answering(500)
    with pytest.raises(JobClientError) as job_err:
        job_client(transport).request("POST", "/v1/jobs")
    assert len(seen) == 1  # a 500 is not retried by the job client (only a proxy's 502/503/504)
    assert job_err.value.status_code == 500
    assert job_err.value.detail == "answer 1"
    transport, seen = answering(500)
    planner = PlannerClient("http://planner.test", attempts=3, transport=transport, sleep=lambda _s: None)
    with pytest.raises(PlannerError, match="500 after 3 attempts") as planner_err:
        planner.request("POST", "/v1/probe-runs")
    assert len(seen) == 3
    assert isinstance(planner_err.value, ApiError)
    assert planner_err.value.status == 500


def test_an_unreachable_planner_raises_the_clients_error() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(JobClientError, match="unreachable after 3 attempts") as err:
        job_client(httpx.MockTransport(down)).get("j")
    assert err.value.status_code is None
