"""The errors stage code raises that the worker's retry policy reads (no torch)."""

from __future__ import annotations


class JobError(Exception):
    """A failure that retrying the same job will not fix.

    `dead` False: the request itself is at fault (state `failed`). `dead` True: the job is fine but cannot go
    on (an intermediate expired): it goes to the dead letter, where an operator can requeue it.
    Any other exception is treated as transient: retried with backoff, then dead-lettered.
    """

    dead = False


class UnsupportedModelError(JobError):
    """The worker has no stage code for this model or stage, or the model's weights are missing or broken."""
