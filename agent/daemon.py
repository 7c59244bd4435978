"""`agent run`: the daemon a fleet installs on every GPU host.

It registers the host once (the token is kept in a file only its owner can read, mode 0600), heartbeats NVML
telemetry, runs the probe and calibration requests the planner queues for this host, re-calibrates when the
driver, torch or the GPU set changes, and resends spooled results. SIGTERM stops it at the next cell
boundary: the partial result is spooled before anything is sent, so nothing measured is lost.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__
from agent.client import REENROLL_HINT, PlannerClient, PlannerError, flush
from agent.config import AgentSettings
from agent.metrics import AgentMetrics
from agent.node_labels import registration_labels
from agent.spool import Spool

EXIT_TOKEN_REFUSED = 78
"""`agent run` exits with this (EX_CONFIG) when the planner refuses its token: a restart cannot fix it."""


def host_identity(settings: AgentSettings) -> dict[str, str] | None:
    """{host_id, token} from the token file, or None when this host is not registered yet."""
    path = settings.resolved_token_file
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "host_id" not in data or "token" not in data:
        return None
    return {"host_id": str(data["host_id"]), "token": str(data["token"])}


def save_identity(path: Path, host_id: str, token: str) -> None:
    """Write the token file readable by its owner only (0600), atomically; its folder is 0700."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"host_id": host_id, "token": token}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def fingerprint(inventory: Any) -> dict[str, Any]:
    """What invalidates a calibration: driver, torch, and the set of GPUs."""
    return {
        "driver": inventory.driver_version,
        "torch": inventory.torch_version,
        "gpus": sorted(g.uuid for g in inventory.gpus),
    }


class Daemon:
    """The agent's main loop. `stop()` (or SIGTERM/SIGINT) ends it after the current cell.

    A queued request ends once the planner has answered for its run: `done` with the run's id when the run is
    stored, `failed` with the planner's reason when it refused the run (never `done` with a run id that does
    not exist); while the planner is down the run waits in the spool and the request stays claimed.
    """

    def __init__(
        self, settings: AgentSettings, *, client: PlannerClient | None = None, metrics: AgentMetrics | None = None
    ) -> None:
        self.settings = settings
        self.spool = Spool(settings.resolved_spool_dir)
        self.stop_event = threading.Event()
        self._client = client
        self.identity: dict[str, str] | None = None
        self.metrics = metrics or AgentMetrics()
        self.refused: dict[str, str] = {}  # run id -> the planner's reason, for runs refused since the start
        self.awaiting: dict[str, tuple[str, str]] = {}  # run id -> (request id, kind) waiting for the planner

    def log(self, message: str) -> None:
        print(f"{datetime.now(UTC).isoformat(timespec='seconds')} agent: {message}", flush=True)

    def stop(self, *_: Any) -> None:
        self.stop_event.set()

    def _install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.log(f"signal {signum}: stopping after the current cell; results are spooled first")
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def client(self) -> PlannerClient:
        if self._client is None:
            token = self.identity["token"] if self.identity else None
            self._client = PlannerClient(
                self.settings.planner_url,
                token=token,
                timeout_s=self.settings.request_timeout_s,
                attempts=self.settings.retry_attempts,
                max_wait_s=self.settings.retry_max_wait_s,
            )
        return self._client

    # -- registration -------------------------------------------------------------------------------------------
    def ensure_registered(self, inventory: Any) -> bool:
        self.identity = host_identity(self.settings)
        if self.identity is not None:
            self.client().token = self.identity["token"]
            return True
        enrollment = self.settings.enrollment_token
        if enrollment is None:
            self.log(
                f"not registered and AGENT_ENROLLMENT_TOKEN is not set; set it (the planner's enrollment "
                f"token) so the agent can register, or place a token file at {self.settings.resolved_token_file}"
            )
            return False
        body = {
            "name": self.settings.host_name,
            "labels": registration_labels(self.settings, log=self.log),
            "driver_version": inventory.driver_version,
            "cuda_version": inventory.cuda_version,
            "agent_version": __version__,
            "torch_version": inventory.torch_version,
            "gpus": [g.to_api() for g in inventory.gpus],
        }
        answer = self.client().register(body, enrollment_token=enrollment.get_secret_value())
        save_identity(self.settings.resolved_token_file, str(answer["host_id"]), str(answer["token"]))
        self.identity = {"host_id": str(answer["host_id"]), "token": str(answer["token"])}
        self.client().token = self.identity["token"]
        self.log(f"registered as host {self.identity['host_id']}")
        return True

    # -- work ---------------------------------------------------------------------------------------------------
    def _host_id(self) -> str | None:
        return self.identity["host_id"] if self.identity else None

    def _spool_and_send(self, body: dict[str, Any]) -> None:
        self.spool.put(body)  # first: a crash or SIGTERM after this line loses nothing
        self.flush()

    def flush(self) -> None:
        """Send the spool; count what was stored and what was refused (logged as an error), then settle the
        requests whose runs the planner has answered for."""

        def refused(run_id: str, why: str) -> None:
            self.refused[run_id] = why
            self.metrics.runs.labels("refused" if not why.startswith("not sendable") else "unsendable").inc()
            self.log(f"error: the planner refused run {run_id} (kept in {self.spool.dir / 'rejected'}): {why}")

        try:
            sent, _ = flush(self.spool, self.client(), host_id=self._host_id(), log=self.log, on_refused=refused)
        finally:
            self.metrics.spooled.set(len(self.spool))
        if sent:
            self.metrics.runs.labels("sent").inc(sent)
        self.settle_requests()

    def settle_requests(self) -> None:
        """Complete each request whose run was stored (`done`) or refused (`failed`, with the planner's reason)."""
        if self.identity is None:
            return
        waiting = set(self.spool.pending())
        for run_id, (request_id, kind) in list(self.awaiting.items()):
            if run_id in self.refused:
                self._complete(request_id, kind, {"state": "failed", "error": self.refused[run_id][:2000]})
            elif run_id not in waiting:
                self._complete(request_id, kind, {"state": "done", "result_run_id": run_id})
            else:
                continue
            del self.awaiting[run_id]

    def _complete(self, request_id: str, kind: str, body: dict[str, Any]) -> None:
        assert self.identity is not None
        self.client().complete(self.identity["host_id"], request_id, body)
        self.metrics.requests.labels(kind, str(body["state"])).inc()
        if body["state"] == "failed":
            self.log(f"error: request {request_id} failed: {body.get('error')}")

    def calibrate_all(self, reason: str) -> str:
        from agent.calibrate import calibrate
        from agent.report import probe_run_body
        from agent.target import resolve_target

        target = resolve_target()
        try:
            started = datetime.now(UTC)
            result = calibrate(
                target.device,
                family=target.family,
                gpu_uuid=target.gpu.uuid if target.gpu else None,
                gpu_name=target.gpu.product_name if target.gpu else "cpu",
                power_limit_w=target.gpu.power_limit_w if target.gpu else None,
                clocks_event_reasons=target.nvml.clocks_event_reasons(target.handle) if target.nvml else None,
                flag_ratio=self.settings.calibration_flag_ratio,
            )
            run_id = str(uuid.uuid4())
            body = probe_run_body(
                run_id=run_id,
                host_id=self.identity["host_id"] if self.identity else None,
                kind="calibration",
                target=target,
                weights=None,
                started_at=started,
                calibrations=[result],
            )
            self._spool_and_send(body)
            self.log(
                f"calibrated ({reason}): bf16 {result.bf16_tflops:.0f} TFLOP/s"
                + (f", flagged: {result.flag_reason}" if result.flagged else "")
            )
            return run_id
        finally:
            target.close()

    def run_probe(self, spec: dict[str, Any]) -> str:
        from agent.probe import ProbeOptions, Sweep
        from agent.report import probe_run_body
        from agent.target import resolve_target
        from stagekit.sources import ModelSources

        # This host's folder for the model (GFP_MODEL_DIRS) makes the run real; without one a queued probe request
        # is a timing run on random weights unless it says `synthetic: false` (then it fails, naming the fix).
        source = ModelSources.from_options(synthetic=bool(spec.get("synthetic", True))).source(str(spec["model"]))
        target = resolve_target(gpu_index=int(spec.get("gpu_index", 0)))
        try:
            opts = ProbeOptions(
                weights_dir=source.folder,
                model=str(spec["model"]),
                recipes=tuple(spec.get("recipes") or ["bf16"]),
                batches=tuple(int(b) for b in spec.get("batches") or [1]),
                stages=tuple(spec["stages"]) if spec.get("stages") else None,
                height=spec.get("height"),
                width=spec.get("width"),
                tiny=bool(spec.get("tiny", False)),
                budget_s=spec.get("budget_s"),
                quality=bool(spec.get("quality", True)),
                synthetic_drift=bool(spec.get("synthetic_drift", False)),
            )
            started = datetime.now(UTC)
            sweep = Sweep(opts, target, should_stop=self.stop_event.is_set)
            state = sweep.run()
            body = probe_run_body(
                run_id=sweep.probe_run,
                host_id=self.identity["host_id"] if self.identity else None,
                kind="probe",
                target=target,
                weights=sweep.weights,
                started_at=started,
                rows=state.rows,
            )
            self._spool_and_send(body)
            return sweep.probe_run
        finally:
            target.close()

    def handle_requests(self) -> None:
        assert self.identity is not None
        host_id = self.identity["host_id"]
        for request in self.client().queued_requests(host_id):
            if self.stop_event.is_set():
                return
            claimed = self.client().claim(host_id, str(request["id"]))
            if claimed is None:
                continue
            kind = str(claimed.get("kind") or "probe")
            try:
                if kind == "calibrate":
                    run_id = self.calibrate_all("requested")
                else:
                    run_id = self.run_probe(dict(claimed.get("spec") or {}))
            except Exception as exc:  # a request that fails must be reported, not kill the daemon
                self._complete(str(request["id"]), kind, {"state": "failed", "error": str(exc)[:2000]})
                continue
            self.awaiting[run_id] = (str(request["id"]), kind)
            self.settle_requests()

    def heartbeat(self, nvml: Any) -> None:
        assert self.identity is not None
        gpus = [t.to_api() for t in nvml.telemetry()] if nvml is not None else []
        self.client().heartbeat(self.identity["host_id"], {"gpus": gpus, "agent_version": __version__})

    def _recalibrate_if_changed(self, inventory: Any) -> None:
        path = self.settings.state_dir / "fingerprint.json"
        now = fingerprint(inventory)
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before == now:
            return
        self.calibrate_all("first start" if before is None else "driver, torch or GPU set changed")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(now))

    def run_forever(self) -> int:
        from agent.discover import discover
        from agent.nvml import Nvml, NvmlUnavailable

        self._install_signals()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
            self.log(f"metrics on :{self.settings.metrics_port}/metrics")
        try:
            nvml: Any = Nvml.open()
        except NvmlUnavailable as exc:
            nvml = None
            self.log(f"no GPU found ({exc}); running on the CPU (development only)")
        inventory = discover(nvml)
        while not self.stop_event.is_set():
            try:
                if self.ensure_registered(inventory):
                    break
            except PlannerError as exc:
                self.log(f"cannot register yet: {exc}")
            self.stop_event.wait(self.settings.poll_interval_s)
        if self.stop_event.is_set():
            return 0
        next_beat = next_poll = next_flush = 0.0
        calibrated = False
        while not self.stop_event.is_set():
            now = time.monotonic()
            try:
                if now >= next_beat:
                    self.heartbeat(nvml)
                    next_beat = now + self.settings.heartbeat_interval_s
                if not calibrated:
                    self._recalibrate_if_changed(inventory)
                    calibrated = True
                if now >= next_flush:
                    self.flush()
                    next_flush = now + self.settings.flush_interval_s
                if now >= next_poll:
                    self.handle_requests()
                    next_poll = now + self.settings.poll_interval_s
            except PlannerError as exc:
                if exc.status == 401:
                    return self._token_refused(exc, nvml)
                self.metrics.planner_errors.inc()
                self.log(f"error: planner: {exc}")
            self.stop_event.wait(1.0)
        if nvml is not None:
            nvml.close()
        self.log(f"stopped; {len(self.spool)} run(s) wait in {self.spool.dir}")
        return 0

    def _token_refused(self, exc: PlannerError, nvml: Any) -> int:
        """Say loudly that the token is refused, keep the spool, and stop: retrying a refused token only hides
        the problem. Exit code `EXIT_TOKEN_REFUSED` (78, EX_CONFIG; the systemd unit does not restart on it)."""
        if nvml is not None:
            nvml.close()
        hint = REENROLL_HINT.format(spool=self.spool.dir, token_file=self.settings.resolved_token_file)
        self.log(f"STOPPING: {hint} ({exc})")
        return EXIT_TOKEN_REFUSED
