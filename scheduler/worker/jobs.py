"""One job's stage group, run in a Celery task thread: claim it, do its CPU work, hand it to the GPU thread,
write its result (or its intermediate for the next group) and record it once.

Failures: a `JobError` ends the job (`failed`, or `dead` for the dead letter); any other exception is retried
with exponential backoff and jitter (tenacity's `wait_exponential_jitter`: the delay doubles from
`retry_backoff_s`, up to `retry_backoff_max_s`, plus up to one first delay at random, so jobs that failed
together do not all come back together) up to `max_retries`, then dead-lettered; a job delivered too many times
(it keeps killing workers) is dead-lettered at its next delivery.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Retry
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from planner.crud import jobs as crud
from scheduler.batching import Batcher, BatchKey
from scheduler.codec import encode_png
from scheduler.config import SchedulerSettings
from scheduler.intermediates import IntermediateStore
from scheduler.metrics import WorkerMetrics
from scheduler.results import DirectoryResults
from scheduler.stages import Item
from scheduler.state import SchedulerState
from scheduler.worker.pools import WorkerPools
from stagekit.errors import JobError

log = logging.getLogger("scheduler.worker")


def retry_delay_s(settings: SchedulerSettings, retries: int) -> float:
    """Seconds before retry number `retries + 1`: exponential, capped, with jitter."""
    wait = wait_exponential_jitter(
        multiplier=settings.retry_backoff_s, max=settings.retry_backoff_max_s, jitter=settings.retry_backoff_s
    )
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = retries + 1
    return float(wait(state))


class JobRunner:
    """Runs one message's stage group in the calling task thread, through the shared GPU thread (`batcher`)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        name: str,
        pools: WorkerPools,
        batcher: Batcher,
        sessions: sessionmaker[Session],
        state: SchedulerState,
        intermediates: IntermediateStore,
        results: DirectoryResults,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.name = name
        self.pools = pools
        self.batcher = batcher
        self.sessions = sessions
        self.state = state
        self.intermediates = intermediates
        self.results = results
        self.metrics = metrics
        self.done_times: dict[str, deque[tuple[float, int]]] = {p: deque() for p in pools.served}
        """Per pool, when each of its groups finished here (the monitor's achieved throughput)."""

    def max_attempts(self, groups: int) -> int:
        return groups * (self.settings.max_deliveries + self.settings.max_retries)

    def run_task(self, task: Task[Any, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """The task body: claim, run, and turn every failure into a retry, an end, or a dropped duplicate."""
        route: list[str] = payload["route"]
        g = int(payload["group"])
        pool = self._pool_of(task, route[g])
        if pool is None:
            self._end(payload, f"worker {self.name} does not serve pool {route[g]!r}", dead=True, pool=route[g])
            raise Ignore()
        payload = self._claim(task, payload, pool)
        try:
            return self._run(g, pool, payload)
        except (Ignore, Retry):
            raise
        except JobError as exc:
            self._end(payload, f"{type(exc).__name__}: {exc}", dead=exc.dead, pool=pool)
            raise Ignore() from exc
        except Exception as exc:
            retries = task.request.retries
            if retries >= self.settings.max_retries:
                error = f"failed {retries + 1} times; last: {type(exc).__name__}: {exc}"
                self._end(payload, error, dead=True, pool=pool)
                raise Ignore() from exc
            log.warning("job %s group %d: %s: %s; retrying", payload["job_id"], g, type(exc).__name__, exc)
            self.metrics.jobs.labels(pool, "retried").inc()
            countdown = retry_delay_s(self.settings, retries)
            raise task.retry(exc=exc, countdown=countdown, max_retries=self.settings.max_retries) from exc

    def _pool_of(self, task: Task[Any, Any], routed: str) -> str | None:
        """The pool this message is for: its route's, else its queue's (a pool renamed under it); None if not
        served here."""
        if routed in self.pools.served:
            return routed
        queue = (task.request.delivery_info or {}).get("routing_key") or ""
        pool = self.settings.pool_of_queue(queue)
        return pool if pool in self.pools.served else None

    def _claim(self, task: Task[Any, Any], payload: dict[str, Any], pool: str) -> dict[str, Any]:
        """Claim the job in the store (a guarded UPDATE) and return its payload with the stored request; raise
        Ignore for a duplicate, an exhausted job or one the store never had, Retry for one not stored yet."""
        job_id: str = payload["job_id"]
        groups = len(payload["route"])
        with self.sessions() as session:
            claim = crud.claim_job(
                session, job_id=job_id, worker=self.name, pool=pool, max_attempts=self.max_attempts(groups)
            )
            session.commit()
            request = crud.job_request(session, job_id=job_id)
        if request is not None:  # what it generates comes from the job row, not from the broker's message
            payload = {**payload, **request}
        if claim is crud.Claim.MISSING:
            if task.request.retries < self.settings.max_retries:
                countdown = retry_delay_s(self.settings, task.request.retries)
                raise task.retry(countdown=countdown, max_retries=self.settings.max_retries)
            log.error("job %s is not in the job store; dropping its message", job_id)
            self._release(payload)
            raise Ignore()
        g = int(payload["group"])
        last = g == groups - 1
        if claim is crud.Claim.FINISHED or (not last and self.state.group_done(_chain_id(payload), g)):
            self._duplicate(pool, payload)
        if claim is crud.Claim.EXHAUSTED:
            error = (
                f"delivered {self.max_attempts(groups)} times without finishing (workers died or timed out running it)"
            )
            self._end(payload, error, dead=True, pool=pool)
            raise Ignore()
        return payload

    def _run(self, g: int, pool: str, payload: dict[str, Any]) -> dict[str, Any]:
        """CPU work, the GPU batch, then the result or the next group's input (overlapped with the next batch)."""
        if g == 0:
            item: Item = {k: payload[k] for k in ("prompt", "negative_prompt", "seed", "height", "width", "steps")}
        else:
            item = self.intermediates.get(payload["input_ref"])
        runner = self.pools.runner_of(pool)
        if runner is not None:
            item = runner.prepare(item)
        key = BatchKey(pool, int(payload["height"]), int(payload["width"]), payload.get("steps"))
        out = self.batcher.submit(key, item).result(timeout=self.settings.job_timeout_s)
        if g == len(payload["route"]) - 1:
            result, outcome = self._complete(pool, payload, out), "done"
        else:
            result, outcome = self._forward(g, pool, payload, out), "forwarded"
        if payload.get("input_ref"):
            self.intermediates.delete(payload["input_ref"])
        self.state.add_backlog({pool: -float(payload["work"][g])})
        self.metrics.jobs.labels(pool, outcome).inc()
        self.done_times[pool].append((time.monotonic(), 1))
        return result

    def _complete(self, pool: str, payload: dict[str, Any], out: Item) -> dict[str, Any]:
        """Write the image (its PNG says what made it: weights real or synthetic, the model, the seed) and record
        the job done, once: a second writer's file is deleted."""
        job_id: str = payload["job_id"]
        weights = str(out.get("weights") or "unknown")
        meta = {"weights": weights, "model": self.pools.served[pool].model, "seed": str(payload.get("seed"))}
        rel, sha = self.results.write(job_id, encode_png(out["image"], text=meta))
        with self.sessions() as session:
            won = crud.complete_job(
                session, job_id=job_id, result_path=rel, result_sha256=sha, worker=self.name, weights=weights
            )
            session.commit()
        if not won:
            self.results.delete(rel)
            self._duplicate(pool, payload)
        self.results.discard_others(job_id, rel)
        log.info("job %s done on pool %s: weights=%s", job_id, pool, weights)
        self.metrics.latency.labels(pool).observe(max(time.time() - float(payload["submitted_at"]), 0.0))
        return {"job_id": job_id, "state": "done", "result_path": rel, "weights": weights}

    def _forward(self, g: int, pool: str, payload: dict[str, Any], out: Item) -> dict[str, Any]:
        """Store the intermediate for group g + 1 and mark group g done, once (the chain's next task reads it)."""
        chain_id = _chain_id(payload)
        ref = self.intermediates.put(chain_id, g + 1, out)
        if not self.state.mark_group_done(chain_id, g, self.settings.intermediate_ttl_s):
            self._duplicate(pool, payload)
        return {**payload, "group": g + 1, "input_ref": ref}

    def _duplicate(self, pool: str, payload: dict[str, Any]) -> None:
        """Drop a message whose group another delivery already ran."""
        self.metrics.jobs.labels(pool, "duplicate").inc()
        self._release(payload)
        raise Ignore()

    def _end(self, payload: dict[str, Any], error: str, *, dead: bool, pool: str) -> None:
        """End a job without a result: failed or dead-lettered; its remaining work leaves the backlogs."""
        job_id: str = payload["job_id"]
        with self.sessions() as session:
            ended = crud.fail_job(session, job_id=job_id, error=error, dead=dead)
            session.commit()
        self._release(payload)
        if not ended:
            return
        log.error("job %s %s: %s", job_id, "dead-lettered" if dead else "failed", error)
        if dead:
            self.state.dead_letter(job_id, error, payload)
        if payload.get("input_ref"):
            self.intermediates.delete(payload["input_ref"])
        self.metrics.jobs.labels(pool, "dead" if dead else "failed").inc()

    def _release(self, payload: dict[str, Any]) -> None:
        """Take a message's remaining work (its group and the chain behind it) off the backlogs.

        Every publish (a first dispatch, a resend, an evacuation's republish) adds its route's work, so every
        message that ends without running its chain on, a duplicate included, must take it off again; otherwise
        the backlogs only grow and the router steers away from pools that are in fact idle.
        """
        g = int(payload["group"])
        remaining: dict[str, float] = {}
        for p, w in zip(payload["route"][g:], payload["work"][g:], strict=True):
            remaining[p] = remaining.get(p, 0.0) - float(w)
        self.state.add_backlog(remaining)


def _chain_id(payload: dict[str, Any]) -> str:
    return f"{payload['job_id']}:{payload.get('dispatch_id', '')}"
