"""/v1/plans and the routing table: store contract-3 results, activate (one per fleet), drift, compare, solve."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError

from planner.db import models as m
from scheduler.routing import Backlog, JobShape, decide
from scheduler.table import table_from_json
from tests.api.conftest import ADMIN, Store, measurement, probe_run, register
from tests.api.test_fleets import FLEET, WORKLOAD, make_fleet

STAGES = ["text_encoder", "denoiser", "vae_decoder"]


def result(
    *, family: str = "h100-sxm-80gb", replicas: float = 3, cost: float = 12.54, batch: int = 4, split: bool = False
) -> dict[str, Any]:
    """A contract-3 result for one workload, `sdxl-prod`, on one pool (or two: text encoder apart)."""
    if split:
        groups = [
            {"stages": ["text_encoder"], "family": "l4-24gb", "recipes": {"text_encoder": "bf16"}, "batch": 8,
             "replicas": 1, "throughput": 40.0},
            {"stages": ["denoiser", "vae_decoder"], "family": family,
             "recipes": {"denoiser": "fp8-compile", "vae_decoder": "bf16"}, "batch": batch, "replicas": replicas,
             "throughput": 6.3},
        ]  # fmt: skip
    else:
        groups = [
            {"stages": STAGES, "family": family,
             "recipes": {"text_encoder": "bf16", "denoiser": "fp8-compile", "vae_decoder": "bf16"},
             "batch": batch, "replicas": replicas, "throughput": 6.3, "utilization": 0.8},
        ]  # fmt: skip
    return {
        "total_cost_per_hour": cost,
        "gpus": {family: replicas},
        "workloads": [
            {
                "name": "sdxl-prod",
                "model": "sdxl",
                "topology": "[te][dn+vae]" if split else "[te+dn+vae]",
                "cost_per_hour": cost,
                "cost_per_image": cost / 3600 / 5,
                "groups": groups,
            }
        ],
        "solver": {"status": "optimal", "gap": 0.0},
    }


@pytest.fixture
def fleet(client: TestClient) -> dict[str, Any]:
    body = make_fleet(client)
    assert client.post(f"/v1/fleets/{body['id']}/workloads", json=WORKLOAD, headers=ADMIN).status_code == 201
    return body


def store(client: TestClient, fleet: dict[str, Any], res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    resp = client.post(f"/v1/fleets/{fleet['id']}/plans", json={"result": res, **extra}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_store_a_result_with_groups_and_extras(client: TestClient, fleet: dict[str, Any]) -> None:
    plan = store(client, fleet, result(split=True))
    assert plan["status"] == "draft"
    assert plan["total_cost_per_hour"] == 12.54
    assert plan["result"]["solver"] == {"status": "optimal", "gap": 0.0}  # extras are kept
    assert [(g["group_index"], g["family"], g["stages"]) for g in plan["groups"]] == [
        (0, "l4-24gb", ["text_encoder"]),
        (1, "h100-sxm-80gb", ["denoiser", "vae_decoder"]),
    ]
    assert client.get(f"/v1/plans/{plan['id']}", headers=ADMIN).json()["id"] == plan["id"]
    assert client.get("/v1/plans/999999", headers=ADMIN).status_code == 404


def test_routing_table_follows_activation_and_its_version_only_increases(
    client: TestClient, fleet: dict[str, Any]
) -> None:
    first = store(client, fleet, result())
    routing = f"/v1/fleets/{fleet['name']}/routing"
    assert client.get(routing, headers=ADMIN).status_code == 404
    resp = client.post(f"/v1/plans/{first['id']}/activate", headers=ADMIN)
    assert resp.status_code == 200
    assert resp.json()["status"] == "active"
    table = client.get(routing, headers=ADMIN).json()
    assert table["version"] == table["plan_id"] == first["id"]
    assert table["status"] == "active"
    (pool,) = table["pools"]
    assert pool["pool"] == "sdxl-prod.0.h100-sxm-80gb"
    assert pool["capacity"] == 6.3
    assert pool["weight"] == 1.0
    assert pool["recipes"]["denoiser"] == "fp8-compile"

    second = store(client, fleet, result(split=True, cost=10.0))
    client.post(f"/v1/plans/{second['id']}/activate", headers=ADMIN)
    table = client.get(routing, headers=ADMIN).json()
    assert table["version"] == second["id"] > first["id"]
    assert [p["pool"] for p in table["pools"]] == ["sdxl-prod.0.l4-24gb", "sdxl-prod.1.h100-sxm-80gb"]
    old = client.get(f"/v1/plans/{first['id']}", headers=ADMIN).json()
    assert old["status"] == "superseded"
    assert [e["kind"] for e in old["events"]] == ["activated", "superseded"]
    assert [p["status"] for p in client.get(f"/v1/fleets/{fleet['id']}/plans", headers=ADMIN).json()["items"]] == [
        "active",
        "superseded",
    ]
    # activating the older plan again would lower the version: refused, a copy works
    resp = client.post(f"/v1/plans/{first['id']}/activate", headers=ADMIN)
    assert resp.status_code == 409
    assert "copy" in resp.json()["detail"]
    copied = client.post(f"/v1/plans/{first['id']}/copy", headers=ADMIN).json()
    assert copied["inputs"]["copied_from"] == first["id"]
    client.post(f"/v1/plans/{copied['id']}/activate", headers=ADMIN)
    assert client.get(routing, headers=ADMIN).json()["version"] == copied["id"]
    assert client.get(f"/v1/fleets/{fleet['id']}", headers=ADMIN).json()["active_plan_id"] == copied["id"]


def test_pools_serving_one_group_share_its_index_and_a_job_takes_one_of_them(
    client: TestClient, fleet: dict[str, Any]
) -> None:
    """A group served by two families (and by two batches of one family) is one step of the pipeline: the
    router picks one of its pools, it does not chain them."""
    whole = result()["workloads"][0]["groups"][0]
    res = result()
    res["workloads"][0]["groups"] = [
        {**whole, "family": "h100-sxm-80gb", "batch": 4, "replicas": 1, "throughput": 2.0},
        {**whole, "family": "l4-24gb", "batch": 2, "replicas": 7, "throughput": 3.0},
        {**whole, "family": "h100-sxm-80gb", "batch": 8, "replicas": 1, "throughput": 1.0},
    ]
    res["gpus"] = {"h100-sxm-80gb": 2, "l4-24gb": 7}
    store(client, fleet, res, activate=True)
    table = client.get(f"/v1/fleets/{fleet['name']}/routing", headers=ADMIN).json()
    assert sorted((p["pool"], p["group_index"], p["weight"]) for p in table["pools"]) == [
        ("sdxl-prod.0.h100-sxm-80gb", 0, pytest.approx(2 / 6)),
        ("sdxl-prod.0.h100-sxm-80gb.2", 0, pytest.approx(1 / 6)),
        ("sdxl-prod.0.l4-24gb", 0, pytest.approx(3 / 6)),
    ]
    routing = table_from_json(table)
    backlog: dict[str, float] = {}
    for i in range(60):  # a burst: each job's work stays in its pool's backlog
        route = decide(routing, Backlog(work=dict(backlog)), JobShape(f"job-{i}", "sdxl-prod", 1024, 1024, 30))
        assert len(route.pools) == 1  # one pool per job, never a chain through all three
        backlog[route.pools[0]] = backlog.get(route.pools[0], 0.0) + route.work[0]
    assert backlog == {
        "sdxl-prod.0.h100-sxm-80gb": pytest.approx(20, abs=1),
        "sdxl-prod.0.h100-sxm-80gb.2": pytest.approx(10, abs=1),
        "sdxl-prod.0.l4-24gb": pytest.approx(30, abs=1),
    }  # in proportion to capacity


def test_a_split_over_two_families_routes_each_job_through_each_step_once(
    client: TestClient, fleet: dict[str, Any]
) -> None:
    res = result(split=True)
    te, rest = res["workloads"][0]["groups"]
    res["workloads"][0]["groups"] = [rest, {**te, "family": "h100-sxm-80gb"}, te]  # any order
    store(client, fleet, res, activate=True)
    table = client.get(f"/v1/fleets/{fleet['name']}/routing", headers=ADMIN).json()
    assert sorted((p["pool"], p["group_index"]) for p in table["pools"]) == [
        ("sdxl-prod.0.h100-sxm-80gb", 0),
        ("sdxl-prod.0.l4-24gb", 0),
        ("sdxl-prod.1.h100-sxm-80gb", 1),
    ]
    routing = table_from_json(table)
    route = decide(routing, Backlog(), JobShape("job-1", "sdxl-prod", 1024, 1024, 30))
    assert len(route.pools) == 2
    assert route.pools[0].startswith("sdxl-prod.0.")
    assert route.pools[1] == "sdxl-prod.1.h100-sxm-80gb"


def test_groups_that_do_not_split_the_models_stages_are_422(client: TestClient, fleet: dict[str, Any]) -> None:
    for groups in (
        [result(split=True)["workloads"][0]["groups"][1]],  # no text encoder anywhere
        [*result(split=True)["workloads"][0]["groups"], result()["workloads"][0]["groups"][0]],  # te twice
    ):
        res = result()
        res["workloads"][0]["groups"] = groups
        resp = client.post(f"/v1/fleets/{fleet['id']}/plans", json={"result": res}, headers=ADMIN)
        assert resp.status_code == 422, resp.text
        (problem,) = resp.json()["detail"]
        assert problem["field"] == "result.workloads.0.groups"
        assert "text_encoder+denoiser+vae_decoder" in problem["msg"]
    assert client.get(f"/v1/fleets/{fleet['id']}/plans", headers=ADMIN).json()["total"] == 0


def test_activate_is_idempotent_and_infeasible_plans_are_refused(client: TestClient, fleet: dict[str, Any]) -> None:
    plan = store(client, fleet, result(), activate=True)
    assert plan["status"] == "active"
    assert client.post(f"/v1/plans/{plan['id']}/activate", headers=ADMIN).json()["status"] == "active"
    infeasible = store(client, fleet, {**result(), "feasible": False})
    assert client.post(f"/v1/plans/{infeasible['id']}/activate", headers=ADMIN).status_code == 409
    assert client.post("/v1/plans/424242/activate", headers=ADMIN).status_code == 404


def test_drift_marks_the_plan_stale_and_it_keeps_routing_until_replaced(
    client: TestClient, fleet: dict[str, Any]
) -> None:
    plan = store(client, fleet, result(), activate=True)
    event = {"kind": "drift", "message": "achieved 4.1 images/s, planned 6.3", "data": {"achieved": 4.1}}
    resp = client.post(f"/v1/plans/{plan['id']}/events", json=event, headers=ADMIN)
    assert resp.status_code == 201
    assert resp.json()["data"] == {"achieved": 4.1}
    stale = client.get(f"/v1/plans/{plan['id']}", headers=ADMIN).json()
    assert stale["status"] == "stale"
    assert stale["stale_reason"] == event["message"]
    table = client.get(f"/v1/fleets/{fleet['id']}/routing", headers=ADMIN).json()
    assert (table["plan_id"], table["status"]) == (plan["id"], "stale")
    newer = store(client, fleet, result(replicas=4, cost=16.7), activate=True)
    assert client.get(f"/v1/plans/{plan['id']}", headers=ADMIN).json()["status"] == "superseded"
    assert client.get(f"/v1/fleets/{fleet['id']}/routing", headers=ADMIN).json()["plan_id"] == newer["id"]
    bad = client.post(f"/v1/plans/{plan['id']}/events", json={"kind": "explode", "message": "x"}, headers=ADMIN)
    assert bad.status_code == 422
    nan = client.post(
        f"/v1/plans/{plan['id']}/events",
        content='{"kind": "drift", "message": "x", "data": {"v": NaN}}',
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert nan.status_code == 422
    assert nan.json()["detail"][0]["field"] == "data"


def test_compare_two_plans(client: TestClient, fleet: dict[str, Any]) -> None:
    base = store(client, fleet, result())
    other_res = result(split=True, cost=10.0, replicas=2)
    other_res["workloads"].append({**copy.deepcopy(other_res["workloads"][0]), "name": "sdxl-batch"})
    other_res["workloads"][1]["groups"][0]["model"] = "sdxl"
    other = store(client, fleet, other_res)
    cmp = client.get(f"/v1/plans/{base['id']}/compare/{other['id']}", headers=ADMIN).json()
    assert cmp["total_cost_per_hour"] == {"base": 12.54, "other": 10.0, "delta": pytest.approx(-2.54)}
    assert cmp["ratio"] == pytest.approx(10.0 / 12.54)
    assert cmp["gpus"]["h100-sxm-80gb"] == {"base": 3, "other": 2, "delta": -1}
    by_name = {w["name"]: w for w in cmp["workloads"]}
    assert by_name["sdxl-prod"]["presence"] == "both"
    assert by_name["sdxl-prod"]["groups_changed"] is True
    assert any("topology" in c for c in by_name["sdxl-prod"]["changes"])
    assert by_name["sdxl-batch"]["presence"] == "other"
    assert client.get(f"/v1/plans/{base['id']}/compare/99999", headers=ADMIN).status_code == 404


def test_a_bad_result_is_422_naming_the_field(client: TestClient, fleet: dict[str, Any]) -> None:
    cases: list[tuple[Any, str]] = []
    res = result()
    res["workloads"][0]["groups"][0]["family"] = "nope"
    cases.append((res, "result.workloads.0.groups.0.family"))
    res = result()
    res["workloads"][0]["groups"][0]["stages"] = ["text_encoder", "vae_decoder"]
    cases.append((res, "result.workloads.0.groups.0.stages"))
    res = result()
    del res["workloads"][0]["groups"][0]["recipes"]["denoiser"]
    cases.append((res, "result.workloads.0.groups.0.recipes"))
    res = result()
    res["workloads"][0]["groups"][0]["batch"] = 0
    cases.append((res, "result.workloads.0.groups.0.batch"))
    res = result()
    res["total_cost_per_hour"] = -1
    cases.append((res, "result.total_cost_per_hour"))
    res = result()
    res["workloads"][0].pop("model")
    res["workloads"][0]["name"] = "not-a-fleet-workload"
    cases.append((res, "result.workloads.0.model"))
    for res, field in cases:
        resp = client.post(f"/v1/fleets/{fleet['id']}/plans", json={"result": res}, headers=ADMIN)
        assert resp.status_code == 422, field
        assert resp.json()["detail"][0]["field"] == field, resp.json()


def test_the_model_comes_from_the_fleets_workload_when_the_result_omits_it(
    client: TestClient, fleet: dict[str, Any]
) -> None:
    res = result()
    res["workloads"][0].pop("model")
    assert store(client, fleet, res)["groups"][0]["model"] == "sdxl"


def test_delete_plans_and_list_filters(client: TestClient, fleet: dict[str, Any]) -> None:
    draft = store(client, fleet, result())
    active = store(client, fleet, result(), activate=True)
    assert client.delete(f"/v1/plans/{active['id']}", headers=ADMIN).status_code == 409
    listed = client.get(f"/v1/fleets/{fleet['id']}/plans?status=draft", headers=ADMIN).json()
    assert [p["id"] for p in listed["items"]] == [draft["id"]]
    assert client.delete(f"/v1/plans/{draft['id']}", headers=ADMIN).status_code == 204
    assert client.get(f"/v1/plans/{draft['id']}", headers=ADMIN).status_code == 404
    assert client.get("/v1/fleets/nope/plans", headers=ADMIN).status_code == 404


def test_plans_are_admin_only(client: TestClient, fleet: dict[str, Any]) -> None:
    plan = store(client, fleet, result(), activate=True)
    _, agent, _ = register(client)
    assert client.get(f"/v1/plans/{plan['id']}", headers=agent).status_code == 403
    assert client.get(f"/v1/fleets/{fleet['id']}/routing", headers=agent).status_code == 403
    assert client.post(f"/v1/plans/{plan['id']}/activate").status_code == 401


SDXL_CELLS: list[tuple[str, str, int, float, float]] = [
    # stage, recipe, batch, latency_ms, peak_mem_gib (made-up test inputs in the shape of the reference data)
    ("text_encoder", "bf16", 1, 12.0, 1.6),
    ("text_encoder", "bf16", 4, 13.0, 1.7),
    ("denoiser", "bf16", 1, 64.0, 5.4),
    ("denoiser", "bf16", 4, 148.0, 6.3),
    ("denoiser", "fp8-compile", 1, 60.0, 3.2),
    ("denoiser", "fp8-compile", 4, 130.0, 4.0),
    ("vae_decoder", "bf16", 1, 90.0, 2.7),
    ("vae_decoder", "bf16", 4, 342.0, 8.4),
]


def measure_sdxl(client: TestClient) -> None:
    """An agent stores SDXL cells on the H100 (the only family measured; the L4 gets transferred estimates)."""
    host_id, agent, _ = register(client)
    cells = [
        measurement(stage=st, recipe=rec, batch=b, latency_ms=lat, latency_p95_ms=lat * 1.02, peak_mem_gib=mem)
        for st, rec, b, lat, mem in SDXL_CELLS
    ]
    resp = client.post("/v1/probe-runs", json=probe_run(host_id, cells), headers=agent)
    assert resp.status_code == 201, resp.text


def test_solve_stores_the_solvers_plan_with_its_groups_and_routes(
    client: TestClient, fleet: dict[str, Any], store: Store
) -> None:
    measure_sdxl(client)
    resp = client.post(
        f"/v1/fleets/{fleet['id']}/plans/solve", json={"time_limit_s": 5, "activate": True}, headers=ADMIN
    )
    assert resp.status_code == 201, resp.text
    plan = resp.json()["plan"]
    assert plan["status"] == "active"
    result = plan["result"]
    assert result["feasible"] is True
    assert plan["total_cost_per_hour"] == pytest.approx(result["total_cost_per_hour"])
    assert result["total_cost_per_hour"] > 0
    assert {b["name"] for b in result["baselines"]} == {"naive", "single-family", "gpu-mix-together"}
    inputs = plan["inputs"]
    assert inputs["measurements"] == len(SDXL_CELLS)
    assert inputs["scenario"]["solver"]["time_limit_s"] == 5
    assert inputs["scenario"]["workloads"][0]["recipes"] == {"denoiser": ["bf16", "fp8-compile"]}
    assert {e["family"] for e in inputs["scenario"]["fleet"]} == {f["family"] for f in FLEET["families"]}
    # The stored groups and routing entries are the plan JSON's groups, in order.
    (workload,) = result["workloads"]
    assert workload["name"] == "sdxl-prod"
    topology = [tuple(g) for g in workload["topology_groups"]]
    expected = [
        (gi, g["family"], g["stages"], g["recipes"], g["batch"], g["replicas"], g["throughput"])
        for gi, g in enumerate(workload["groups"])
    ]
    assert expected
    assert all(g["recipes"].get("denoiser", "bf16") in ("bf16", "fp8-compile") for g in workload["groups"])
    stored = [
        (g["group_index"], g["family"], g["stages"], g["recipes"], g["batch"], g["replicas"], g["throughput"])
        for g in plan["groups"]
    ]
    assert stored == expected
    table = client.get(f"/v1/fleets/{fleet['id']}/routing", headers=ADMIN).json()
    assert table["plan_id"] == plan["id"]
    routes = [
        (p["group_index"], p["family"], p["stages"], p["recipes"], p["batch"], p["replicas"], p["capacity"])
        for p in table["pools"]
    ]
    # a routing entry's index is its group's step in the topology
    assert sorted(map(str, routes)) == sorted(str((topology.index(tuple(e[2])), *e[1:])) for e in expected)
    assert all(p["model"] == "sdxl" for p in table["pools"])
    dedicated: dict[str, float] = {}
    for g in workload["groups"]:
        if g["shared_gpu"] is None:
            dedicated[g["family"]] = dedicated.get(g["family"], 0) + g["replicas"]
    assert all(result["gpus"][fam] >= n for fam, n in dedicated.items())
    assert result["gpus"].get("h100-sxm-80gb", 0) <= 16  # the fleet's availability
    with store.sessions() as session:
        assert session.get(m.Plan, plan["id"]) is not None


def test_solve_plans_on_measured_families_unless_estimates_are_allowed(
    client: TestClient, fleet: dict[str, Any]
) -> None:
    """The service's solve is evidence-first like `planner recommend`: only the H100 was measured, so the L4 is
    left out (and says so first in `warnings`); `allow_estimates` lets its transferred estimates in, labelled."""
    measure_sdxl(client)
    url = f"/v1/fleets/{fleet['id']}/plans/solve"
    plain = client.post(url, json={"time_limit_s": 5}, headers=ADMIN)
    assert plain.status_code == 201, plain.text
    result = plain.json()["plan"]["result"]
    assert set(result["gpus"]) == {"h100-sxm-80gb"}
    assert all(isinstance(n, int) for n in result["gpus"].values())
    assert all(g["evidence"] in ("measured", "interpolated") for w in result["workloads"] for g in w["groups"])
    assert result["warnings"][0].startswith("Left out: l4-24gb")
    assert result["prices"]["h100-sxm-80gb"]["source"] == f"fleet {fleet['name']!r}"
    allowed = client.post(url, json={"time_limit_s": 5, "allow_estimates": True}, headers=ADMIN)
    assert allowed.status_code == 201, allowed.text
    estimated = allowed.json()["plan"]["result"]
    assert estimated["evidence"]["estimates_allowed"] is True
    for g in (g for w in estimated["workloads"] for g in w["groups"] if g["family"] == "l4-24gb"):
        assert g["evidence"] == "transferred from h100-sxm-80gb"


def test_solve_a_fleet_that_cannot_carry_its_rate_is_409_saying_what_would(
    client: TestClient, fleet: dict[str, Any]
) -> None:
    measure_sdxl(client)
    small = make_fleet(
        client, name="small", families=[{"family": "h100-sxm-80gb", "price_per_hour": 4.18, "available": 1}]
    )
    workload = {**WORKLOAD, "rate": 50.0}
    assert client.post(f"/v1/fleets/{small['id']}/workloads", json=workload, headers=ADMIN).status_code == 201
    resp = client.post(f"/v1/fleets/{small['id']}/plans/solve", json={}, headers=ADMIN)
    assert resp.status_code == 409, resp.text
    detail = resp.json()["detail"]
    assert "sdxl-prod" in detail
    assert "carry 2%" in detail
    assert "add 63" in detail
    assert client.get(f"/v1/fleets/{small['id']}/plans", headers=ADMIN).json()["total"] == 0


def test_solve_from_the_plan_in_force_reports_its_moves(client: TestClient, fleet: dict[str, Any]) -> None:
    """`from_active`: the re-solve after a +10% rate weighs moves against the active plan and says what moved."""
    measure_sdxl(client)
    first = client.post(f"/v1/fleets/{fleet['id']}/plans/solve", json={"activate": True}, headers=ADMIN)
    assert first.status_code == 201, first.text
    assert first.json()["plan"]["result"]["replan"] is None  # a fresh solve
    base = f"/v1/fleets/{fleet['id']}/workloads"
    assert client.put(f"{base}/sdxl-prod", json={**WORKLOAD, "rate": WORKLOAD["rate"] * 1.1}, headers=ADMIN).is_success
    resp = client.post(
        f"/v1/fleets/{fleet['id']}/plans/solve", json={"from_active": True, "move_cost_per_hour": 0.25}, headers=ADMIN
    )
    assert resp.status_code == 201, resp.text
    replan = resp.json()["plan"]["result"]["replan"]
    assert replan["move_cost_per_hour"] == 0.25
    assert replan["moves"]["total"] <= replan["fresh_moves"]["total"]
    assert "a fresh solve moves" in replan["summary"]
    refused = client.post(f"/v1/fleets/{fleet['id']}/plans/solve", json={"move_cost_per_hour": -1}, headers=ADMIN)
    assert refused.status_code == 422


def test_solve_needs_workloads(client: TestClient, fleet: dict[str, Any]) -> None:
    empty = make_fleet(client, name="empty")
    assert client.post(f"/v1/fleets/{empty['id']}/plans/solve", json={}, headers=ADMIN).status_code == 422


def test_one_active_plan_per_fleet_is_enforced_by_the_store(store: Store) -> None:
    with store.sessions() as session:
        fleet = m.Fleet(name="f")
        session.add(fleet)
        session.flush()
        session.add(m.Plan(fleet_id=fleet.id, status="active"))
        session.flush()
        session.add(m.Plan(fleet_id=fleet.id, status="active"))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
