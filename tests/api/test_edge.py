"""The service's edge (issue 28): bodies bounded before they are read, credentials before parsing, NUL and
half characters refused on every route, enrollment rate-limited and optionally approved, probe-request leases."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from planner.api.main import create_app
from planner.core.config import Settings
from scheduler.dispatch import for_store
from tests.api.conftest import ADMIN, ENROLL, FakeClock, Store, gpu, register

SUBMITTER_TOKEN = "test-submitter-token-0123456789"


def test_a_20_mb_body_without_a_token_is_413_before_it_is_read(client: TestClient) -> None:
    big = b"x" * (20 << 20)
    for path in ("/v1/probe-runs", "/v1/hosts", "/v1/jobs"):
        resp = client.post(path, content=big, headers={"Content-Type": "application/json"})
        assert resp.status_code == 413, (path, resp.text)
        assert "limit" in resp.json()["detail"][0]["msg"]


def test_a_body_without_usable_credentials_is_401_before_it_is_parsed(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}):
        resp = client.post("/v1/hosts", content=b"{not json", headers={**headers, "Content-Type": "application/json"})
        assert resp.status_code == 401, resp.text
        assert resp.headers["www-authenticate"] == "Bearer"
    # With credentials of the right shape the route parses it (and says the body is not JSON).
    json_admin = {**ADMIN, "Content-Type": "application/json"}
    assert client.post("/v1/hosts", content=b"{not json", headers=json_admin).status_code == 400


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/abc%00def",
        "/v1/jobs?workload=%00",
        "/v1/jobs/summary?workload=a%00",
        "/v1/fleets/x%00y",
        "/v1/measurements?model=sd%00xl",
        "/v1/gpu-families/%ED%A0%80",
    ],
)
def test_nul_and_half_characters_in_the_url_are_422(client: TestClient, path: str) -> None:
    resp = client.get(path, headers=ADMIN)
    assert resp.status_code == 422, resp.text
    assert "NUL" in resp.text or "UTF-8" in resp.text


def test_nul_and_lone_surrogates_in_a_json_body_are_422_naming_the_field(client: TestClient) -> None:
    for bad in ("a\\u0000b", "\\ud800"):
        body = '{"name": "node-1", "gpus": [], "labels": {"zone": "' + bad + '"}}'
        resp = client.post("/v1/hosts", content=body.encode(), headers={**ADMIN, "Content-Type": "application/json"})
        assert resp.status_code == 422, resp.text
        assert resp.json()["detail"][0]["field"] == "labels.zone"
    # An escaped backslash before `u0000` is text, not a NUL: it passes the edge (and the schema judges it).
    ok = '{"name": "node-2", "gpus": [], "labels": {"zone": "a\\\\u0000"}}'
    resp = client.post("/v1/hosts", content=ok.encode(), headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status_code != 422 or resp.json()["detail"][0]["type"] != "input", resp.text


def test_200_hosts_enrolling_in_a_burst_are_rate_limited(client: TestClient, clock: FakeClock) -> None:
    codes = []
    for i in range(200):
        resp = client.post("/v1/hosts", json={"name": f"burst-{i}", "gpus": []}, headers=ENROLL)
        codes.append(resp.status_code)
    assert codes.count(201) == 30
    assert codes.count(429) == 170
    limited = client.post("/v1/hosts", json={"name": "late", "gpus": []}, headers=ENROLL)
    assert int(limited.headers["retry-after"]) > 0
    assert "PLANNER_ENROLLMENT_PER_MINUTE" in limited.json()["detail"]
    assert client.post("/v1/hosts", json={"name": "by-admin", "gpus": []}, headers=ADMIN).status_code == 201
    clock.advance(61)
    assert client.post("/v1/hosts", json={"name": "later", "gpus": []}, headers=ENROLL).status_code == 201


@pytest.fixture
def approving_app(settings: Settings, store: Store, clock: FakeClock) -> FastAPI:
    strict = settings.model_copy(update={"host_approval": True, "submitter_token": SecretStr(SUBMITTER_TOKEN)})
    return create_app(strict, sessions=store.sessions, clock=clock, dispatchers=for_store)


def test_an_enrolled_host_counts_only_once_approved(approving_app: FastAPI) -> None:
    with TestClient(approving_app) as client:
        fleet = client.post(
            "/v1/fleets",
            json={"name": "f", "availability_from_hosts": True, "families": [{"family": "h100-sxm-80gb"}]},
            headers=ADMIN,
        ).json()

        def available() -> object:
            body = client.get(f"/v1/fleets/{fleet['id']}", headers=ADMIN).json()
            return body["families"][0]["available_from_hosts"]

        host_id, agent, _ = register(client, gpus=[gpu(0), gpu(1)], headers=ENROLL)
        client.post(f"/v1/hosts/{host_id}/heartbeat", json={}, headers=agent)
        assert client.get(f"/v1/hosts/{host_id}", headers=ADMIN).json()["approved"] is False
        assert available() == 0
        assert client.post(f"/v1/hosts/{host_id}/approve", headers=agent).status_code == 403
        assert client.post(f"/v1/hosts/{host_id}/approve", headers=ADMIN).json()["approved"] is True
        assert available() == 2


def test_the_submitter_token_submits_and_reads_jobs_only(approving_app: FastAPI) -> None:
    submitter = {"Authorization": f"Bearer {SUBMITTER_TOKEN}"}
    with TestClient(approving_app) as client:
        assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=submitter).status_code == 404
        assert client.get("/v1/jobs", headers=submitter).status_code == 403
        assert client.get("/v1/hosts", headers=submitter).status_code == 403
        resp = client.post("/v1/jobs", json={"workload": "none", "prompt": "a"}, headers=submitter)
        assert resp.status_code not in (401, 403), resp.text


def test_a_claimed_request_returns_to_the_queue_after_its_lease(client: TestClient, clock: FakeClock) -> None:
    host_id, agent, _ = register(client)
    req = client.post(
        f"/v1/hosts/{host_id}/requests", json={"kind": "probe", "spec": {"model": "sdxl"}}, headers=ADMIN
    ).json()
    claim = f"/v1/hosts/{host_id}/requests/{req['id']}/claim"
    assert client.post(claim, headers=agent).status_code == 200
    assert client.post(claim, headers=agent).status_code == 409  # still leased
    clock.advance(6 * 3600 + 1)
    listed = client.get(f"/v1/hosts/{host_id}/requests?state=queued", headers=agent).json()
    assert [r["id"] for r in listed] == [req["id"]]
    assert "lease expired" in listed[0]["error"]
    assert client.post(claim, headers=agent).status_code == 200
    # `done` must name a stored run (issue 26's rule); a re-claimed request ends like any other
    ended = client.post(
        f"/v1/hosts/{host_id}/requests/{req['id']}/complete",
        json={"state": "failed", "error": "the sweep ran out of memory"},
        headers=agent,
    )
    assert ended.status_code == 200, ended.text
    assert json.loads(ended.text)["state"] == "failed"
