"""Probe runs (what an agent measured) and the measurements they carry, in and out."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner.measurements.contract import PSNR_CAP, MeasurementRow
from planner.schemas.common import (
    GpuUuid,
    Ident,
    LongText,
    Out,
    Strict,
    Timestamp,
    Version,
)


def _finite(lo: float, hi: float) -> Any:
    return Field(ge=lo, le=hi, allow_inf_nan=False)


ProvenanceKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32)]

EXAMPLE_MEASUREMENT: dict[str, Any] = {
    "gpu_family": "h100-sxm-80gb",
    "model": "sdxl",
    "stage": "denoiser",
    "recipe": "bf16",
    "batch": 1,
    "height": 1024,
    "width": 1024,
    "latency_ms": 90.4,
    "latency_p95_ms": 91.8,
    "peak_mem_gib": 11.2,
    "power_w": 655.0,
    "weights": "synthetic",
    "source": "measured",
    "latency_spread": 0.012,
    "windows": 5,
    "calls": 50,
}


class MeasurementIn(MeasurementRow):
    """One cell (contract 1's columns as JSON keys). Numbers are bounded and finite by the contract's own rule
    (planner/measurements/contract.py), the one `planner measurements import` applies too: a PSNR of identical
    outputs is sent as 1000 (JSON has no infinity) and larger PSNRs are stored as 1000.

    The run's provenance fills the provenance keys a measurement leaves out.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_extra={"examples": [EXAMPLE_MEASUREMENT]})

    error: LongText | None = None
    gpu_name: Version | None = None
    driver: Version | None = None
    cuda: Version | None = None
    torch: Version | None = None
    diffusers: Version | None = None
    torchao: Version | None = None
    agent_version: Version | None = None
    host: Version | None = None
    measured_at: Timestamp | None = None
    probe_run: str | None = Field(default=None, max_length=36, pattern=r"^[0-9a-fA-F-]*$")


class CalibrationIn(Strict):
    """Measured ceilings of one GPU; `flagged` marks a GPU far below its family (it stops counting as available)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "gpu_uuid": "GPU-8f6c2a1e-3b7d-4c1a-9e2f-0a1b2c3d4e5f",
                    "bf16_tflops": 780.0,
                    "fp8_tflops": 1200.0,
                    "memory_tbps": 2.9,
                    "h2d_gbps": 50.0,
                    "ratios": {"bf16": 0.79, "memory": 0.86},
                    "flagged": False,
                    "flag_reason": None,
                }
            ]
        },
    )

    gpu_uuid: GpuUuid | None = None
    bf16_tflops: Annotated[float, _finite(0, 1e6)] | None = None
    fp8_tflops: Annotated[float, _finite(0, 1e6)] | None = None
    memory_tbps: Annotated[float, _finite(0, 1e4)] | None = None
    h2d_gbps: Annotated[float, _finite(0, 1e5)] | None = None
    ratios: dict[ProvenanceKey, Annotated[float, _finite(0, 100)]] = Field(default_factory=dict, max_length=32)
    flagged: bool = False
    flag_reason: LongText | None = None


EXAMPLE_RUN: dict[str, Any] = {
    "id": "0b5e1f7a-6a43-4c8f-9d0e-2f1a3b4c5d6e",
    "host_id": "4b0c6a52-8d0e-4b8e-9a57-5f8e7f3f2d11",
    "kind": "probe",
    "gpu_uuid": "GPU-8f6c2a1e-3b7d-4c1a-9e2f-0a1b2c3d4e5f",
    "gpu_family": "h100-sxm-80gb",
    "weights": "synthetic",
    "provenance": {
        "driver": "570.124.06",
        "cuda": "12.8",
        "torch": "2.8.0",
        "diffusers": "0.35.1",
        "agent_version": "0.1.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
    },
    "started_at": "2026-03-14T10:00:00Z",
    "finished_at": "2026-03-14T10:20:00Z",
    "measurements": [EXAMPLE_MEASUREMENT],
    "calibrations": [],
}


class ProbeRunIn(Strict):
    """What an agent sends after a probe or a calibration: stored whole or not at all; resending is safe."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_RUN]})

    id: uuid.UUID = Field(description="chosen by the agent; a resend with the same id is stored once")
    host_id: uuid.UUID
    kind: Literal["probe", "calibration"]
    gpu_uuid: GpuUuid | None = None
    gpu_family: Ident | None = None
    weights: Literal["real", "synthetic"] | None = None
    provenance: dict[ProvenanceKey, Version | None] = Field(
        default_factory=dict,
        max_length=32,
        description="driver, cuda, torch, diffusers, torchao, agent_version, gpu_name, ...; null: not known "
        "(an agent on a machine without a GPU driver has no driver version)",
    )
    notes: LongText = ""
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    measurements: list[MeasurementIn] = Field(default_factory=list, max_length=10000)
    calibrations: list[CalibrationIn] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> ProbeRunIn:
        if self.started_at and self.finished_at and self.finished_at < self.started_at:
            raise ValueError("finished_at: is before started_at")
        return self


class ProbeRunOut(Out):
    id: str
    host_id: str | None
    kind: str
    gpu_uuid: str | None
    gpu_family: str | None = Field(validation_alias="gpu_family_id")
    weights: str | None
    provenance: dict[str, Any]
    notes: str
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    measurements: int = Field(description="measurements stored with this run")
    calibrations: int = Field(description="calibrations stored with this run")
    quarantined: int = Field(default=0, description="measurements of this run held back from plans")


class QuarantineIn(Strict):
    """Why an operator holds a run back."""

    model_config = ConfigDict(extra="forbid")

    reason: LongText = Field(default="no reason given", min_length=1)


class MeasurementOut(Out):
    """A stored measurement: the contract's columns, its id and run, and its provenance."""

    id: int
    probe_run_id: str
    gpu_family: str = Field(validation_alias="gpu_family_id")
    model: str = Field(validation_alias="model_id")
    stage: Literal["text_encoder", "denoiser", "vae_decoder"]
    recipe: str = Field(validation_alias="recipe_id")
    batch: int
    height: int
    width: int
    status: Literal["ok", "oom", "failed", "unsupported"]
    error: str | None
    latency_ms: float | None
    latency_p95_ms: float | None
    latency_spread: float | None
    windows: int | None
    calls: int | None
    peak_mem_gib: float | None
    power_w: float | None
    energy_j_per_image: float | None
    gpu_util: float | None
    achieved_tflops: float | None
    achieved_tbps: float | None
    tflops_per_call: float | None
    bound: str | None
    psnr_image: float | None
    ssim_image: float | None
    psnr_latent: float | None
    quality_weights: str | None
    weights: Literal["real", "synthetic"]
    source: Literal["measured", "estimated"]
    measured_at: datetime | None
    provenance: dict[str, Any]
    quarantine_reason: str | None = Field(
        default=None, description="why the cell is held back from plans; null: used by plans"
    )

    @field_validator("psnr_image", "psnr_latent", mode="before")
    @classmethod
    def _cap(cls, value: float | None) -> float | None:
        if value is not None and math.isinf(value):
            return math.copysign(PSNR_CAP, value)
        return value


class MeasurementFilters(BaseModel):
    """Query filters shared by the list and the CSV export."""

    gpu_family: Ident | None = None
    model: Ident | None = None
    stage: Literal["text_encoder", "denoiser", "vae_decoder"] | None = None
    recipe: Ident | None = None
    status: Literal["ok", "oom", "failed", "unsupported"] | None = None
    latest_only: bool = Field(
        default=True, description="only the newest row of each cell per source (each host; imports together)"
    )
    quarantined: bool = Field(default=False, description="false: the cells plans may use; true: only cells held back")
