"""Measurements are evidence (issue 28): ownership, catalog, roofline, consensus, operator review; on both stores."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN, gpu, measurement, probe_run, register
from tests.api.test_fleets import WORKLOAD, make_fleet
from tests.api.test_plans import SDXL_CELLS, measure_sdxl


def l4_gpu(index: int = 0) -> dict[str, Any]:
    return gpu(index, family="l4-24gb", product_name="NVIDIA L4", memory_gib=22.5)


def sdxl_cells(scale: float = 1.0, family: str = "h100-sxm-80gb") -> list[dict[str, Any]]:
    return [
        measurement(
            gpu_family=family,
            stage=st,
            recipe=rec,
            batch=b,
            latency_ms=lat * scale,
            latency_p95_ms=lat * scale * 1.02,
            peak_mem_gib=mem,
        )
        for st, rec, b, lat, mem in SDXL_CELLS
    ]


def solve(client: TestClient, fleet_id: int) -> dict[str, Any]:
    resp = client.post(f"/v1/fleets/{fleet_id}/plans/solve", json={"time_limit_s": 5}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    result: dict[str, Any] = resp.json()["plan"]["result"]
    return {"gpus": result["gpus"], "cost": round(result["total_cost_per_hour"], 6)}


def fleet_with_plan(client: TestClient) -> tuple[int, dict[str, Any]]:
    measure_sdxl(client)
    fleet = make_fleet(client)
    assert client.post(f"/v1/fleets/{fleet['id']}/workloads", json=WORKLOAD, headers=ADMIN).status_code == 201
    return fleet["id"], solve(client, fleet["id"])


def test_a_host_reporting_for_a_family_it_does_not_own_is_403(client: TestClient) -> None:
    host_id, agent, _ = register(client, gpus=[l4_gpu()])
    resp = client.post("/v1/probe-runs", json=probe_run(host_id, sdxl_cells()), headers=agent)
    assert resp.status_code == 403, resp.text
    assert "h100-sxm-80gb" in resp.json()["detail"]
    assert "l4-24gb" in resp.json()["detail"]
    assert client.get("/v1/probe-runs", headers=ADMIN).json()["total"] == 0


def test_a_1000x_faster_resubmission_is_refused_naming_the_roofline_and_the_plan_is_unchanged(
    client: TestClient,
) -> None:
    fleet_id, before = fleet_with_plan(client)
    host_id, agent, _ = register(client, gpus=[gpu(0)])  # a real H100 host, lying
    resp = client.post("/v1/probe-runs", json=probe_run(host_id, sdxl_cells(scale=1e-3)), headers=agent)
    assert resp.status_code == 422, resp.text
    problems = resp.json()["detail"]
    denoiser = next(p for p in problems if p["field"] == "measurements.2.latency_ms")
    assert "faster than h100-sxm-80gb can run this cell" in denoiser["msg"]
    assert "roofline allows no less than" in denoiser["msg"]
    assert solve(client, fleet_id) == before


def test_a_2x_faster_lie_is_quarantined_not_planned_until_accepted(client: TestClient) -> None:
    fleet_id, before = fleet_with_plan(client)
    host_id, agent, _ = register(client, gpus=[gpu(0)])
    resp = client.post("/v1/probe-runs", json=probe_run(host_id, sdxl_cells(scale=0.5)), headers=agent)
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert run["quarantined"] == len(SDXL_CELLS)
    held = client.get("/v1/measurements?quarantined=true", headers=ADMIN).json()
    assert held["total"] == len(SDXL_CELLS)
    assert "2x faster than the median" in held["items"][0]["quarantine_reason"]
    assert client.get("/v1/measurements", headers=ADMIN).json()["total"] == len(SDXL_CELLS)  # the honest ones
    listed = client.get("/v1/probe-runs?quarantined=true", headers=ADMIN).json()
    assert [r["id"] for r in listed["items"]] == [run["id"]]
    assert "planner_measurements_quarantined 8.0" in client.get("/metrics").text
    assert solve(client, fleet_id) == before
    # Accepted, it is one of two sources: the median (the slower middle) keeps the honest latency, and the
    # sources' disagreement widens the cells' uncertainty, so the plan cannot get cheaper than the honest one.
    accepted = client.post(f"/v1/probe-runs/{run['id']}/accept", headers=ADMIN)
    assert accepted.status_code == 200
    assert accepted.json()["quarantined"] == 0
    assert client.get("/v1/measurements", headers=ADMIN).json()["total"] == 2 * len(SDXL_CELLS)
    assert solve(client, fleet_id)["cost"] >= before["cost"]
    # An agent cannot review runs; the operator can quarantine one by hand.
    assert client.post(f"/v1/probe-runs/{run['id']}/accept", headers=agent).status_code == 403
    again = client.post(f"/v1/probe-runs/{run['id']}/quarantine", json={"reason": "host under review"}, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["quarantined"] == len(SDXL_CELLS)


def test_an_operator_deletes_a_run_and_the_plan_changes_back(client: TestClient) -> None:
    fleet_id, before = fleet_with_plan(client)
    host_id, agent, _ = register(client, gpus=[l4_gpu()])
    l4 = [
        measurement(gpu_family="l4-24gb", stage=st, recipe="bf16", batch=b, latency_ms=lat, latency_p95_ms=lat * 1.02,
                    peak_mem_gib=mem)
        for st, b, lat, mem in (("text_encoder", 1, 20.0, 1.6), ("text_encoder", 4, 40.0, 1.7),
                                ("denoiser", 1, 150.0, 5.4), ("denoiser", 4, 560.0, 6.3),
                                ("vae_decoder", 1, 400.0, 2.7), ("vae_decoder", 4, 1500.0, 8.4))
    ]  # fmt: skip
    resp = client.post("/v1/probe-runs", json=probe_run(host_id, l4, gpu_family="l4-24gb"), headers=agent)
    assert resp.status_code == 201, resp.text
    assert resp.json()["quarantined"] == 0  # nobody else measured these cells: nothing to disagree with
    changed = solve(client, fleet_id)
    assert changed != before
    assert client.delete(f"/v1/probe-runs/{resp.json()['id']}", headers=ADMIN).status_code == 204
    assert client.get(f"/v1/probe-runs/{resp.json()['id']}", headers=ADMIN).status_code == 404
    assert solve(client, fleet_id) == before
    assert client.delete(f"/v1/probe-runs/{resp.json()['id']}", headers=ADMIN).status_code == 404


def test_a_host_without_gpus_reports_only_for_families_outside_the_catalog(client: TestClient) -> None:
    host_id, agent, _ = register(client, gpus=[])
    assert client.post("/v1/probe-runs", json=probe_run(host_id, sdxl_cells()), headers=agent).status_code == 403
    assert client.put("/v1/gpu-families/cpu", json={"name": "CPU", "memory_gib": 16}, headers=ADMIN).status_code in (
        200,
        201,
    )
    cpu = [measurement(gpu_family="cpu", latency_ms=9000.0, latency_p95_ms=9100.0)]
    resp = client.post("/v1/probe-runs", json=probe_run(host_id, cpu, gpu_family="cpu"), headers=agent)
    assert resp.status_code == 201, resp.text
