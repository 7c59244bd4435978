"""The intermediates' failures (the scheduler's own); `stagekit.errors.JobError` says how any failure is handled."""

from __future__ import annotations

from stagekit.errors import JobError


class IntermediateTooLargeError(JobError):
    """An intermediate above the size bound (SCHEDULER_INTERMEDIATE_MAX_BYTES)."""


class IntermediateMissingError(JobError):
    """The intermediate a group needs is gone (expired or deleted): the job must start again."""

    dead = True
