"""The Celery app: Redis as broker and result store by default (RabbitMQ by setting an amqp:// broker URL).

Reliability settings, and why:
- `task_acks_late`: a job's message is acknowledged after it ran, so a worker that dies mid-job loses nothing;
- `task_reject_on_worker_lost`: a job whose worker process died goes back to the queue instead of failing;
- `worker_prefetch_multiplier=1`: a worker holds one message per thread (its batch plus the next), not a queue's
  worth that another worker could have run;
- Redis `visibility_timeout` above the longest job (`job_timeout_s`; the settings refuse less): a message not
  acknowledged within it is handed to another worker, which is how a killed worker's jobs come back. Workers
  look for such messages every `unacked_restore_interval_s`;
- every key (queues, unacked messages, results) under `key_prefix`, so fleets and test runs share a Redis;
- remote control, events, mingle and gossip off: the scheduler needs none of them, and their pub/sub channels
  are not prefixed, so they would talk across fleets sharing a Redis.
Retries with backoff and the dead letter are in scheduler.worker (they need the job store).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from scheduler.config import SchedulerSettings, get_settings

RUN_GROUP = "scheduler.run_group"
PROBE = "scheduler.probe"


def celery_config(settings: SchedulerSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue_name("default"),
        "task_create_missing_queues": True,
        "result_expires": 86400,
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }
    if settings.broker_is_redis:
        conf["broker_transport_options"] = {
            "visibility_timeout": settings.visibility_timeout_s,
            "global_keyprefix": settings.key_prefix,
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            # the lock a restore sweep holds; a worker killed while holding it must not block restores for long
            "unacked_mutex_expire": max(5, min(300, int(settings.visibility_timeout_s))),
        }
    if settings.result_backend.startswith(("redis://", "rediss://")):
        conf["result_backend_transport_options"] = {"global_keyprefix": settings.key_prefix}
    return conf


def make_celery(settings: SchedulerSettings | None = None) -> Celery:
    """A Celery app for these settings. Senders publish tasks by name (RUN_GROUP, PROBE); only the worker that
    runs them registers them (scheduler.tasks.register, from scheduler.worker.WorkerRuntime)."""
    settings = settings or get_settings()
    app = Celery("scheduler", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def __getattr__(name: str) -> Any:
    """`celery -A scheduler.celery_app ...` finds `app`, built from the environment on first use."""
    if name in ("app", "celery"):
        global _app
        if _app is None:
            _app = make_celery()
        return _app
    raise AttributeError(name)


_app: Celery | None = None
