"""Fleets (the families a plan may use, at what price, how many) and their workloads (the demand)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from planner.schemas.common import (
    Gib,
    Ident,
    Name,
    Out,
    PricePerHour,
    Rate,
    Seconds,
    Strict,
)

FLEET_NAME_PATTERN = r"^(?:[A-Za-z]|[0-9]+[A-Za-z._-])[A-Za-z0-9._-]*$"
"""A fleet is named in paths by id or name, so a name is never all digits."""
Stage = Literal["text_encoder", "denoiser", "vae_decoder"]


class FleetFamilyIn(Strict):
    family: Ident
    price_per_hour: PricePerHour | None = Field(
        default=None, description="$/GPU-hour; default: the family's price (an override, else the catalog's first)"
    )
    available: int | None = Field(default=None, ge=0, le=1_000_000, description="GPUs the plan may use; null: any")
    memory_gib: Gib | None = Field(default=None, description="overrides the family's memory for this fleet")


class FleetIn(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "prod-eu",
                    "energy_price_per_kwh": None,
                    "availability_from_hosts": True,
                    "families": [
                        {"family": "h100-sxm-80gb", "price_per_hour": 4.18, "available": 16},
                        {"family": "l4-24gb", "price_per_hour": 0.8},
                    ],
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200, pattern=FLEET_NAME_PATTERN)
    energy_price_per_kwh: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)] | None = Field(
        default=None, description="for owned GPUs: add power x $/kWh to the hourly cost"
    )
    availability_from_hosts: bool = Field(
        default=False,
        description="count a family's available GPUs from active hosts (capped by `available` when it is set)",
    )
    families: list[FleetFamilyIn] = Field(default_factory=list, max_length=64)

    @field_validator("families")
    @classmethod
    def _distinct(cls, families: list[FleetFamilyIn]) -> list[FleetFamilyIn]:
        names = [f.family for f in families]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"family {dup[0]!r} is listed twice")
        return families


class FleetFamilyOut(Out):
    family: str
    price_per_hour: float
    available: int | None = Field(description="as declared; null: any")
    available_from_hosts: int | None = Field(description="GPUs of this family on active hosts (null: not opted in)")
    available_effective: int | None = Field(description="what a plan may use now; null: any")
    memory_gib: float | None


class FleetOut(Out):
    id: int
    name: str
    energy_price_per_kwh: float | None
    availability_from_hosts: bool
    created_at: datetime
    families: list[FleetFamilyOut]
    workloads: list[str]
    active_plan_id: int | None = Field(description="the plan the routing table comes from (active or stale)")


class QualityFloor(Strict):
    """A floor on a measured drift metric of each stage's recipe against the reference recipe."""

    metric: Literal["ssim_image", "psnr_image", "psnr_latent"] = "ssim_image"
    min: float = Field(ge=-1000, le=1000, allow_inf_nan=False)
    weights: Literal["real", "any"] = "real"
    missing: Literal["exclude", "allow"] = "exclude"


class WorkloadIn(Strict):
    """Demand, as in the scenario file (contract 2): model(s), size, steps, rate, latency objective, quality."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "sdxl-prod",
                    "model": "sdxl",
                    "height": 1024,
                    "width": 1024,
                    "steps": 30,
                    "rate": 5.0,
                    "p95_latency_s": 20,
                    "headroom": 0.2,
                    "recipes": {"denoiser": ["bf16", "fp8-compile"]},
                },
                {
                    "name": "drafts",
                    "model": ["sdxl-lightning", "flux-schnell"],
                    "height": 1024,
                    "width": 1024,
                    "rate": 2,
                },
            ]
        },
    )

    name: Name
    model: Ident | Annotated[list[Ident], Field(min_length=1, max_length=16)] = Field(
        description="a model, or a list of acceptable models the planner picks among"
    )
    height: int = Field(ge=64, le=16384)
    width: int = Field(ge=64, le=16384)
    steps: int | None = Field(default=None, ge=1, le=1000, description="denoiser steps; null: the model's default")
    rate: Rate = Field(description="images/s")
    p95_latency_s: Seconds | None = None
    headroom: float = Field(default=0.2, ge=0, le=100, allow_inf_nan=False)
    recipes: dict[Stage, Annotated[list[Ident], Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict, description="allow-list of recipes per stage; a stage left out allows any"
    )
    quality: QualityFloor | None = None

    @model_validator(mode="after")
    def _distinct_models(self) -> WorkloadIn:
        if isinstance(self.model, list) and len(set(self.model)) != len(self.model):
            raise ValueError("model: a list of models must name each model once")
        return self

    @property
    def models(self) -> list[str]:
        return [self.model] if isinstance(self.model, str) else list(self.model)


class WorkloadOut(Out):
    id: int
    fleet_id: int
    name: str
    model: str | list[str]
    height: int
    width: int
    steps: int | None
    rate: float
    p95_latency_s: float | None
    headroom: float
    recipes: dict[str, list[str]]
    quality: dict[str, Any] | None
    created_at: datetime


FleetRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)]
"""A fleet in a path: its id (digits) or its name."""
