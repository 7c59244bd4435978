"""The job routes and the client, on the real store and Redis (no worker: states are moved by hand)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from planner.crud import jobs as crud
from planner.db.session import session_scope
from scheduler.client import JobClient, JobClientError
from scheduler.codec import decode_png_size, encode_png
from scheduler.config import SchedulerSettings
from scheduler.results import DirectoryResults
from tests.scheduler.api_app import TOKEN, make_app
from tests.scheduler.conftest import PoolDef, create_plan

ALL = ["text_encoder", "denoiser", "vae_decoder"]


@pytest.fixture
def http(settings: SchedulerSettings, engine: Engine, fleet_name: str) -> Iterator[TestClient]:
    create_plan(engine, fleet_name, [PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL)], sizes={"w1": (512, 768, 20)})
    with TestClient(make_app(settings, engine)) as client:
        yield client


@pytest.fixture
def client(http: TestClient) -> JobClient:
    return JobClient(token=TOKEN, client=http)


def test_submit_read_and_resubmit(client: JobClient, http: TestClient) -> None:
    key = str(uuid.uuid4())
    job = client.submit(workload="w1", prompt="a cat", seed=3, idempotency_key=key)
    assert job.state == "queued"
    assert job.pool == "w1.0.h100-sxm-80gb"
    # size and steps default to the workload's planned image
    assert (job.raw["height"], job.raw["width"], job.raw["steps"]) == (512, 768, 20)
    body = {"workload": "w1", "prompt": "a cat", "seed": 3, "idempotency_key": key}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    again = http.post("/v1/jobs", json=body, headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == job.id
    fresh = http.post("/v1/jobs", json={**body, "idempotency_key": None}, headers={**headers, "Idempotency-Key": "k2"})
    assert fresh.status_code == 201
    assert fresh.json()["idempotency_key"] == "k2"
    conflict = http.post("/v1/jobs", json={**body, "seed": 4}, headers=headers)
    assert conflict.status_code == 409
    assert "seed" in conflict.json()["detail"]
    assert client.get(job.id).state == "queued"


def test_a_resend_that_leaves_fields_out_gets_its_job_back_whatever_the_plan_says_now(
    http: TestClient, engine: Engine, fleet_name: str
) -> None:
    """The server fills a left-out seed, size and steps once; a resend leaving them out again is the same
    request, even after a new plan changed the planned steps or stopped routing the workload."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": str(uuid.uuid4())}
    body = {"workload": "w1", "prompt": "a cat"}
    first = http.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 201
    assert (first.json()["height"], first.json()["steps"]) == (512, 20)
    again = http.post("/v1/jobs", json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["seed"] == first.json()["seed"]
    create_plan(engine, fleet_name, [PoolDef("w2", 0, "h100-sxm-80gb", "sd15", ALL)], sizes={"w2": (512, 512, 8)})
    after = http.post("/v1/jobs", json=body, headers=headers)  # w1 is in no plan now
    assert after.status_code == 200, after.text
    assert after.json()["id"] == first.json()["id"]
    changed = http.post("/v1/jobs", json={**body, "steps": 8}, headers=headers)
    assert changed.status_code == 409
    assert "steps" in changed.json()["detail"]


def test_refusals(client: JobClient, http: TestClient) -> None:
    assert http.post("/v1/jobs", json={"workload": "w1", "prompt": "x"}).status_code == 401
    bad = http.post("/v1/jobs", json={"workload": "w1", "prompt": "x"}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    with pytest.raises(JobClientError) as err:
        client.submit(workload="unknown", prompt="x")
    assert err.value.status_code == 422
    (problem,) = err.value.detail  # type: ignore[misc]
    assert problem["field"] == "workload"
    assert "'unknown' is not in the active plan" in problem["msg"]
    with pytest.raises(JobClientError) as err:
        client.submit(workload="w1", prompt="x", height=100)  # not a multiple of 8
    assert err.value.status_code == 422
    with pytest.raises(JobClientError) as err:
        client.get("no-such-job")
    assert err.value.status_code == 404


def test_result_once_done_and_the_dead_letter(
    client: JobClient, http: TestClient, engine: Engine, settings: SchedulerSettings
) -> None:
    job = client.submit(workload="w1", prompt="a cat", height=64, width=64)
    with pytest.raises(JobClientError) as err:
        client.result(job.id)
    assert err.value.status_code == 409
    assert "queued" in str(err.value.detail)
    import numpy as np

    rel, sha = DirectoryResults(settings.results_dir).write(job.id, encode_png(np.zeros((64, 64, 3), np.uint8)))
    with session_scope(engine) as s:
        assert crud.claim_job(s, job_id=job.id, worker="w", pool="p", max_attempts=5) is crud.Claim.CLAIMED
        assert crud.complete_job(s, job_id=job.id, result_path=rel, result_sha256=sha)
    done = client.wait(job.id, timeout_s=5)
    assert done.result_url == f"/v1/jobs/{job.id}/result"
    assert decode_png_size(client.result(job.id)) == (64, 64)

    other = client.submit(workload="w1", prompt="a dog")
    with session_scope(engine) as s:
        crud.claim_job(s, job_id=other.id, worker="w", pool="p", max_attempts=5)
        crud.fail_job(s, job_id=other.id, error="kept failing", dead=True)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    dead = http.get("/v1/jobs", params={"state": "dead"}, headers=headers).json()
    assert other.id in [j["id"] for j in dead]
    summary = http.get("/v1/jobs/summary", headers=headers).json()
    assert summary["by_state"]["dead"] >= 1
    assert summary["by_state"]["done"] >= 1
    requeued = http.post(f"/v1/jobs/{other.id}/requeue", headers=headers)
    assert requeued.status_code == 200
    assert requeued.json()["state"] == "queued"
    assert requeued.json()["pool"] == "w1.0.h100-sxm-80gb"  # sent again
    assert http.post(f"/v1/jobs/{job.id}/requeue", headers=headers).status_code == 409
