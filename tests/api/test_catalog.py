"""/v1/gpu-families (read, define, price overrides), /v1/models, /v1/recipes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN, ENROLL, register

LAB = {"name": "Lab GPU 48G", "memory_gib": 48, "tflops": {"bf16": 180}, "nvml_patterns": ["Lab GPU 48"]}
PRICE = {"price_per_hour": 2.85, "provider": "acme", "offering": "reserved-1y", "as_of": "2026-03-01"}


def test_families_list_and_get_for_admin_and_agents(client: TestClient) -> None:
    _, agent, _ = register(client)
    families = client.get("/v1/gpu-families", headers=agent).json()
    ids = [f["id"] for f in families]
    assert {"h100-sxm-80gb", "a100-80gb", "l4-24gb"} <= set(ids)
    h100 = client.get("/v1/gpu-families/h100-sxm-80gb", headers=ADMIN).json()
    assert h100["in_catalog"] is True
    assert h100["memory_gib"] > 70
    # The default is the first price of the default offering kind (on-demand), not the catalog's first (serverless).
    on_demand = [p for p in h100["prices"] if p["offering"].startswith("pod on-demand")]
    assert h100["price_per_hour"] == on_demand[0]["price_per_hour"] == 4.76
    resp = client.get("/v1/gpu-families/no-such-gpu", headers=ADMIN)
    assert resp.status_code == 404
    assert "no-such-gpu" in resp.json()["detail"]
    assert client.get("/v1/gpu-families/Bad%20Id", headers=ADMIN).status_code == 422
    assert client.get("/v1/gpu-families", headers=ENROLL).status_code == 403
    assert client.get("/v1/gpu-families").status_code == 401


def test_define_update_a_family_and_catalog_families_are_data(client: TestClient) -> None:
    resp = client.put("/v1/gpu-families/lab-gpu-48g", json=LAB, headers=ADMIN)
    assert resp.status_code == 201
    assert resp.json()["in_catalog"] is False
    resp = client.put("/v1/gpu-families/lab-gpu-48g", json={**LAB, "memory_gib": 47.5}, headers=ADMIN)
    assert resp.status_code == 200
    assert resp.json()["memory_gib"] == 47.5
    assert client.put("/v1/gpu-families/h100-sxm-80gb", json=LAB, headers=ADMIN).status_code == 409
    _, agent, _ = register(client)
    assert client.put("/v1/gpu-families/lab-gpu-48g", json=LAB, headers=agent).status_code == 403
    bad = client.put("/v1/gpu-families/x", json={**LAB, "memory_gib": 0}, headers=ADMIN)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "memory_gib"
    bad = client.put("/v1/gpu-families/x", json={**LAB, "nvml_patterns": ["("]}, headers=ADMIN)
    assert bad.json()["detail"][0]["field"] == "nvml_patterns"


def test_a_defined_family_is_matched_at_registration(client: TestClient) -> None:
    client.put("/v1/gpu-families/lab-gpu-48g", json=LAB, headers=ADMIN)
    gpus = [{"uuid": "GPU-lab-1", "index": 0, "product_name": "Lab GPU 48G rev2", "gpu_family": None, "memory_gib": 48}]
    host_id, agent, _ = register(client, gpus=gpus)
    assert client.get(f"/v1/hosts/{host_id}", headers=agent).json()["gpus"][0]["gpu_family"] == "lab-gpu-48g"


def test_price_override_comes_first_and_can_be_removed(client: TestClient) -> None:
    catalog_price = client.get("/v1/gpu-families/l4-24gb", headers=ADMIN).json()["price_per_hour"]
    resp = client.post("/v1/gpu-families/l4-24gb/prices", json=PRICE, headers=ADMIN)
    assert resp.status_code == 201
    fam = resp.json()
    assert fam["price_per_hour"] == 2.85
    assert fam["prices"][0]["is_override"] is True
    assert client.post("/v1/gpu-families/l4-24gb/prices", json=PRICE, headers=ADMIN).status_code == 409
    override_id = fam["prices"][0]["id"]
    catalog_id = next(p["id"] for p in fam["prices"] if not p["is_override"])
    assert client.delete(f"/v1/gpu-families/l4-24gb/prices/{catalog_id}", headers=ADMIN).status_code == 409
    resp = client.delete(f"/v1/gpu-families/l4-24gb/prices/{override_id}", headers=ADMIN)
    assert resp.status_code == 200
    assert resp.json()["price_per_hour"] == catalog_price
    assert client.delete(f"/v1/gpu-families/l4-24gb/prices/{override_id}", headers=ADMIN).status_code == 404
    assert client.post("/v1/gpu-families/nope/prices", json=PRICE, headers=ADMIN).status_code == 404
    bad = client.post("/v1/gpu-families/l4-24gb/prices", json={**PRICE, "price_per_hour": -1}, headers=ADMIN)
    assert bad.json()["detail"][0]["field"] == "price_per_hour"


def test_models_and_recipes(client: TestClient) -> None:
    _, agent, _ = register(client)
    models = {x["id"]: x for x in client.get("/v1/models", headers=agent).json()}
    assert {"sd15", "sdxl", "flux-dev", "flux-schnell", "qwen-image", "z-image-turbo"} <= set(models)
    assert [s["stage"] for s in models["sdxl"]["stages"]] == ["text_encoder", "denoiser", "vae_decoder"]
    assert client.get("/v1/models/sdxl", headers=ADMIN).json()["cfg"] is True
    assert client.get("/v1/models/nope", headers=ADMIN).status_code == 404
    recipes = client.get("/v1/recipes?stage=denoiser", headers=agent).json()
    assert all("denoiser" in r["stages"] for r in recipes)
    assert "bf16" in [r["id"] for r in recipes]
    assert client.get("/v1/recipes/fp8-compile", headers=ADMIN).status_code == 200
    assert client.get("/v1/recipes/nope", headers=ADMIN).status_code == 404
    assert client.get("/v1/models", headers=ENROLL).status_code == 403
