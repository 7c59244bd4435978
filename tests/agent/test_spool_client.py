"""The spool (atomic, ordered, nothing lost) and the planner client (retries; resend-safe)."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.client import PlannerClient, PlannerError, flush
from agent.config import AgentSettings
from agent.daemon import host_identity, save_identity
from agent.spool import Spool


def _run(n: int = 0) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "kind": "probe", "measurements": [{"n": n}], "calibrations": []}


def test_spool_put_load_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    run = _run()
    path = spool.put(run)
    assert path.name == f"{run['id']}.json"
    assert spool.pending() == [run["id"]]
    assert spool.load(run["id"]) == run
    spool.put({**run, "measurements": [{"n": 2}]})  # same run again replaces, never duplicates
    assert len(spool) == 1
    assert spool.load(run["id"])["measurements"] == [{"n": 2}]
    spool.remove(run["id"])
    assert spool.pending() == []
    assert not [p for p in (tmp_path / "spool").iterdir() if p.name.startswith(".tmp")]
    assert stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == 0o700


def test_spool_orders_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    runs = [_run(i) for i in range(3)]
    for i, r in enumerate(runs):
        p = spool.put(r)
        os.utime(p, (1000 + i, 1000 + i))
    assert spool.pending() == [r["id"] for r in runs]


def test_spool_refuses_a_path_as_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a run id"):
        Spool(tmp_path).put({"id": "../../etc/passwd"})


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(TypeError):
        spool.put({"id": str(uuid.uuid4()), "bad": object.__new__(type("X", (), {"__str__": None}))})
    assert spool.pending() == []
    assert not list(tmp_path.glob(".tmp-*"))


class FakePlanner:
    """An httpx transport standing in for the planner: down for `down` requests, then stores runs by id."""

    def __init__(self, down: int = 0, status_when_down: int = 503) -> None:
        self.down = down
        self.status_when_down = status_when_down
        self.stored: dict[str, dict[str, Any]] = {}
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.down > 0:
            self.down -= 1
            if self.status_when_down == 0:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(self.status_when_down, json={"detail": "unavailable"})
        assert request.headers["Authorization"] == "Bearer tok"
        if request.url.path == "/v1/probe-runs":
            run = json.loads(request.content)
            if run["id"] in self.stored:
                return httpx.Response(200, json={"id": run["id"]})
            self.stored[run["id"]] = run
            return httpx.Response(201, json={"id": run["id"]})
        return httpx.Response(404)


def _client(fake: FakePlanner, attempts: int = 4) -> PlannerClient:
    return PlannerClient(
        "http://planner.test",
        token="tok",
        attempts=attempts,
        transport=httpx.MockTransport(fake),
        sleep=lambda _s: None,
    )


def test_client_retries_until_the_planner_answers() -> None:
    fake = FakePlanner(down=2)
    with _client(fake) as client:
        assert client.submit_run(_run()) is True
    assert fake.requests == 3
    assert len(fake.stored) == 1


def test_client_retries_connection_errors() -> None:
    fake = FakePlanner(down=2, status_when_down=0)
    with _client(fake) as client:
        assert client.submit_run(_run()) is True


def test_client_gives_up_after_its_attempts() -> None:
    fake = FakePlanner(down=10)
    with _client(fake, attempts=3) as client, pytest.raises(PlannerError, match="503 after 3 attempts"):
        client.submit_run(_run())
    assert fake.requests == 3


def test_client_does_not_retry_a_client_error() -> None:
    fake = FakePlanner(down=5, status_when_down=422)
    with _client(fake) as client, pytest.raises(PlannerError) as info:
        client.submit_run(_run())
    assert info.value.status == 422
    assert fake.requests == 1


def test_flush_keeps_runs_while_down_and_sends_each_once_later(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    runs = [_run(i) for i in range(3)]
    for r in runs:
        spool.put(r)
    fake = FakePlanner(down=100)
    with _client(fake, attempts=2) as client:
        assert flush(spool, client) == (0, 3)  # planner down: nothing lost, nothing sent
    fake.down = 0
    with _client(fake) as client:
        assert flush(spool, client) == (3, 0)
    assert sorted(fake.stored) == sorted(r["id"] for r in runs)
    # A resend (answer lost after the store) is recognised by its id: stored once.
    spool.put(runs[0])
    with _client(fake) as client:
        assert flush(spool, client) == (1, 0)
    assert len(fake.stored) == 3


def test_flush_quarantines_a_refused_run(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    run = _run()
    spool.put(run)
    with _client(FakePlanner(down=1, status_when_down=422)) as client:
        assert flush(spool, client) == (0, 0)
    assert (tmp_path / "rejected" / f"{run['id']}.json").exists()


def test_token_file_is_private(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path / "state")
    assert host_identity(settings) is None
    save_identity(settings.resolved_token_file, "host-1", "secret")
    mode = stat.S_IMODE(os.stat(settings.resolved_token_file).st_mode)
    assert mode == 0o600
    assert host_identity(settings) == {"host_id": "host-1", "token": "secret"}


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENT_PLANNER_URL", "http://planner:8000")
    monkeypatch.setenv("AGENT_HEARTBEAT_INTERVAL_S", "5")
    monkeypatch.setenv("AGENT_STATE_DIR", str(tmp_path))
    s = AgentSettings()
    assert s.planner_url == "http://planner:8000"
    assert s.heartbeat_interval_s == 5
    assert s.resolved_spool_dir == tmp_path / "spool"


def test_a_run_spooled_before_registration_is_sent_with_the_host_id(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    run = {**_run(), "host_id": None}
    spool.put(run)
    fake = FakePlanner()
    with _client(fake) as client:
        assert flush(spool, client, host_id="h-7") == (1, 0)
    assert fake.stored[run["id"]]["host_id"] == "h-7"


def test_a_probe_run_body_is_strict_json_and_parses_back(tmp_path: Path) -> None:
    """An infinite PSNR (the reference against itself) is the contract's PSNR_CAP (1000 dB) in strict JSON."""
    from datetime import UTC, datetime

    from agent.report import probe_run_body
    from agent.target import resolve_target
    from planner.measurements.contract import MeasurementRow

    row = MeasurementRow(
        gpu_family="cpu",
        model="sd15",
        stage="denoiser",
        recipe="bf16",
        batch=1,
        height=64,
        width=64,
        latency_ms=1.0,
        weights="synthetic",
        source="measured",
        psnr_latent=float("inf"),
    )
    body = probe_run_body(
        run_id=str(uuid.uuid4()),
        host_id="h",
        kind="probe",
        target=resolve_target(force_cpu=True),
        weights="synthetic",
        started_at=datetime.now(UTC),
        rows=[row],
    )
    json.dumps(body, allow_nan=False)
    fake = FakePlanner()
    with _client(fake) as client:
        assert client.submit_run(body) is True
    stored = fake.stored[body["id"]]["measurements"][0]
    assert stored["psnr_latent"] == 1000.0
    assert MeasurementRow.model_validate(stored).psnr_latent == 1000.0


def test_a_refused_token_stops_the_flush_at_once_and_keeps_every_run(tmp_path: Path) -> None:
    """Issue 28: 401 is not retried, not quarantined; the spool waits for the host's next identity, which
    then delivers every run as itself."""
    from agent.client import TokenRefused

    spool = Spool(tmp_path)
    runs = [_run(i) for i in range(3)]
    for run in runs:
        spool.put({**run, "host_id": "old-host"})
    fake = FakePlanner(down=1, status_when_down=401)
    with _client(fake) as client, pytest.raises(TokenRefused, match="3 run\\(s\\) stay spooled"):
        flush(spool, client, host_id="old-host")
    assert fake.requests == 1  # no retry of a refused token
    assert len(spool) == 3
    assert not (tmp_path / "rejected").exists()
    with _client(fake) as client:  # re-enrolled: a new host id
        assert flush(spool, client, host_id="new-host") == (3, 0)
    assert {r["host_id"] for r in fake.stored.values()} == {"new-host"}


def test_the_daemon_stops_loudly_on_a_refused_token_and_keeps_its_spool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.daemon import EXIT_TOKEN_REFUSED, Daemon

    settings = AgentSettings(state_dir=tmp_path / "state", planner_url="http://planner.test")
    save_identity(settings.resolved_token_file, "host-1", "rotated-away")
    refusing = PlannerClient(
        "http://planner.test",
        token="x",
        attempts=3,
        transport=httpx.MockTransport(lambda _r: httpx.Response(401, json={"detail": "unknown token"})),
        sleep=lambda _s: None,
    )
    daemon = Daemon(settings, client=refusing)
    daemon.spool.put(_run())
    assert daemon.run_forever() == EXIT_TOKEN_REFUSED
    out = capsys.readouterr().out
    assert "STOPPING" in out
    assert "401" in out
    assert "AGENT_ENROLLMENT_TOKEN" in out
    assert len(daemon.spool) == 1
