"""The worker: serves one or more pools' queues, runs their stage groups in dynamic batches, reports back.

A worker process (`scheduler worker --pool P [--pool Q ...]`, scheduler.worker.process) reads its pools' entries
from the routing table (model, stages, recipes, batch), builds each group's modules once (a model cache; several
pools packed on one GPU swap in and out when they do not all fit: scheduler.worker.pools), and runs Celery's
thread pool with about twice the largest batch in threads. Each thread carries one job through
(scheduler.worker.jobs): claim it in the job store (a guarded UPDATE: a job already done is skipped), do its CPU
work, wait for the GPU thread to run it in a batch (scheduler.batching), then write its result (or its
intermediate for the next group) and record it once. A monitor (scheduler.worker.monitor) reports every
heartbeat; a rebalancer thread takes its turn at moving jobs off lost hosts (scheduler.rebalance).
"""

from scheduler.worker.process import default_worker_name, run_worker
from scheduler.worker.runtime import WorkerRuntime

__all__ = ["WorkerRuntime", "default_worker_name", "run_worker"]
