"""Prometheus metrics of a worker, in base units (seconds, ratios, images per second), prefix `scheduler_`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.throughput = Gauge(
            "scheduler_pool_throughput_images_per_second",
            "Images this worker finished per second for a pool, over the throughput window (follows demand).",
            ["pool"],
            registry=r,
        )
        self.service_rate = Gauge(
            "scheduler_pool_service_rate_images_per_second",
            "Images per second of GPU-busy time for a pool: the rate achieved while busy (compared with the plan).",
            ["pool"],
            registry=r,
        )
        self.planned_rate = Gauge(
            "scheduler_pool_planned_rate_images_per_second",
            "The plan's rate for one replica of a pool (capacity / replicas).",
            ["pool"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "scheduler_queue_depth_jobs", "Messages waiting in a pool's queue.", ["pool"], registry=r
        )
        self.backlog = Gauge(
            "scheduler_pool_backlog_images",
            "Outstanding work routed to a pool, in the pool's planned images.",
            ["pool"],
            registry=r,
        )
        self.gpu_busy = Gauge(
            "scheduler_gpu_busy_ratio",
            "Share of wall time the worker's GPU ran batches, over the last heartbeat interval.",
            ["worker"],
            registry=r,
        )
        self.latency = Histogram(
            "scheduler_job_latency_seconds",
            "Submission to result, for jobs whose last group this worker ran.",
            ["pool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs = Counter(
            "scheduler_jobs_total",
            "Groups of jobs this worker ended, by outcome (done, forwarded, retried, failed, dead, duplicate).",
            ["pool", "outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "scheduler_batch_size_images", "Images per batch call.", ["pool"], buckets=BATCH_BUCKETS, registry=r
        )
        self.swaps = Counter(
            "scheduler_model_loads_total",
            "Stage groups loaded (at start, and swaps when packed).",
            ["worker"],
            registry=r,
        )
        self.swap_seconds = Counter(
            "scheduler_model_load_seconds_total",
            "Time spent loading stage groups and compiling them at their batch sizes (warm-up).",
            ["worker"],
            registry=r,
        )

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
