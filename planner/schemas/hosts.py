"""Hosts, their GPUs, heartbeats with live telemetry, and the requests queued for their agents."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from planner.core.liveness import HostStatus
from planner.schemas.common import (
    Count,
    Gib,
    GibOrZero,
    GpuUuid,
    Ident,
    JsonObject,
    Labels,
    LongText,
    Name,
    Out,
    Percent,
    Strict,
    Version,
    Watts,
)

EXAMPLE_GPU: dict[str, Any] = {
    "uuid": "GPU-8f6c2a1e-3b7d-4c1a-9e2f-0a1b2c3d4e5f",
    "index": 0,
    "product_name": "NVIDIA H100 80GB HBM3",
    "gpu_family": "h100-sxm-80gb",
    "memory_gib": 79.6,
    "compute_capability": "9.0",
    "mig_mode": False,
    "power_limit_w": 700.0,
}


EXAMPLE_TELEMETRY: dict[str, Any] = {
    "uuid": EXAMPLE_GPU["uuid"],
    "utilization_pct": 87.0,
    "memory_used_gib": 41.2,
    "power_w": 612.0,
    "sm_clock_mhz": 1980,
    "mem_clock_mhz": 2619,
    "temperature_c": 61,
    "xid_errors": 0,
}


class GpuIn(Strict):
    """A device as NVML reports it; `gpu_family` is the catalog id the agent matched, or null when unknown."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_GPU]})

    uuid: GpuUuid
    index: int = Field(ge=0, le=1023)
    product_name: str = Field(pattern=r"^[^\x00]*$", min_length=1, max_length=255)
    gpu_family: Ident | None = None
    memory_gib: Gib | None = None
    compute_capability: str | None = Field(default=None, pattern=r"^[0-9]{1,2}\.[0-9]{1,2}$")
    mig_mode: bool = False
    power_limit_w: Watts | None = None


class HostRegister(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "gpu-node-17",
                    "labels": {"zone": "eu-west-1a", "pool": "inference"},
                    "driver_version": "570.124.06",
                    "cuda_version": "12.8",
                    "agent_version": "0.1.0",
                    "torch_version": "2.8.0",
                    "gpus": [EXAMPLE_GPU],
                }
            ]
        },
    )

    name: Name = Field(max_length=255)
    labels: Labels = Field(default_factory=dict)
    driver_version: Version | None = None
    cuda_version: Version | None = None
    agent_version: Version | None = None
    torch_version: Version | None = None
    gpus: list[GpuIn] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _distinct_gpus(self) -> HostRegister:
        seen_uuid: set[str] = set()
        seen_index: set[int] = set()
        for gpu in self.gpus:
            if gpu.uuid in seen_uuid:
                raise ValueError(f"gpus: uuid {gpu.uuid!r} is listed twice")
            if gpu.index in seen_index:
                raise ValueError(f"gpus: index {gpu.index} is listed twice")
            seen_uuid.add(gpu.uuid)
            seen_index.add(gpu.index)
        return self


class HostRegistered(BaseModel):
    """The host's id and its token: shown once, the store keeps only its hash."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "host_id": "4b0c6a52-8d0e-4b8e-9a57-5f8e7f3f2d11",
                    "name": "gpu-node-17",
                    "token": "4b0c6a52-8d0e-4b8e-9a57-5f8e7f3f2d11.q3X...",
                }
            ]
        }
    )

    host_id: str
    name: str
    token: str = Field(description="Bearer token of this host's agent; store it, it is not shown again")


class GpuTelemetry(Strict):
    """One device's live readings."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_TELEMETRY]})

    uuid: GpuUuid
    utilization_pct: Percent | None = None
    memory_used_gib: GibOrZero | None = None
    power_w: Watts | None = None
    sm_clock_mhz: float | None = Field(default=None, ge=0, le=100000, allow_inf_nan=False)
    mem_clock_mhz: float | None = Field(default=None, ge=0, le=100000, allow_inf_nan=False)
    temperature_c: float | None = Field(default=None, ge=-100, le=300, allow_inf_nan=False)
    xid_errors: Count | None = None


class HeartbeatIn(Strict):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"agent_version": "0.1.0", "gpus": [EXAMPLE_TELEMETRY]}]}
    )

    gpus: list[GpuTelemetry] = Field(default_factory=list, max_length=64)
    agent_version: Version | None = None

    @field_validator("gpus")
    @classmethod
    def _distinct(cls, gpus: list[GpuTelemetry]) -> list[GpuTelemetry]:
        uuids = [g.uuid for g in gpus]
        if len(set(uuids)) != len(uuids):
            raise ValueError("a GPU is listed twice")
        return gpus


class HeartbeatOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "active", "pending_requests": 1}]})

    status: HostStatus = Field(description="the host's status after this heartbeat (`draining`: take no new work)")
    pending_requests: int = Field(description="probe or calibration requests queued for this host")


class GpuOut(Out):
    uuid: str
    index: int
    product_name: str
    gpu_family: str | None = Field(validation_alias="gpu_family_id")
    memory_gib: float | None
    compute_capability: str | None
    mig_mode: bool
    power_limit_w: float | None
    flagged: bool
    flag_reason: str | None
    telemetry: dict[str, Any] = Field(description="this GPU's readings in the host's last heartbeat ({}: none)")
    last_seen_at: datetime = Field(description="when the GPU was last registered")


class HostOut(Out):
    id: str
    name: str
    status: HostStatus = Field(description="computed from the last heartbeat and the drain at the time of reading")
    labels: dict[str, str]
    driver_version: str | None
    cuda_version: str | None
    agent_version: str | None
    torch_version: str | None
    registered_at: datetime
    last_heartbeat_at: datetime | None
    drained_at: datetime | None
    approved: bool = Field(
        default=True, description="false: enrolled under PLANNER_HOST_APPROVAL, its GPUs not counted until approved"
    )
    telemetry: dict[str, Any] = Field(description="summary of the last heartbeat: power, mean utilization, ...")
    gpus: list[GpuOut]


class ProbeSpec(Strict):
    """The cells of a probe sweep, as the agent reads them (agent/daemon.py `run_probe`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=64, description="a catalog model id, e.g. sdxl")
    recipes: list[str] = Field(default_factory=lambda: ["bf16"], min_length=1, max_length=64)
    batches: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=32)
    stages: list[Literal["text_encoder", "denoiser", "vae_decoder"]] | None = None
    height: int | None = Field(default=None, ge=8, le=16384)
    width: int | None = Field(default=None, ge=8, le=16384)
    budget_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    quality: bool = Field(
        default=True,
        description="measure quality where it means something: on real weights (the host's model folder, "
        "GFP_MODEL_DIRS); on synthetic weights it is stored as unknown",
    )
    synthetic_drift: bool = Field(
        default=False, description="on synthetic weights, measure numeric drift anyway (labelled synthetic)"
    )
    tiny: bool = Field(default=False, description="the catalog's tiny configs (a dry run of the path, tests)")
    synthetic: bool = Field(
        default=True,
        description="where the host names no folder for the model (GFP_MODEL_DIRS), time random weights of its "
        "shapes (rows marked weights=synthetic); false: such a request fails, naming the fix",
    )
    gpu_index: int = Field(default=0, ge=0, le=63)

    @field_validator("batches")
    @classmethod
    def _positive(cls, batches: list[int]) -> list[int]:
        if any(b < 1 or b > 4096 for b in batches):
            raise ValueError("every batch must be between 1 and 4096")
        return batches


class ProbeRequestIn(Strict):
    """Work for a host's agent: a probe sweep (`spec` says which cells) or a calibration of its GPUs.

    A probe's spec is validated here (ProbeSpec), so a malformed request is a 422 now rather than a failure on
    the GPU host later; a calibration takes no spec.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"kind": "probe", "spec": {"model": "sdxl", "recipes": ["bf16", "fp8-compile"], "batches": [1, 4]}},
                {"kind": "calibrate", "spec": {}},
            ]
        },
    )

    kind: Literal["probe", "calibrate"]
    spec: JsonObject = Field(default_factory=dict, description="probe: a ProbeSpec; calibrate: empty")

    @model_validator(mode="after")
    def _spec_matches_kind(self) -> ProbeRequestIn:
        if self.kind == "probe":
            try:
                ProbeSpec.model_validate(self.spec)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"spec.{where}: {first['msg']}") from None
        elif self.spec:
            raise ValueError("spec: a calibration takes no spec; send {}")
        return self


class ProbeRequestComplete(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"state": "done", "result_run_id": "0b5e1f7a-6a43-4c8f-9d0e-2f1a3b4c5d6e"},
                {"state": "failed", "error": "CUDA out of memory at batch 16"},
            ]
        },
    )

    state: Literal["done", "failed"]
    result_run_id: uuid.UUID | None = None
    error: LongText | None = None


class ProbeRequestOut(Out):
    id: str
    host_id: str
    kind: str
    spec: dict[str, Any]
    state: Literal["queued", "claimed", "done", "failed"]
    result_run_id: str | None
    error: str | None
    created_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
