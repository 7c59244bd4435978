"""The jobs summary: counts by state and by pool, read from the jobs table the scheduler writes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
