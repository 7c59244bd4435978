"""Real worker processes on no-op stages: the scheduler's machinery end to end without torch.

Jobs go through the real Redis and a `python -m scheduler worker` process: results written once, backlogs
drained, retries with backoff then the dead letter, permanent failures, metrics, and drift marking a plan stale.
"""

from __future__ import annotations

import socket
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from planner.crud import jobs as crud
from planner.db import models as m
from planner.db.session import session_factory
from scheduler.config import SchedulerSettings
from scheduler.dispatch import Dispatcher
from scheduler.routing import JobShape
from scheduler.stages import NoopStage, noop_builder
from tests.scheduler.conftest import PoolDef, WorkerProcess, create_plan, wait_for

ALL = ["text_encoder", "denoiser", "vae_decoder"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit_many(d: Dispatcher, engine: Engine, workload: str, prompts: list[str]) -> list[str]:
    ids = []
    with session_factory(engine)() as s:
        for i, prompt in enumerate(prompts):
            req = crud.JobRequest(workload_name=workload, prompt=prompt, seed=i, height=64, width=64, steps=2)
            ids.append(d.submit(s, idempotency_key=str(uuid.uuid4()), request=req).job.id)
    return ids


def states(engine: Engine, ids: list[str]) -> dict[str, m.Job]:
    with session_factory(engine)() as s:
        return {j.id: j for j in s.scalars(select(m.Job).where(m.Job.id.in_(ids)))}


def all_ended(engine: Engine, ids: list[str]) -> dict[str, m.Job] | None:
    jobs = states(engine, ids)
    return jobs if all(j.state in crud.TERMINAL_STATES for j in jobs.values()) else None


@pytest.mark.redis
@pytest.mark.parametrize("settings", [{"max_retries": 2}], indirect=True)
def test_noop_jobs_end_to_end(
    settings: SchedulerSettings, engine: Engine, fleet_name: str, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    batched = PoolDef("noop", 0, "h100-sxm-80gb", "sd15", ALL, batch=4, capacity=50.0)
    single = PoolDef("flaky", 0, "h100-sxm-80gb", "sd15", ALL, batch=1, capacity=50.0)
    split0 = PoolDef("split", 0, "l4-24gb", "sd15", ["text_encoder"], capacity=50.0)
    split1 = PoolDef("split", 1, "h100-sxm-80gb", "sd15", ["denoiser", "vae_decoder"], capacity=50.0)
    create_plan(engine, fleet_name, [batched, single, split0, split1])
    port = free_port()
    worker_settings = settings.model_copy(update={"metrics_port": port})
    w = WorkerProcess(
        worker_settings,
        [batched.name, single.name, split0.name, split1.name],
        name=f"noop-{uuid.uuid4().hex[:6]}@t",
        log_path=tmp_path / "worker.log",
        noop_ms=5,
    )
    workers.append(w)
    w.wait_ready(60)
    d = Dispatcher(settings, engine=engine)
    ok = submit_many(d, engine, "noop", [f"p{i}" for i in range(20)])
    split = submit_many(d, engine, "split", [f"s{i}" for i in range(6)])
    failing = submit_many(d, engine, "flaky", ["!fail always", "!bad request", "fine"])
    jobs = wait_for(lambda: all_ended(engine, ok + split + failing), 60, "every job to end")

    for jid in ok + split:
        job = jobs[jid]
        assert job.state == "done", (job.state, job.error, w.log()[-3000:])
        assert job.result_path
        assert (settings.results_dir / job.result_path).is_file()
    assert len(list(settings.results_dir.rglob("*.png"))) == len(ok) + len(split) + 1  # one file per done job
    assert [jobs[j].state for j in failing] == ["dead", "failed", "done"]
    assert "failed 3 times" in (jobs[failing[0]].error or "")
    assert jobs[failing[0]].attempts == 3
    assert "cannot be served" in (jobs[failing[1]].error or "")
    dead = d.state.dead_letters()
    assert [e["job_id"] for e in dead] == [failing[0]]
    # duplicates of finished jobs (a resend whose first message was only late) are skipped, and their work
    # leaves the backlogs too: on both pools of a split job's chain
    wait_for(lambda: all(abs(v) < 1e-6 for v in d.state.snapshot().work.values()), 10, "backlogs to drain")
    added = 0.0
    for jid in (ok[0], split[0]):
        job = jobs[jid]
        route = d.route(JobShape(job.id, job.workload_name, job.height, job.width, job.steps))
        d.publish(job, route)
        added += sum(route.work)
    # the resends added work to the backlogs (the worker may have skipped them already: no snapshot assert here)
    assert added > 0
    # every group's work left the backlogs, and the split jobs' intermediates are gone
    wait_for(lambda: all(abs(v) < 1e-6 for v in d.state.snapshot().work.values()), 10, "backlogs to drain")
    assert list(d.redis.scan_iter(match=f"{settings.key_prefix}im:*")) == []

    # the worker's metrics, in base units
    def scrape() -> str | None:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return text if "scheduler_gpu_busy_ratio{" in text and "_throughput_images_per_second{" in text else None

    text = wait_for(scrape, 10, "metrics")
    for name in (
        "scheduler_pool_throughput_images_per_second",
        "scheduler_pool_service_rate_images_per_second",
        "scheduler_queue_depth_jobs",
        "scheduler_gpu_busy_ratio",
        "scheduler_job_latency_seconds_bucket",
        "scheduler_batch_size_images_bucket",
    ):
        assert name in text, name
    assert f'scheduler_jobs_total{{outcome="done",pool="{batched.name}"}} 20.0' in text
    assert f'scheduler_jobs_total{{outcome="forwarded",pool="{split0.name}"}} 6.0' in text
    assert f'scheduler_jobs_total{{outcome="duplicate",pool="{batched.name}"}} 1.0' in text
    assert f'scheduler_jobs_total{{outcome="duplicate",pool="{split0.name}"}} 1.0' in text


@pytest.mark.redis
@pytest.mark.parametrize(
    "settings",
    [{"drift_window_s": 3.0, "drift_buckets": 3, "drift_min_busy_s": 0.1, "drift_tolerance": 0.3}],
    indirect=True,
)
def test_a_pool_slower_than_planned_makes_the_plan_stale(
    settings: SchedulerSettings, engine: Engine, fleet_name: str, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    # the plan says 100 images/s for the one replica; a 40 ms no-op at batch 1 does 25
    slow = PoolDef("slow", 0, "h100-sxm-80gb", "sd15", ALL, batch=1, capacity=100.0, replicas=1)
    plan_id = create_plan(engine, fleet_name, [slow])
    w = WorkerProcess(
        settings, [slow.name], name=f"slow-{uuid.uuid4().hex[:6]}@t", log_path=tmp_path / "w.log", noop_ms=40
    )
    workers.append(w)
    w.wait_ready(60)
    d = Dispatcher(settings, engine=engine)
    deadline = time.monotonic() + 30
    with session_factory(engine)() as s:
        while time.monotonic() < deadline:
            s.rollback()  # end the read transaction: each poll must see what the worker committed since
            plan = s.get(m.Plan, plan_id, populate_existing=True)
            assert plan is not None
            if plan.status == "stale":
                break
            submit_many(d, engine, "slow", [f"p{i}" for i in range(10)])
            time.sleep(0.3)
        assert plan.status == "stale", w.log()[-3000:]
        assert "slow.0.h100-sxm-80gb" in (plan.stale_reason or "")
        assert "below" in (plan.stale_reason or "")
        events = s.scalars(select(m.PlanEvent).where(m.PlanEvent.plan_id == plan_id)).all()
        drift = [e for e in events if e.kind == "drift"]
        assert len(drift) == 1
        assert drift[0].data["ratio"] < 0.7
        assert drift[0].data["planned_rate"] == 100.0


def test_a_noop_stage_takes_its_fixed_time_plus_its_time_per_item() -> None:
    """`--noop-ms` and `--noop-item-ms` (benchmarks/p95_scheduler.py): a batch's time grows with it when asked."""
    stage = noop_builder(10.0, 5.0)("sd15", "denoiser", "bf16", True, "cpu")
    flat = noop_builder(10.0)("sd15", "denoiser", "bf16", True, "cpu")
    assert isinstance(stage, NoopStage)
    assert isinstance(flat, NoopStage)
    assert stage.busy_s(1) == pytest.approx(0.015)
    assert stage.busy_s(4) == pytest.approx(0.030)
    assert flat.busy_s(4) == pytest.approx(0.010)
    out = stage([{"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2}])
    assert [item["denoiser_done"] for item in out] == [True, True]
    assert stage.sizes == [2]
