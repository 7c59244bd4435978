"""/v1/probe-runs and /v1/measurements: idempotent all-or-nothing ingestion, field-named errors, query, CSV."""

from __future__ import annotations

import csv
import io
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from planner.api.schemas.probes import ProbeRunIn
from planner.crud import probes as crud
from planner.db import models as m
from planner.db.session import make_engine
from planner.measurements.contract import CONTRACT_COLUMNS
from tests.api.conftest import ADMIN, ENROLL, Store, measurement, probe_run, register


def count_measurements(client: TestClient) -> int:
    return int(client.get("/v1/measurements?latest_only=false&limit=1", headers=ADMIN).json()["total"])


def test_submit_stores_run_and_measurements_then_resend_is_200_and_stored_once(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    run = probe_run(host_id)
    first = client.post("/v1/probe-runs", json=run, headers=agent)
    assert first.status_code == 201, first.text
    assert first.json()["measurements"] == 2
    again = client.post("/v1/probe-runs", json=run, headers=agent)
    assert again.status_code == 200
    assert again.json()["id"] == run["id"]
    assert count_measurements(client) == 2
    stored = client.get(f"/v1/probe-runs/{run['id']}", headers=agent).json()
    assert stored["provenance"]["driver"] == "570.124.06"
    assert stored["gpu_family"] == "h100-sxm-80gb"


def test_resend_with_other_content_is_409(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    run = probe_run(host_id)
    assert client.post("/v1/probe-runs", json=run, headers=agent).status_code == 201
    changed = {**run, "measurements": [measurement(latency_ms=99.0, latency_p95_ms=100.0)]}
    assert client.post("/v1/probe-runs", json=changed, headers=agent).status_code == 409


def test_an_agent_cannot_submit_for_another_host(client: TestClient) -> None:
    _, agent_a, _ = register(client)
    host_b, _, _ = register(client)
    resp = client.post("/v1/probe-runs", json=probe_run(host_b), headers=agent_a)
    assert resp.status_code == 403
    assert count_measurements(client) == 0
    assert client.post("/v1/probe-runs", json=probe_run(host_b), headers=ENROLL).status_code == 403
    assert client.post("/v1/probe-runs", json=probe_run(host_b)).status_code == 401


def test_an_agent_cannot_calibrate_another_hosts_gpu(client: TestClient) -> None:
    host_a, agent_a, _ = register(client)
    _, _, gpus_b = register(client)
    run = probe_run(host_a, measurements=[], kind="calibration", calibrations=[{"gpu_uuid": gpus_b[0]["uuid"]}])
    assert client.post("/v1/probe-runs", json=run, headers=agent_a).status_code == 403


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"gpu_family": "no-such-gpu"}, "measurements.1.gpu_family"),
        ({"model": "no-such-model"}, "measurements.1.model"),
        ({"stage": "upscaler"}, "measurements.1.stage"),
        ({"latency_ms": -3}, "measurements.1.latency_ms"),
        ({"latency_ms": "NaN"}, "measurements.1.latency_ms"),
        ({"batch": 0}, "measurements.1.batch"),
        ({"peak_mem_gib": 1e300}, "measurements.1.peak_mem_gib"),
        ({"latency_p95_ms": 1.0}, "measurements.1.latency_p95_ms"),
        ({"measured_at": "2026-03-14T10:00:00"}, "measurements.1.measured_at"),
    ],
)
def test_a_bad_measurement_is_422_naming_the_field_and_nothing_is_stored(
    client: TestClient, change: dict[str, object], field: str
) -> None:
    host_id, agent, _ = register(client)
    run = probe_run(host_id, measurements=[measurement(), measurement(**{"batch": 2, **change})])
    resp = client.post("/v1/probe-runs", json=run, headers=agent)
    assert resp.status_code == 422, resp.text
    assert field in [p["field"] for p in resp.json()["detail"]]
    assert count_measurements(client) == 0
    assert client.get(f"/v1/probe-runs/{run['id']}", headers=ADMIN).status_code == 404


def test_a_stage_the_model_lacks_and_a_duplicate_cell_are_refused(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    run = probe_run(host_id, measurements=[measurement(), measurement()])
    resp = client.post("/v1/probe-runs", json=run, headers=agent)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "measurements.1"


def test_unknown_host_and_run_level_errors(client: TestClient) -> None:
    resp = client.post("/v1/probe-runs", json=probe_run(str(uuid.uuid4())), headers=ADMIN)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["field"] == "host_id"
    host_id, agent, _ = register(client)
    resp = client.post("/v1/probe-runs", json=probe_run(host_id, gpu_family="nope"), headers=agent)
    assert resp.json()["detail"][0]["field"] == "gpu_family"
    resp = client.post(
        "/v1/probe-runs",
        json=probe_run(host_id, started_at="2026-03-14T11:00:00Z", finished_at="2026-03-14T10:00:00Z"),
        headers=agent,
    )
    assert resp.json()["detail"][0]["field"] == "finished_at"


def test_new_recipe_is_recorded_like_an_import(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    run = probe_run(host_id, measurements=[measurement(recipe="bf16-experimental-x")])
    refused = client.post("/v1/probe-runs", json=run, headers=agent)  # an agent: catalog recipes only
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["field"] == "measurements.0.recipe"
    assert client.post("/v1/probe-runs", json=run, headers=ADMIN).status_code == 201  # the operator may
    recipe = client.get("/v1/recipes/bf16-experimental-x", headers=ADMIN).json()
    assert recipe["in_catalog"] is False
    assert recipe["stages"] == ["denoiser"]


def test_calibration_flags_the_gpu_and_it_stops_counting(client: TestClient) -> None:
    host_id, agent, gpus = register(client)
    cal = {"gpu_uuid": gpus[0]["uuid"], "bf16_tflops": 300.0, "flagged": True, "flag_reason": "38% of catalog bf16"}
    run = probe_run(host_id, measurements=[], kind="calibration", calibrations=[cal])
    resp = client.post("/v1/probe-runs", json=run, headers=agent)
    assert resp.status_code == 201
    assert resp.json()["calibrations"] == 1
    by_uuid = {g["uuid"]: g for g in client.get(f"/v1/hosts/{host_id}", headers=agent).json()["gpus"]}
    assert by_uuid[gpus[0]["uuid"]]["flagged"] is True
    assert by_uuid[gpus[1]["uuid"]]["flagged"] is False


def test_list_and_get_probe_runs(client: TestClient) -> None:
    host_a, agent_a, _ = register(client)
    host_b, agent_b, _ = register(client)
    run_a = probe_run(host_a)
    client.post("/v1/probe-runs", json=run_a, headers=agent_a)
    client.post("/v1/probe-runs", json=probe_run(host_b), headers=agent_b)
    assert client.get("/v1/probe-runs", headers=ADMIN).json()["total"] == 2
    page = client.get(f"/v1/probe-runs?host_id={host_a}", headers=ADMIN).json()
    assert [r["id"] for r in page["items"]] == [run_a["id"]]
    assert client.get("/v1/probe-runs", headers=agent_a).status_code == 403
    assert client.get(f"/v1/probe-runs/{run_a['id']}", headers=agent_b).status_code == 403
    assert client.get(f"/v1/probe-runs/{uuid.uuid4()}", headers=ADMIN).status_code == 404


def test_query_measurements_with_filters_and_pages(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    rows = [measurement(batch=b, latency_ms=90.0 * b, latency_p95_ms=92.0 * b) for b in (1, 2, 4)] + [
        measurement(stage="vae_decoder", latency_ms=91.0, latency_p95_ms=93.0)
    ]
    client.post("/v1/probe-runs", json=probe_run(host_id, measurements=rows), headers=agent)
    page = client.get("/v1/measurements?stage=denoiser&limit=2", headers=agent).json()
    assert page["total"] == 3
    assert [r["batch"] for r in page["items"]] == [1, 2]
    page = client.get("/v1/measurements?stage=denoiser&limit=2&offset=2", headers=agent).json()
    assert [r["batch"] for r in page["items"]] == [4]
    assert client.get("/v1/measurements?model=sdxl&recipe=fp8", headers=ADMIN).json()["total"] == 0
    assert client.get("/v1/measurements?stage=upscaler", headers=ADMIN).status_code == 422
    assert client.get("/v1/measurements", headers=ENROLL).status_code == 403


def test_latest_only_keeps_the_newest_run_per_cell(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    client.post("/v1/probe-runs", json=probe_run(host_id, measurements=[measurement()]), headers=agent)
    newer = probe_run(host_id, measurements=[measurement(latency_ms=80.0, latency_p95_ms=81.0)])
    client.post("/v1/probe-runs", json=newer, headers=agent)
    latest = client.get("/v1/measurements", headers=ADMIN).json()
    assert latest["total"] == 1
    assert latest["items"][0]["latency_ms"] == 80.0
    assert client.get("/v1/measurements?latest_only=false", headers=ADMIN).json()["total"] == 2


def test_export_csv_is_the_contract(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    client.post("/v1/probe-runs", json=probe_run(host_id), headers=agent)
    resp = client.get("/v1/measurements/export?stage=denoiser", headers=ADMIN)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(resp.text))
    assert tuple(reader.fieldnames or ())[: len(CONTRACT_COLUMNS)] == CONTRACT_COLUMNS
    rows = list(reader)
    assert [r["batch"] for r in rows] == ["1", "4"]
    assert rows[0]["driver"] == "570.124.06"
    assert client.get("/v1/measurements/export", headers=ENROLL).status_code == 403


def test_two_identical_submissions_racing_store_once(fresh_store_url: str) -> None:
    """Both pass the existence check; the one that inserts second fails on the key and answers as a resend."""
    engine = make_engine(fresh_store_url)
    host_id = str(uuid.uuid4())
    with Session(engine) as s:
        s.add(m.Host(id=host_id, name="racer", token_hash="x" * 64))
        s.commit()
    payload = ProbeRunIn.model_validate(probe_run(host_id, measurements=[measurement(recipe="bf16-racing")]))
    first = Session(engine)
    crud._insert(first, payload=payload, digest=crud.payload_digest(payload), gpus={})  # flushed, not committed
    results: list[crud.Submission] = []
    errors: list[BaseException] = []
    rollbacks: list[int] = []

    class Spy(Session):
        def rollback(self) -> None:
            rollbacks.append(1)
            super().rollback()

    def second() -> None:
        try:
            with Spy(engine) as s:
                results.append(crud.submit_probe_run(s, payload=payload))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)  # the second submission is now waiting on the first's uncommitted insert
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert not errors, errors
    assert [r.created for r in results] == [False]
    assert rollbacks, "the second submission did not take the IntegrityError path"
    with Session(engine) as s:
        n = s.scalar(
            select(func.count()).select_from(m.Measurement).where(m.Measurement.probe_run_id == str(payload.id))
        )
        runs = s.scalar(select(func.count()).select_from(m.ProbeRun))
    assert n == 1
    assert runs == 1
    engine.dispose()


def test_a_bulk_submission_refreshes_the_statistics_and_the_filter_uses_an_index(
    client: TestClient, store: Store, backend: str
) -> None:
    """Issue 28: PostgreSQL without statistics took 46-64 s on `?model=&stage=` over 21.8k rows; a probe run of
    500 cells or more ends with ANALYZE, and the filter's columns lead an index."""
    host_id, agent, _ = register(client)
    rows = [measurement(batch=b, latency_ms=20.0 * b, latency_p95_ms=21.0 * b) for b in range(1, 501)]
    assert client.post("/v1/probe-runs", json=probe_run(host_id, rows), headers=agent).status_code == 201
    with store.sessions() as session:
        if backend == "postgresql":
            analyzed = session.scalar(text("SELECT count(*) FROM pg_stats WHERE tablename = 'measurements'"))
        else:
            analyzed = session.scalar(text("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'measurements'"))
        assert analyzed
        indexes = {ix.name: [c.name for c in ix.columns] for ix in m.Measurement.__table__.indexes}
        assert indexes["ix_measurements_model_stage"][:2] == ["model_id", "stage"]
    assert client.get("/v1/measurements?model=sdxl&stage=denoiser&limit=1", headers=agent).json()["total"] == 500
