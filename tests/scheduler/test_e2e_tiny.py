"""End to end on the tiny CPU models: the job API, the real Redis, real worker processes, real stage code.

Co-located jobs (SD 1.5, one pool runs all three stages) and split jobs (SDXL: the text encoders on one pool,
denoiser + decoder on another, latents handed over through Redis) are submitted with the client, run by two
`python -m scheduler worker` processes, and fetched as PNGs. Worker A serves two pools packed on one "GPU" with
room for one group at a time, so it swaps models; worker B serves the split's second group.
"""

from __future__ import annotations

import socket
import urllib.request
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from scheduler.client import JobClient
from scheduler.codec import decode_png_size
from scheduler.config import SchedulerSettings
from tests.scheduler.api_app import TOKEN, make_app
from tests.scheduler.conftest import PoolDef, WorkerProcess, create_plan, wait_for

pytest.importorskip("torch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.redis
@pytest.mark.slow
def test_co_located_and_split_jobs_end_to_end(
    settings: SchedulerSettings, engine: Engine, fleet_name: str, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    co = PoolDef("tiny-co", 0, "l4-24gb", "sd15", ["text_encoder", "denoiser", "vae_decoder"], batch=2)
    te = PoolDef("tiny-split", 0, "t4-16gb", "sdxl", ["text_encoder"], batch=2)
    dn = PoolDef("tiny-split", 1, "l4-24gb", "sdxl", ["denoiser", "vae_decoder"], batch=2)
    create_plan(engine, fleet_name, [co, te, dn], sizes={"tiny-co": (64, 64, 2), "tiny-split": (64, 64, 2)})
    port = free_port()
    a = WorkerProcess(
        settings.model_copy(update={"model_cache_size": 1, "metrics_port": port}),
        [co.name, te.name],
        name=f"a-{uuid.uuid4().hex[:6]}@t",
        log_path=tmp_path / "a.log",
    )
    b = WorkerProcess(settings, [dn.name], name=f"b-{uuid.uuid4().hex[:6]}@t", log_path=tmp_path / "b.log")
    workers.extend([a, b])
    a.wait_ready(180)
    b.wait_ready(180)

    with TestClient(make_app(settings, engine)) as http:
        client = JobClient(token=TOKEN, client=http)
        key = str(uuid.uuid4())
        submitted = [client.submit(workload="tiny-co", prompt=f"a red fox {i}", seed=i) for i in range(3)]
        submitted.append(client.submit(workload="tiny-co", prompt="a blue bird", seed=7, idempotency_key=key))
        submitted += [client.submit(workload="tiny-split", prompt=f"a castle {i}", seed=i) for i in range(3)]
        assert (
            client.submit(workload="tiny-co", prompt="a blue bird", seed=7, idempotency_key=key).id == submitted[3].id
        )
        done = [client.wait(job.id, timeout_s=240, poll_s=0.25) for job in submitted]
        for job in done:
            assert job.state == "done", (job, a.log()[-2000:], b.log()[-2000:])
            png = client.result(job.id)
            assert decode_png_size(png) == (64, 64)
            assert b"tEXtweights\x00synthetic" in png  # the stand-in models' noise says so
            assert job.weights == "synthetic"  # and so does the job's stored row
        assert {j.pool for j in done[:4]} == {co.name}
        assert {j.pool for j in done[4:]} == {dn.name}  # the pool of the last group that ran it
        assert all(j.attempts == 1 for j in done[:4])
        assert all(j.attempts == 2 for j in done[4:])

    dispatcher = make_app(settings, engine).state.dispatcher
    assert list(dispatcher.redis.scan_iter(match=f"{settings.key_prefix}im:*")) == []  # latents cleaned up
    wait_for(lambda: all(abs(v) < 1e-6 for v in dispatcher.state.snapshot().work.values()), 10, "backlogs to drain")
    assert len(list(settings.results_dir.rglob("*.png"))) == len(submitted)

    def loads() -> float | None:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("scheduler_model_loads_total{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    # worker A held one group at a time: it loaded at start, then swapped between SD 1.5 and SDXL's encoders
    assert (wait_for(loads, 10, "the load counter") or 0) >= 2
