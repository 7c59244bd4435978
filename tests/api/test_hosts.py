"""/v1/hosts: registration and tokens, heartbeats, liveness on read, drain, requests for agents."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN, ENROLL, FakeClock, gpu, register


def test_register_returns_a_token_once_and_stores_its_hash(client: TestClient) -> None:
    host_id, agent, gpus = register(client, name="node-a")
    resp = client.get(f"/v1/hosts/{host_id}", headers=agent)
    assert resp.status_code == 200
    body = resp.json()
    assert body["name"] == "node-a"
    assert body["status"] == "active"
    assert sorted(g["uuid"] for g in body["gpus"]) == sorted(g["uuid"] for g in gpus)
    assert "token" not in body
    assert "token_hash" not in body


def test_register_with_enrollment_token_and_duplicate_name_is_409(client: TestClient) -> None:
    register(client, name="node-b", headers=ENROLL)
    resp = client.post("/v1/hosts", json={"name": "node-b", "gpus": []}, headers=ENROLL)
    assert resp.status_code == 409
    assert "rotate=true" in resp.json()["detail"]


def test_rotate_replaces_the_token_and_gpus_admin_only(client: TestClient) -> None:
    host_id, agent, _ = register(client, name="node-c")
    resp = client.post("/v1/hosts?rotate=true", json={"name": "node-c", "gpus": [gpu(0)]}, headers=ENROLL)
    assert resp.status_code == 403
    resp = client.post("/v1/hosts?rotate=true", json={"name": "node-c", "gpus": [gpu(0)]}, headers=ADMIN)
    assert resp.status_code == 200
    assert resp.json()["host_id"] == host_id
    new_agent = {"Authorization": f"Bearer {resp.json()['token']}"}
    assert client.get(f"/v1/hosts/{host_id}", headers=agent).status_code == 401  # the old token stopped working
    body = client.get(f"/v1/hosts/{host_id}", headers=new_agent).json()
    assert len(body["gpus"]) == 1


def test_register_refuses_unknown_family_naming_the_field(client: TestClient) -> None:
    resp = client.post(
        "/v1/hosts", json={"name": "node-d", "gpus": [gpu(0), gpu(1, family="no-such-gpu")]}, headers=ADMIN
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "gpus.1.gpu_family"


def test_register_matches_the_family_from_the_product_name(client: TestClient) -> None:
    host_id, agent, _ = register(client, gpus=[gpu(0, family=None, product_name="NVIDIA L4")])
    assert client.get(f"/v1/hosts/{host_id}", headers=agent).json()["gpus"][0]["gpu_family"] == "l4-24gb"


def test_register_refuses_bad_input(client: TestClient) -> None:
    dup = gpu(0)
    resp = client.post("/v1/hosts", json={"name": "n", "gpus": [dup, {**dup, "index": 1}]}, headers=ADMIN)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "gpus"
    resp = client.post("/v1/hosts", json={"name": "n", "gpus": [gpu(0, memory_gib=-1)]}, headers=ADMIN)
    assert resp.json()["detail"][0]["field"] == "gpus.0.memory_gib"
    assert client.post("/v1/hosts", json={"name": "bad name!", "gpus": []}, headers=ADMIN).status_code == 422


def test_register_refuses_a_gpu_of_another_host(client: TestClient) -> None:
    _, _, gpus = register(client)
    resp = client.post("/v1/hosts", json={"name": "thief", "gpus": [gpus[0]]}, headers=ADMIN)
    assert resp.status_code == 409


def test_register_needs_credentials(client: TestClient) -> None:
    resp = client.post("/v1/hosts", json={"name": "x", "gpus": []})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    resp = client.post("/v1/hosts", json={"name": "x", "gpus": []}, headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401
    _, agent, _ = register(client)
    assert client.post("/v1/hosts", json={"name": "x", "gpus": []}, headers=agent).status_code == 403


def test_heartbeat_records_telemetry_and_answers_pending_requests(client: TestClient) -> None:
    host_id, agent, gpus = register(client)
    telemetry = {"uuid": gpus[0]["uuid"], "utilization_pct": 87.5, "power_w": 612.0, "temperature_c": 61}
    resp = client.post(f"/v1/hosts/{host_id}/heartbeat", json={"gpus": [telemetry]}, headers=agent)
    assert resp.status_code == 200
    assert resp.json() == {"status": "active", "pending_requests": 0}
    client.post(f"/v1/hosts/{host_id}/requests", json={"kind": "calibrate"}, headers=ADMIN)
    assert client.post(f"/v1/hosts/{host_id}/heartbeat", json={}, headers=agent).json()["pending_requests"] == 1
    body = client.get(f"/v1/hosts/{host_id}", headers=ADMIN).json()
    by_uuid = {g["uuid"]: g for g in body["gpus"]}
    assert by_uuid[gpus[0]["uuid"]]["telemetry"]["utilization_pct"] == 87.5
    assert body["last_heartbeat_at"] is not None


def test_heartbeat_refuses_bad_telemetry_and_unknown_gpus(client: TestClient) -> None:
    host_id, agent, gpus = register(client)
    for bad in ({"utilization_pct": 101}, {"power_w": -1}, {"temperature_c": "NaN"}):
        resp = client.post(
            f"/v1/hosts/{host_id}/heartbeat", json={"gpus": [{"uuid": gpus[0]["uuid"], **bad}]}, headers=agent
        )
        assert resp.status_code == 422, bad
        assert resp.json()["detail"][0]["field"] == f"gpus.0.{next(iter(bad))}"
    resp = client.post(f"/v1/hosts/{host_id}/heartbeat", json={"gpus": [{"uuid": "GPU-other"}]}, headers=agent)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "gpus.0.uuid"


def test_heartbeat_nan_literal_is_refused_not_a_crash(client: TestClient) -> None:
    host_id, agent, gpus = register(client)
    raw = '{{"gpus": [{{"uuid": "{}", "power_w": NaN}}]}}'.format(gpus[0]["uuid"])
    resp = client.post(
        f"/v1/hosts/{host_id}/heartbeat", content=raw, headers={**agent, "Content-Type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "gpus.0.power_w"


def test_an_agent_cannot_write_another_hosts_data(client: TestClient) -> None:
    host_a, agent_a, _ = register(client)
    host_b, _, _ = register(client)
    assert client.post(f"/v1/hosts/{host_b}/heartbeat", json={}, headers=agent_a).status_code == 403
    assert client.get(f"/v1/hosts/{host_b}", headers=agent_a).status_code == 403
    assert client.get(f"/v1/hosts/{host_b}/requests", headers=agent_a).status_code == 403
    assert client.post(f"/v1/hosts/{host_a}/heartbeat", json={}, headers=agent_a).status_code == 200
    # admin routes refuse agent and enrollment tokens
    assert client.get("/v1/hosts", headers=agent_a).status_code == 403
    assert client.post(f"/v1/hosts/{host_a}/drain", headers=agent_a).status_code == 403
    assert client.post(f"/v1/hosts/{host_a}/heartbeat", json={}, headers=ENROLL).status_code == 403


def test_status_is_computed_on_read_stale_then_lost(client: TestClient, clock: FakeClock) -> None:
    host_id, agent, _ = register(client)
    client.post(f"/v1/hosts/{host_id}/heartbeat", json={}, headers=agent)
    clock.advance(59)
    assert client.get(f"/v1/hosts/{host_id}", headers=ADMIN).json()["status"] == "active"
    clock.advance(1)
    assert client.get(f"/v1/hosts/{host_id}", headers=ADMIN).json()["status"] == "stale"
    assert [h["id"] for h in client.get("/v1/hosts?status=stale", headers=ADMIN).json()["items"]] == [host_id]
    clock.advance(240)
    assert client.get(f"/v1/hosts/{host_id}", headers=ADMIN).json()["status"] == "lost"
    assert client.get("/v1/hosts?status=active", headers=ADMIN).json()["total"] == 0
    # a heartbeat brings it back
    assert client.post(f"/v1/hosts/{host_id}/heartbeat", json={}, headers=agent).json()["status"] == "active"


def test_list_hosts_pages_and_filters_by_label(client: TestClient) -> None:
    for i in range(3):
        resp = client.post(
            "/v1/hosts", json={"name": f"n{i}", "labels": {"zone": "a" if i else "b"}, "gpus": []}, headers=ADMIN
        )
        assert resp.status_code == 201
    page = client.get("/v1/hosts?limit=2&offset=1", headers=ADMIN).json()
    assert page["total"] == 3
    assert [h["name"] for h in page["items"]] == ["n1", "n2"]
    page = client.get("/v1/hosts?label=zone=a", headers=ADMIN).json()
    assert page["total"] == 2
    assert client.get("/v1/hosts?limit=0", headers=ADMIN).status_code == 422
    assert client.get("/v1/hosts?status=sleeping", headers=ADMIN).status_code == 422


def test_drain_and_undrain(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    assert client.post(f"/v1/hosts/{host_id}/drain", headers=ADMIN).json()["status"] == "draining"
    assert client.post(f"/v1/hosts/{host_id}/heartbeat", json={}, headers=agent).json()["status"] == "draining"
    assert client.delete(f"/v1/hosts/{host_id}/drain", headers=ADMIN).json()["status"] == "active"
    missing = uuid.uuid4()
    resp = client.post(f"/v1/hosts/{missing}/drain", headers=ADMIN)
    assert resp.status_code == 404
    assert str(missing) in resp.json()["detail"]
    assert client.post("/v1/hosts/not-a-uuid/drain", headers=ADMIN).status_code == 422


def test_delete_host(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    assert client.delete(f"/v1/hosts/{host_id}", headers=ADMIN).status_code == 204
    assert client.get(f"/v1/hosts/{host_id}", headers=ADMIN).status_code == 404
    assert client.post(f"/v1/hosts/{host_id}/heartbeat", json={}, headers=agent).status_code == 401
    assert client.delete(f"/v1/hosts/{host_id}", headers=ADMIN).status_code == 404


def test_request_lifecycle_queue_claim_complete(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    resp = client.post(
        f"/v1/hosts/{host_id}/requests",
        json={"kind": "probe", "spec": {"model": "sdxl", "batches": [1, 4]}},
        headers=ADMIN,
    )
    assert resp.status_code == 201
    req = resp.json()
    assert req["state"] == "queued"
    assert [r["id"] for r in client.get(f"/v1/hosts/{host_id}/requests?state=queued", headers=agent).json()] == [
        req["id"]
    ]
    base = f"/v1/hosts/{host_id}/requests/{req['id']}"
    assert client.post(f"{base}/complete", json={"state": "done"}, headers=agent).status_code == 409
    assert client.post(f"{base}/claim", headers=agent).json()["state"] == "claimed"
    assert client.post(f"{base}/claim", headers=agent).status_code == 409
    run_id = str(uuid.uuid4())
    # `done` must name a run the planner stored for this host: never a result_run_id that answers 404.
    missing = client.post(f"{base}/complete", json={"state": "done", "result_run_id": run_id}, headers=agent)
    assert missing.status_code == 422, missing.text
    assert "state failed" in missing.text
    assert client.post(f"{base}/complete", json={"state": "done"}, headers=agent).status_code == 422
    stored = client.post(
        "/v1/probe-runs", json={"id": run_id, "host_id": host_id, "kind": "calibration"}, headers=agent
    )
    assert stored.status_code == 201, stored.text
    done = client.post(f"{base}/complete", json={"state": "done", "result_run_id": run_id}, headers=agent).json()
    assert done["state"] == "done"
    assert done["result_run_id"] == run_id
    assert client.get(f"/v1/hosts/{host_id}/requests?state=queued", headers=agent).json() == []


def test_requests_are_scoped_to_their_host(client: TestClient) -> None:
    host_a, agent_a, _ = register(client)
    host_b, agent_b, _ = register(client)
    req = client.post(f"/v1/hosts/{host_a}/requests", json={"kind": "calibrate"}, headers=ADMIN).json()
    assert client.post(f"/v1/hosts/{host_b}/requests/{req['id']}/claim", headers=agent_b).status_code == 404
    assert client.post(f"/v1/hosts/{host_a}/requests/{req['id']}/claim", headers=agent_b).status_code == 403
    assert client.post(f"/v1/hosts/{host_a}/requests", json={"kind": "calibrate"}, headers=agent_a).status_code == 403
    resp = client.post(f"/v1/hosts/{host_a}/requests", json={"kind": "dance"}, headers=ADMIN)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "kind"
    resp = client.post(f"/v1/hosts/{uuid.uuid4()}/requests", json={"kind": "calibrate"}, headers=ADMIN)
    assert resp.status_code == 404


def test_a_forged_token_for_the_right_host_writes_nothing(client: TestClient) -> None:
    host_id, _, gpus = register(client)
    forged = {"Authorization": f"Bearer {host_id}.not-the-secret"}
    body = {"gpus": [{"uuid": gpus[0]["uuid"], "power_w": 1.0}]}
    resp = client.post(f"/v1/hosts/{host_id}/heartbeat", json=body, headers=forged)
    assert resp.status_code == 401
    assert client.get(f"/v1/hosts/{host_id}", headers=ADMIN).json()["last_heartbeat_at"] is None
    other = {"Authorization": f"Bearer {uuid.uuid4()}.x"}
    assert client.post(f"/v1/hosts/{host_id}/heartbeat", json=body, headers=other).status_code == 401
    assert client.post(f"/v1/hosts/{host_id}/heartbeat", json=body, headers=ADMIN).status_code == 200


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"kind": "probe", "spec": {"models": ["sdxl"]}}, "spec.model"),
        ({"kind": "probe", "spec": {"model": "sdxl", "batches": [0]}}, "spec.batches"),
        ({"kind": "probe", "spec": {"model": "sdxl", "stages": ["upscaler"]}}, "spec.stages"),
        ({"kind": "calibrate", "spec": {"model": "sdxl"}}, "spec"),
    ],
)
def test_a_malformed_probe_request_is_refused_before_it_reaches_the_agent(
    client: TestClient, body: dict[str, object], where: str
) -> None:
    host_id, _, _ = register(client)
    resp = client.post(f"/v1/hosts/{host_id}/requests", json=body, headers=ADMIN)
    assert resp.status_code == 422
    assert where in resp.text


def test_a_probe_request_may_say_whether_random_weights_may_stand_in(client: TestClient) -> None:
    """The agent's daemon reads `synthetic` from the spec (agent/daemon.py run_probe): the API takes a boolean there,
    keeps it, and refuses anything else naming the field."""
    host_id, _, _ = register(client)
    made = client.post(
        f"/v1/hosts/{host_id}/requests",
        json={"kind": "probe", "spec": {"model": "sdxl", "synthetic": False}},
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    assert made.json()["spec"]["synthetic"] is False
    bad = client.post(
        f"/v1/hosts/{host_id}/requests",
        json={"kind": "probe", "spec": {"model": "sdxl", "synthetic": "sometimes"}},
        headers=ADMIN,
    )
    assert bad.status_code == 422, bad.text
    assert "spec.synthetic" in bad.text
