"""How a job's failure is handled: retried (transient), failed (its own fault) or dead-lettered at once."""

from __future__ import annotations


class JobError(Exception):
    """A failure that retrying the same job will not fix.

    `dead` False: the request itself is at fault (state `failed`). `dead` True: the job is fine but cannot go
    on (an intermediate expired): it goes to the dead letter, where an operator can requeue it.
    Any other exception is treated as transient: retried with backoff, then dead-lettered.
    """

    dead = False


class IntermediateTooLargeError(JobError):
    """An intermediate above the size bound (SCHEDULER_INTERMEDIATE_MAX_BYTES)."""


class IntermediateMissingError(JobError):
    """The intermediate a group needs is gone (expired or deleted): the job must start again."""

    dead = True


class UnsupportedModelError(JobError):
    """The worker has no stage code for this model or stage."""
