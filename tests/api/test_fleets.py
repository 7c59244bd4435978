"""/v1/fleets and their workloads: families with prices, availability from hosts, validation by field."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN, FakeClock, gpu, register

FLEET: dict[str, Any] = {
    "name": "prod-eu",
    "families": [
        {"family": "h100-sxm-80gb", "price_per_hour": 4.18, "available": 16},
        {"family": "l4-24gb"},
    ],
}
WORKLOAD: dict[str, Any] = {
    "name": "sdxl-prod",
    "model": "sdxl",
    "height": 1024,
    "width": 1024,
    "steps": 30,
    "rate": 5.0,
    "p95_latency_s": 20,
    "recipes": {"denoiser": ["bf16", "fp8-compile"]},
}


def make_fleet(client: TestClient, **changes: Any) -> dict[str, Any]:
    resp = client.post("/v1/fleets", json={**FLEET, **changes}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_create_get_by_id_and_name_list(client: TestClient) -> None:
    fleet = make_fleet(client)
    fams = {f["family"]: f for f in fleet["families"]}
    assert fams["h100-sxm-80gb"]["price_per_hour"] == 4.18
    assert fams["h100-sxm-80gb"]["available_effective"] == 16
    catalog_l4 = client.get("/v1/gpu-families/l4-24gb", headers=ADMIN).json()["price_per_hour"]
    assert fams["l4-24gb"]["price_per_hour"] == catalog_l4  # no price given: the family's
    assert fams["l4-24gb"]["available_effective"] is None
    assert client.get(f"/v1/fleets/{fleet['id']}", headers=ADMIN).json()["name"] == "prod-eu"
    assert client.get("/v1/fleets/prod-eu", headers=ADMIN).json()["id"] == fleet["id"]
    assert [f["name"] for f in client.get("/v1/fleets", headers=ADMIN).json()] == ["prod-eu"]
    resp = client.get("/v1/fleets/nope", headers=ADMIN)
    assert resp.status_code == 404
    assert "nope" in resp.json()["detail"]
    assert client.post("/v1/fleets", json=FLEET, headers=ADMIN).status_code == 409


def test_fleet_validation_names_the_field(client: TestClient) -> None:
    bad = {**FLEET, "families": [{"family": "l4-24gb"}, {"family": "nope"}]}
    resp = client.post("/v1/fleets", json=bad, headers=ADMIN)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "families.1.family"
    client.put("/v1/gpu-families/lab-gpu", json={"name": "lab", "memory_gib": 48}, headers=ADMIN)
    resp = client.post("/v1/fleets", json={**FLEET, "families": [{"family": "lab-gpu"}]}, headers=ADMIN)
    assert resp.json()["detail"][0]["field"] == "families.0.price_per_hour"
    resp = client.post("/v1/fleets", json={**FLEET, "name": "1234"}, headers=ADMIN)
    assert resp.json()["detail"][0]["field"] == "name"
    twice = {**FLEET, "families": [{"family": "l4-24gb"}, {"family": "l4-24gb"}]}
    assert client.post("/v1/fleets", json=twice, headers=ADMIN).json()["detail"][0]["field"] == "families"
    neg = {**FLEET, "families": [{"family": "l4-24gb", "available": -1}]}
    assert client.post("/v1/fleets", json=neg, headers=ADMIN).json()["detail"][0]["field"] == "families.0.available"


def test_update_replaces_families_and_delete(client: TestClient) -> None:
    fleet = make_fleet(client)
    resp = client.put(
        f"/v1/fleets/{fleet['id']}",
        json={"name": "prod-eu-2", "families": [{"family": "a100-80gb", "price_per_hour": 1.9}]},
        headers=ADMIN,
    )
    assert resp.status_code == 200
    assert [f["family"] for f in resp.json()["families"]] == ["a100-80gb"]
    assert resp.json()["name"] == "prod-eu-2"
    make_fleet(client, name="other")
    assert client.put("/v1/fleets/prod-eu-2", json={**FLEET, "name": "other"}, headers=ADMIN).status_code == 409
    assert client.delete("/v1/fleets/prod-eu-2", headers=ADMIN).status_code == 204
    assert client.get("/v1/fleets/prod-eu-2", headers=ADMIN).status_code == 404


def test_fleets_are_admin_only(client: TestClient) -> None:
    _, agent, _ = register(client)
    assert client.get("/v1/fleets", headers=agent).status_code == 403
    assert client.post("/v1/fleets", json=FLEET, headers=agent).status_code == 403


def test_availability_from_hosts_counts_active_unflagged_gpus(client: TestClient, clock: FakeClock) -> None:
    fleet = make_fleet(client, availability_from_hosts=True)
    host_a, agent_a, gpus_a = register(client, gpus=[gpu(0), gpu(1), gpu(2)])
    host_b, _agent_b, _ = register(client, gpus=[gpu(0), gpu(1, family="l4-24gb", product_name="NVIDIA L4")])

    def available() -> dict[str, Any]:
        body = client.get(f"/v1/fleets/{fleet['id']}", headers=ADMIN).json()
        return {f["family"]: (f["available_from_hosts"], f["available_effective"]) for f in body["families"]}

    assert available() == {"h100-sxm-80gb": (4, 4), "l4-24gb": (1, 1)}
    run = {
        "id": "0b5e1f7a-6a43-4c8f-9d0e-2f1a3b4c5d6e",
        "host_id": host_a,
        "kind": "calibration",
        "calibrations": [{"gpu_uuid": gpus_a[0]["uuid"], "flagged": True, "flag_reason": "slow"}],
    }
    assert client.post("/v1/probe-runs", json=run, headers=agent_a).status_code == 201
    assert available()["h100-sxm-80gb"] == (3, 3)
    client.post(f"/v1/hosts/{host_b}/drain", headers=ADMIN)
    assert available() == {"h100-sxm-80gb": (2, 2), "l4-24gb": (0, 0)}
    clock.advance(61)  # host a goes stale
    assert available()["h100-sxm-80gb"] == (0, 0)
    client.post(f"/v1/hosts/{host_a}/heartbeat", json={}, headers=agent_a)
    assert available()["h100-sxm-80gb"] == (2, 2)
    # the declared count caps what hosts offer
    client.put(
        f"/v1/fleets/{fleet['id']}",
        json={**FLEET, "availability_from_hosts": True, "families": [{"family": "h100-sxm-80gb", "available": 1}]},
        headers=ADMIN,
    )
    assert available() == {"h100-sxm-80gb": (2, 1)}


def test_workload_crud(client: TestClient) -> None:
    fleet = make_fleet(client)
    base = f"/v1/fleets/{fleet['name']}/workloads"
    resp = client.post(base, json=WORKLOAD, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    assert resp.json()["model"] == "sdxl"
    assert client.post(base, json=WORKLOAD, headers=ADMIN).status_code == 409
    several = {**WORKLOAD, "name": "drafts", "model": ["sdxl-lightning", "flux-schnell"], "steps": None}
    assert client.post(base, json=several, headers=ADMIN).json()["model"] == ["sdxl-lightning", "flux-schnell"]
    assert [w["name"] for w in client.get(base, headers=ADMIN).json()] == ["drafts", "sdxl-prod"]
    assert client.get(f"/v1/fleets/{fleet['id']}", headers=ADMIN).json()["workloads"] == ["drafts", "sdxl-prod"]
    resp = client.put(f"{base}/sdxl-prod", json={**WORKLOAD, "rate": 8.0}, headers=ADMIN)
    assert resp.json()["rate"] == 8.0
    assert client.get(f"{base}/sdxl-prod", headers=ADMIN).json()["rate"] == 8.0
    assert client.put(f"{base}/sdxl-prod", json={**WORKLOAD, "name": "drafts"}, headers=ADMIN).status_code == 409
    assert client.delete(f"{base}/drafts", headers=ADMIN).status_code == 204
    assert client.get(f"{base}/drafts", headers=ADMIN).status_code == 404
    assert client.post("/v1/fleets/nope/workloads", json=WORKLOAD, headers=ADMIN).status_code == 404


def test_workload_validation_names_the_field(client: TestClient) -> None:
    fleet = make_fleet(client)
    base = f"/v1/fleets/{fleet['id']}/workloads"
    cases = [
        ({"model": "nope"}, "model"),
        ({"model": ["sdxl", "nope"]}, "model.1"),
        ({"recipes": {"denoiser": ["bf16", "nope"]}}, "recipes.denoiser.1"),
        ({"recipes": {"upscaler": ["bf16"]}}, "recipes.upscaler.[key]"),
        ({"rate": 0}, "rate"),
        ({"rate": "Infinity"}, "rate"),
        ({"headroom": -0.1}, "headroom"),
        ({"height": 0}, "height"),
        ({"model": ["sdxl", "sdxl"]}, "model"),
    ]
    for change, field in cases:
        resp = client.post(base, json={**WORKLOAD, **change}, headers=ADMIN)
        assert resp.status_code == 422, change
        assert resp.json()["detail"][0]["field"] == field, (change, resp.json())


def test_a_fleet_id_beyond_the_stores_integers_is_404(client: TestClient) -> None:
    for path in ("", "/routing", "/workloads", "/plans"):
        resp = client.get(f"/v1/fleets/99999999999999999999{path}", headers=ADMIN)
        assert resp.status_code == 404, (path, resp.text)
