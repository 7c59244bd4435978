"""Shapes of the job API: a generation request in, a job's state out, and the jobs summary."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

TEXT_PATTERN = r"^[^\x00]*$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$"

Pixels = Annotated[int, Field(ge=8, le=16384, multiple_of=8, description="a multiple of 8 (the VAE's factor)")]


class JobIn(BaseModel):
    """A generation request. Size and steps default to the workload's planned ones."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "workload": "sdxl-prod",
                    "prompt": "a lighthouse at dawn, oil painting",
                    "seed": 42,
                    "height": 1024,
                    "width": 1024,
                    "steps": 30,
                    "idempotency_key": "order-1234-image-1",
                }
            ]
        },
    )

    workload: str = Field(pattern=NAME_PATTERN, min_length=1, max_length=200)
    prompt: str = Field(pattern=TEXT_PATTERN, max_length=10000)
    negative_prompt: str | None = Field(default=None, pattern=TEXT_PATTERN, max_length=10000)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="random when left out")
    height: Pixels | None = None
    width: Pixels | None = None
    steps: int | None = Field(default=None, ge=1, le=1000)
    idempotency_key: str | None = Field(
        default=None,
        pattern=TEXT_PATTERN,
        min_length=1,
        max_length=255,
        description="resubmitting with the same key returns the same job (also the Idempotency-Key header); "
        "without one a retried request may make a second job",
    )


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    idempotency_key: str
    workload: str = Field(validation_alias="workload_name")
    state: str = Field(description="queued, running, done, failed (its own fault), dead (kept failing)")
    attempts: int = Field(description="deliveries to workers so far")
    pool: str | None = Field(description="the pool running it, or that it was sent to")
    plan_id: int | None
    routing_version: int | None
    prompt: str
    negative_prompt: str | None
    seed: int
    height: int
    width: int
    steps: int | None
    error: str | None
    result_sha256: str | None
    weights: str | None = Field(
        default=None, description="which weights made the image: real (the model's folder) or synthetic (noise)"
    )
    result_url: str | None = Field(default=None, description="where the image is, once done")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsSummary(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 42,
                    "by_state": {"queued": 3, "running": 4, "done": 34, "failed": 1, "dead": 0},
                    "by_pool": {"sdxl-prod.0.h100-sxm-80gb": {"queued": 3, "running": 4, "done": 34}},
                }
            ]
        }
    )

    total: int
    by_state: dict[str, int] = Field(description="every state, zero included")
    by_pool: dict[str, dict[str, int]] = Field(description="pool -> state -> count; jobs not yet routed: `(none)`")
