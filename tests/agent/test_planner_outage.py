"""The agent keeps measuring while the planner is down for a minute; every result is stored exactly once after.

Real parts: `planner serve` as a subprocess over the store under test, the agent's spool and client (httpx +
tenacity retries), results from the agent's real probe path on a tiny model. The outage lasts 60 s (the issue's
minute) during which the agent spools a new run every 10 s; one run whose answer was "lost" (stored, but the
agent never heard) is spooled again, as an agent killed between sending and hearing back would do.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from agent.client import PlannerClient, flush
from agent.probe import ProbeOptions, Sweep
from agent.report import probe_run_body
from agent.spool import Spool
from agent.target import resolve_target
from agent.timing import SMOKE_TIMER
from planner.db import models as m
from planner.db.session import make_engine
from tests.helpers import REPO

TOKEN = "outage-test-admin-token-0123456789"
OUTAGE_S = 60.0
EVERY_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Planner:
    """`python -m planner serve` on a port, over a store; start, stop (SIGTERM), start again."""

    def __init__(self, url: str, port: int, log: Path) -> None:
        self.url, self.port, self.log = url, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PLANNER_ENVIRONMENT": "production",
            "PLANNER_ADMIN_TOKEN": TOKEN,
            "PLANNER_SEED_REFERENCE_DATA": "false",
        }
        cmd = [sys.executable, "-m", "planner", "serve", "--port", str(self.port), "--database-url", self.url]
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"planner exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"planner not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def planner(store_url: str, tmp_path: Path) -> Iterator[Planner]:
    p = Planner(store_url, _free_port(), tmp_path / "planner.log")
    p.start()
    yield p
    p.stop()


@pytest.mark.slow
def test_results_measured_during_a_one_minute_outage_are_stored_once(
    planner: Planner, store_url: str, tmp_path: Path
) -> None:
    target = resolve_target(force_cpu=True)
    timer = SMOKE_TIMER
    rows = Sweep(
        ProbeOptions(model="sd15", recipes=("bf16",), batches=(1,), stages=("vae_decoder",), tiny=True,
                     timer=timer, quality=False),
        target,
    ).run().rows  # fmt: skip
    assert rows
    assert rows[0].status == "ok"

    # The CPU's measurements name the family "cpu", which no catalog has: the operator defines it first.
    defined = httpx.put(
        f"http://127.0.0.1:{planner.port}/v1/gpu-families/{target.family_id}",
        json={"name": "development CPU", "vendor": "other", "memory_gib": 16},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert defined.status_code in (200, 201), defined.text
    client = PlannerClient(f"http://127.0.0.1:{planner.port}", attempts=2, max_wait_s=0.5)
    reg = client.register({"name": f"outage-{uuid.uuid4().hex[:6]}", "gpus": []}, enrollment_token=TOKEN)
    client.token = reg["token"]
    host_id = reg["host_id"]
    spool = Spool(tmp_path / "spool")

    def measure() -> dict[str, object]:
        """A new run: the probe's rows under a run id of their own, as each sweep of the agent makes."""
        run_id = str(uuid.uuid4())
        return probe_run_body(
            run_id=run_id, host_id=host_id, kind="probe", target=target, weights="synthetic",
            started_at=datetime.now(UTC), rows=[r.model_copy(update={"probe_run": run_id}) for r in rows],
        )  # fmt: skip

    # Up: one run goes straight through.
    first = measure()
    spool.put(first)
    rejected = tmp_path / "spool" / "rejected"
    assert flush(spool, client, host_id=host_id) == (1, 0), [p.read_text()[:3000] for p in rejected.glob("*")]

    # Down for a minute: the agent keeps measuring; everything waits in the spool.
    planner.stop()
    made = [first["id"]]
    spool.put(first)  # its answer was "lost": the agent spooled it again and will resend it
    started = time.monotonic()
    while time.monotonic() - started < OUTAGE_S:
        run = measure()
        made.append(run["id"])
        spool.put(run)
        sent, pending = flush(spool, client, host_id=host_id)
        assert sent == 0
        assert pending == len(spool)
        time.sleep(EVERY_S)
    assert len(spool) == len(made)  # the resend of the first run and every run of the outage

    # Back: one flush sends them all, oldest first; the resend is answered "already stored".
    planner.start()
    sent, pending = flush(spool, client, host_id=host_id)
    assert (sent, pending) == (len(made), 0)
    assert len(spool) == 0

    engine = make_engine(store_url)
    with engine.connect() as conn:
        runs = conn.execute(select(m.ProbeRun.id).where(m.ProbeRun.host_id == host_id)).scalars().all()
        per_run = dict(
            conn.execute(
                select(m.Measurement.probe_run_id, func.count())
                .where(m.Measurement.probe_run_id.in_(made))
                .group_by(m.Measurement.probe_run_id)
            ).all()
        )
    engine.dispose()
    assert sorted(runs) == sorted(set(made))
    assert len(made) == len(set(made))  # one id per measured run
    assert per_run == {rid: len(rows) for rid in made}
    client.close()
    target.close()
