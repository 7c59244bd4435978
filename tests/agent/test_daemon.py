"""The daemon against a fake planner: register (token file 0600), heartbeat, run a queued request, report."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from agent.client import PlannerClient
from agent.config import AgentSettings
from agent.daemon import Daemon, fingerprint
from agent.discover import discover
from agent.probe import ProbeOptions, Sweep
from agent.target import resolve_target


class Planner:
    """Just enough of docs/api.md's agent routes, in memory."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.heartbeats: list[dict[str, Any]] = []
        self.requests = [{"id": "req-1", "kind": "calibrate", "spec": {}, "state": "queued"}]
        self.completed: dict[str, dict[str, Any]] = {}
        self.down = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            self.down -= 1
            return httpx.Response(503)
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else None
        auth = request.headers.get("Authorization")
        if (method, path) == ("POST", "/v1/hosts"):
            assert auth == "Bearer enroll-me"
            return httpx.Response(201, json={"host_id": "h-1", "token": "host-token"})
        assert auth == "Bearer host-token", (method, path, auth)
        if path == "/v1/hosts/h-1/heartbeat":
            self.heartbeats.append(body)
            return httpx.Response(200, json={"status": "active", "pending_requests": len(self.requests)})
        if path == "/v1/hosts/h-1/requests":
            return httpx.Response(200, json=[r for r in self.requests if r["state"] == "queued"])
        if path.endswith("/claim"):
            req = next(r for r in self.requests if r["id"] == path.split("/")[-2])
            if req["state"] != "queued":
                return httpx.Response(409)
            req["state"] = "claimed"
            return httpx.Response(200, json=req)
        if path.endswith("/complete"):
            self.completed[path.split("/")[-2]] = body
            return httpx.Response(200, json={})
        if path == "/v1/probe-runs":
            if body["id"] in self.runs:
                return httpx.Response(200, json={})
            self.runs[body["id"]] = body
            return httpx.Response(201, json={})
        return httpx.Response(404)


def _daemon(tmp_path: Path, planner: Planner) -> Daemon:
    settings = AgentSettings(state_dir=tmp_path / "state", enrollment_token=SecretStr("enroll-me"))
    client = PlannerClient("http://planner.test", transport=httpx.MockTransport(planner), sleep=lambda _s: None)
    return Daemon(settings, client=client)


def test_register_heartbeat_and_run_a_calibration_request(tmp_path: Path) -> None:
    planner = Planner()
    daemon = _daemon(tmp_path, planner)
    inventory = discover()
    assert daemon.ensure_registered(inventory)
    token_file = daemon.settings.resolved_token_file
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert json.loads(token_file.read_text()) == {"host_id": "h-1", "token": "host-token"}

    daemon.heartbeat(None)
    assert planner.heartbeats == [{"gpus": [], "agent_version": "0.1.0"}]

    daemon.handle_requests()
    assert planner.completed["req-1"]["state"] == "done"
    run_id = planner.completed["req-1"]["result_run_id"]
    run = planner.runs[run_id]
    assert run["kind"] == "calibration"
    assert run["host_id"] == "h-1"
    assert run["calibrations"][0]["bf16_tflops"] > 0
    assert len(daemon.spool) == 0  # sent, so no longer spooled

    # A second daemon on the same host reuses the token file: no second registration.
    again = _daemon(tmp_path, planner)
    assert again.ensure_registered(inventory)
    assert again.identity == {"host_id": "h-1", "token": "host-token"}


def test_results_stay_spooled_while_the_planner_is_down(tmp_path: Path) -> None:
    planner = Planner()
    daemon = _daemon(tmp_path, planner)
    assert daemon.ensure_registered(discover())
    planner.down = 100
    run_id = daemon.calibrate_all("test")
    assert daemon.spool.pending() == [run_id]  # spooled first, send failed: kept
    planner.down = 0
    from agent.client import flush

    assert flush(daemon.spool, daemon.client()) == (1, 0)
    assert list(planner.runs) == [run_id]


def test_fingerprint_changes_with_the_gpu_set() -> None:
    inv = discover()
    before = fingerprint(inv)
    assert before == {"driver": inv.driver_version, "torch": inv.torch_version, "gpus": []}


def test_a_stop_request_ends_the_sweep_before_the_next_cell() -> None:
    target = resolve_target(force_cpu=True)
    sweep = Sweep(ProbeOptions(model="sd15", recipes=("bf16",), tiny=True), target, should_stop=lambda: True)
    state = sweep.run()
    assert state.rows == []
    assert state.stopped == "asked to stop"
