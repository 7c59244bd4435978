"""The agent's default path reaches a real planner (issue 26).

Real parts: `planner serve` as a subprocess over the store under test (SQLite and PostgreSQL), the `agent` CLI and
the `agent run` daemon as subprocesses with their defaults (quality on), on a tiny model on the CPU. What must hold:
- a refused run makes `agent probe --report` exit non-zero, and the daemon logs it, counts it in its metrics and
  ends the queued request `failed` with the planner's reason (never `done` with a run id that answers 404);
- after the documented step that defines the CPU's family, every measured cell is stored through the API;
- the same probe output (real weights, the quality probe's PSNR of fp32 against itself included) fed to the API
  and to `planner measurements import` is stored with the same values.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.client import PlannerClient
from agent.config import AgentSettings
from agent.daemon import save_identity
from planner.crud.measurements import stored_rows
from planner.db.session import make_engine, session_scope
from planner.measurements.contract import MeasurementRow
from tests.agent.test_planner_outage import TOKEN, Planner, _free_port
from tests.helpers import REPO, run_cli
from tests.models.tiny_folders import TinyFolders

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CPU_FAMILY = {"name": "development CPU", "vendor": "other", "memory_gib": 16}
# What differs by design between two stores of the same output: the family's memory (each store's own definition
# of `cpu`). Through the API a cell carries the name its host registered with, which is the agent's host name (the
# one its CSV writes), as `agent run` registers it.
NOT_COMPARED = {"gpu_memory_gib"}


@pytest.fixture
def planner(store_url: str, tmp_path: Path) -> Iterator[Planner]:
    p = Planner(store_url, _free_port(), tmp_path / "planner.log")
    p.start()
    yield p
    p.stop()


def _url(planner: Planner) -> str:
    return f"http://127.0.0.1:{planner.port}"


def _agent_env(planner: Planner, state: Path, **extra: str) -> dict[str, str]:
    return {
        "AGENT_PLANNER_URL": _url(planner),
        "AGENT_STATE_DIR": str(state),
        "AGENT_RETRY_ATTEMPTS": "2",
        "CUDA_VISIBLE_DEVICES": "",
        **extra,
    }


def _register(planner: Planner, state: Path) -> str:
    """What `agent run` does on its first start: register with the enrollment token, keep the host token."""
    with PlannerClient(_url(planner)) as client:
        reg = client.register({"name": AgentSettings().host_name, "gpus": []}, enrollment_token=TOKEN)
    save_identity(state / "token", str(reg["host_id"]), str(reg["token"]))
    return str(reg["host_id"])


def _define_cpu_family(planner: Planner) -> None:
    """docs/agent.md, "A host without a GPU": the operator defines the family `cpu` once."""
    resp = httpx.put(f"{_url(planner)}/v1/gpu-families/cpu", json=CPU_FAMILY, headers=ADMIN)
    assert resp.status_code in (200, 201), resp.text


def _probe(planner: Planner, state: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`agent probe --report` with its defaults (quality on); `args` say the weights: `--synthetic` (random, no
    folder on this machine) or `--weights-dir` (a real-format folder)."""
    return run_cli(
        "agent",
        "probe",
        "--model",
        "sd15",
        "--tiny",
        "--cpu",
        "--report",
        "--output",
        str(out),
        *args,
        env=_agent_env(planner, state),
        timeout=600,
    )


def _csv_rows(path: Path) -> list[MeasurementRow]:
    with path.open(newline="") as fh:
        return [MeasurementRow.model_validate({k: v for k, v in r.items() if v != ""}) for r in csv.DictReader(fh)]


def _stored(url: str, run_id: str) -> list[MeasurementRow]:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            return [r for r in stored_rows(session, latest_only=False) if r.probe_run == run_id]
    finally:
        engine.dispose()


def _values(row: MeasurementRow) -> dict[str, Any]:
    return {k: v for k, v in row.model_dump().items() if k not in NOT_COMPARED}


@pytest.mark.slow
def test_probe_report_with_defaults_is_stored_or_exits_non_zero(
    planner: Planner, store_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    _register(planner, state)

    # Before the CPU's family is defined the planner refuses the run: the command must say so and fail.
    refused = _probe(planner, state, tmp_path / "refused.csv", "--synthetic")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "unknown GPU family 'cpu'" in refused.stderr
    assert "refused" in refused.stderr
    assert list((state / "spool" / "rejected").glob("*.json")), "a refused run is kept aside, not lost"

    # The documented step, then the default probe: quality on, synthetic weights (no real folder here).
    _define_cpu_family(planner)
    out = tmp_path / "default.csv"
    proc = _probe(planner, state, out, "--synthetic")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = _csv_rows(out)
    assert {r.stage for r in written} == {"text_encoder", "denoiser", "vae_decoder"}
    assert all(r.status == "ok" or (r.error or "").startswith("unstable") for r in written)
    # Synthetic weights: timing kept, quality unknown (not a number a plan could compare).
    assert all(r.psnr_image is None and r.ssim_image is None and r.psnr_latent is None for r in written)
    assert all(r.gpu_memory_gib is not None for r in written), "the CPU's rows carry the host's memory"
    run_id = written[0].probe_run
    assert run_id is not None
    stored = _stored(store_url, run_id)
    assert sorted(r.cell for r in stored) == sorted(r.cell for r in written)
    by_cell = {r.cell: r for r in stored}
    for row in written:
        assert _values(by_cell[row.cell]) == _values(row), row.cell


@pytest.mark.slow
def test_the_same_probe_output_is_stored_alike_through_the_api_and_the_import(
    planner: Planner, store_url: str, tmp_path: Path, tiny_model_dirs: TinyFolders
) -> None:
    state = tmp_path / "state"
    _register(planner, state)
    _define_cpu_family(planner)
    out = tmp_path / "real.csv"
    # Real weights, quality on (its default): the quality probe scores each recipe against fp32, and fp32 against
    # itself is identical (an infinite PSNR): the one number the two ingestion paths used to disagree on.
    folder = str(tiny_model_dirs["sd15"])
    quick = ("--quality-steps", "3", "--quality-prompts", "4")  # a short trajectory keeps the CPU test short
    proc = _probe(planner, state, out, "--weights-dir", folder, "-s", "denoiser", "-r", "fp32", "-r", "bf16", *quick)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = _csv_rows(out)
    by_recipe = {r.recipe: r for r in written}
    assert set(by_recipe) == {"fp32", "bf16"}
    fp32, bf16 = by_recipe["fp32"], by_recipe["bf16"]
    assert (fp32.psnr_image, fp32.ssim_image, fp32.quality_weights) == (1000.0, 1.0, "real")
    assert fp32.quality_reference == "fp32"
    assert fp32.quality_prompts == 4
    assert bf16.psnr_image is not None
    assert bf16.psnr_image < 1000.0
    run_id = written[0].probe_run
    assert run_id is not None
    via_api = {r.cell: _values(r) for r in _stored(store_url, run_id)}
    assert len(via_api) == len(written)
    assert via_api[fp32.cell]["psnr_image"] == 1000.0

    # The agent's own CSV, as written, into a fresh embedded store: it defines the family `cpu` itself.
    other = f"sqlite:///{tmp_path / 'imported.db'}"
    imported = run_cli("planner", "measurements", "import", str(out), "--database-url", other, timeout=300)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    via_import = {r.cell: _values(r) for r in _stored(other, run_id)}
    assert via_import == via_api

    # Into the store the API wrote: the same run with the same content is recognised, not stored twice.
    again = run_cli("planner", "measurements", "import", str(out), "--database-url", store_url, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {r.cell: _values(r) for r in _stored(store_url, run_id)} == via_api


def _wait(predicate: Any, *, timeout_s: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; agent log:\n{log.read_text()[-4000:]}")


def _metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
def test_the_daemon_with_defaults_fails_a_refused_request_and_stores_an_accepted_one(
    planner: Planner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    metrics_port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        **_agent_env(
            planner,
            state,
            AGENT_ENROLLMENT_TOKEN=TOKEN,
            AGENT_POLL_INTERVAL_S="1",
            AGENT_FLUSH_INTERVAL_S="1",
            AGENT_HEARTBEAT_INTERVAL_S="2",
            AGENT_METRICS_PORT=str(metrics_port),
        ),
    }
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agent", "run"], env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    api = httpx.Client(base_url=_url(planner), headers=ADMIN, timeout=10)
    try:
        hosts = _wait(lambda: api.get("/v1/hosts").json()["items"], timeout_s=60, what="registration", log=log)
        host_id = hosts[0]["id"]

        def request(spec: dict[str, Any]) -> str:
            resp = api.post(f"/v1/hosts/{host_id}/requests", json={"kind": "probe", "spec": spec})
            assert resp.status_code == 201, resp.text
            return str(resp.json()["id"])

        def ended(req_id: str) -> dict[str, Any] | None:
            listed: list[dict[str, Any]] = api.get(f"/v1/hosts/{host_id}/requests").json()
            got = next(r for r in listed if r["id"] == req_id)
            return got if got["state"] in ("done", "failed") else None

        # `cpu` is not defined yet: the planner refuses the run; the request ends failed with its reason.
        req1 = request({"model": "sd15", "tiny": True})
        first = _wait(lambda: ended(req1), timeout_s=240, what="request 1", log=log)
        assert first["state"] == "failed", first
        assert first["result_run_id"] is None
        assert "unknown GPU family 'cpu'" in first["error"]
        assert _metric(metrics_port, "agent_runs_total", outcome="refused") >= 1
        assert _metric(metrics_port, "agent_requests_total", kind="probe", state="failed") == 1
        assert "error: the planner refused run" in log.read_text()

        # The documented step; the same default request is now stored, and `done` names a run that exists.
        _define_cpu_family(planner)
        req2 = request({"model": "sd15", "tiny": True})
        second = _wait(lambda: ended(req2), timeout_s=240, what="request 2", log=log)
        assert second["state"] == "done", second
        run = api.get(f"/v1/probe-runs/{second['result_run_id']}")
        assert run.status_code == 200, run.text
        assert run.json()["measurements"] == 3  # bf16 (the default recipe) x 3 stages x batch 1: every cell
        cells = api.get("/v1/measurements", params={"gpu_family": "cpu", "latest_only": "false"}).json()["items"]
        mine = [c for c in cells if c["probe_run_id"] == second["result_run_id"]]
        assert sorted(c["stage"] for c in mine) == ["denoiser", "text_encoder", "vae_decoder"]
        # Every cell measured is stored: `ok`, or (a busy CPU) `failed` as unstable with its numbers (issue 31).
        assert all(c["status"] == "ok" or (c["error"] or "").startswith("unstable") for c in mine), mine
        assert all(c["psnr_image"] is None for c in mine)  # synthetic weights: quality unknown
        assert _metric(metrics_port, "agent_requests_total", kind="probe", state="done") == 1
        assert _metric(metrics_port, "agent_runs_total", outcome="sent") >= 1
    finally:
        api.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            raise
    assert daemon.returncode == 0, log.read_text()[-3000:]
