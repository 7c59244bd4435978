"""The store: one table per noun of DESIGN.md's vocabulary, with the constraints the data demands.

Catalog tables (gpu_families, models, recipes) are seeded from the package's data files and may hold rows the
catalog never heard of (imported measurements may name new recipes; a fleet may define a family by memory).
A measurement belongs to a probe run; one measurement per cell per run. Plans keep their full result as JSON
(the contract output) and, normalised, their groups and routing table, which the scheduler reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from planner.db.base import Base, JsonType, UtcDateTime, utcnow

ID = String(64)
UUID_LEN = String(36)

STAGE_CHECK = "stage IN ('text_encoder', 'denoiser', 'vae_decoder')"
HOST_STATUSES = ("active", "stale", "lost", "draining")
MEASUREMENT_STATUSES = ("ok", "oom", "failed", "unsupported")
PROBE_RUN_KINDS = ("probe", "calibration", "import")
PLAN_STATUSES = ("draft", "active", "stale", "superseded")
JOB_STATES = ("queued", "running", "done", "failed", "dead")
REQUEST_STATES = ("queued", "claimed", "done", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class GpuFamily(Base):
    __tablename__ = "gpu_families"
    __table_args__ = (
        CheckConstraint("memory_gib > 0", name="memory_positive"),
        CheckConstraint("memory_bandwidth_tbps IS NULL OR memory_bandwidth_tbps > 0", name="bandwidth_positive"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    vendor: Mapped[str] = mapped_column(String(32), default="nvidia")
    memory_gib: Mapped[float] = mapped_column(Float)
    memory_bandwidth_tbps: Mapped[float | None] = mapped_column(Float)
    tflops: Mapped[dict[str, float]] = mapped_column(JsonType, default=dict)
    tdp_w: Mapped[float | None] = mapped_column(Float)
    nvml_patterns: Mapped[list[str]] = mapped_column(JsonType, default=list)
    compute_capability: Mapped[str | None] = mapped_column(String(16))
    in_catalog: Mapped[bool] = mapped_column(Boolean, default=True)
    unverified: Mapped[list[str]] = mapped_column(JsonType, default=list)
    sources: Mapped[list[str]] = mapped_column(JsonType, default=list)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    prices: Mapped[list[GpuPrice]] = relationship(back_populates="family", cascade="all, delete-orphan")


class GpuPrice(Base):
    __tablename__ = "gpu_prices"
    __table_args__ = (
        CheckConstraint("price_per_hour > 0", name="price_positive"),
        UniqueConstraint("gpu_family_id", "provider", "offering", "as_of"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gpu_family_id: Mapped[str] = mapped_column(ForeignKey("gpu_families.id", ondelete="CASCADE"), index=True)
    price_per_hour: Mapped[float] = mapped_column(Float)
    provider: Mapped[str] = mapped_column(String(100))
    offering: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(Text, default="")
    as_of: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="unverified")
    is_override: Mapped[bool] = mapped_column(Boolean, default=False)
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    family: Mapped[GpuFamily] = relationship(back_populates="prices")


class Host(Base):
    __tablename__ = "hosts"
    __table_args__ = (CheckConstraint(_in("status", HOST_STATUSES), name="status_known"),)

    id: Mapped[str] = mapped_column(UUID_LEN, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    token_hash: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="active")
    labels: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    driver_version: Mapped[str | None] = mapped_column(String(64))
    cuda_version: Mapped[str | None] = mapped_column(String(64))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    torch_version: Mapped[str | None] = mapped_column(String(64))
    telemetry: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    drained_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """Set by an operator: the host takes no new work and its GPUs stop counting as available."""
    approved: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    """False while a host enrolled under `PLANNER_HOST_APPROVAL` awaits an operator: its GPUs do not count."""

    gpus: Mapped[list[Gpu]] = relationship(back_populates="host", cascade="all, delete-orphan")


class Gpu(Base):
    """A device on a host, keyed by its NVML UUID (indices change across reboots and MIG layouts)."""

    __tablename__ = "gpus"
    __table_args__ = (
        UniqueConstraint("host_id", "index"),
        CheckConstraint('"index" >= 0', name="index_non_negative"),
        CheckConstraint("memory_gib IS NULL OR memory_gib > 0", name="memory_positive"),
    )

    uuid: Mapped[str] = mapped_column(String(96), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    product_name: Mapped[str] = mapped_column(String(255))
    gpu_family_id: Mapped[str | None] = mapped_column(ForeignKey("gpu_families.id"))
    memory_gib: Mapped[float | None] = mapped_column(Float)
    compute_capability: Mapped[str | None] = mapped_column(String(16))
    mig_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    power_limit_w: Mapped[float | None] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_reason: Mapped[str | None] = mapped_column(Text)
    telemetry: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    host: Mapped[Host] = relationship(back_populates="gpus")


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (
        CheckConstraint("default_steps > 0", name="steps_positive"),
        CheckConstraint("height > 0 AND width > 0", name="size_positive"),
        CheckConstraint("guidance_scale >= 0", name="guidance_non_negative"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(32))
    distilled_from: Mapped[str | None] = mapped_column(ForeignKey("models.id"))
    default_steps: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    guidance_scale: Mapped[float] = mapped_column(Float)
    cfg: Mapped[bool] = mapped_column(Boolean)
    text_tokens: Mapped[int] = mapped_column(Integer)
    in_catalog: Mapped[bool] = mapped_column(Boolean, default=True)

    stages: Mapped[list[ModelStage]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="ModelStage.position"
    )


class ModelStage(Base):
    __tablename__ = "model_stages"
    __table_args__ = (CheckConstraint(STAGE_CHECK, name="stage_known"),)

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    components: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    tflops_per_call: Mapped[float | None] = mapped_column(Float)

    model: Mapped[Model] = relationship(back_populates="stages")


class Recipe(Base):
    __tablename__ = "recipes"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    stages: Mapped[list[str]] = mapped_column(JsonType, default=list)
    options: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    in_catalog: Mapped[bool] = mapped_column(Boolean, default=True)


class ProbeRun(Base):
    """One run of the agent (or one imported file): the provenance every measurement carries."""

    __tablename__ = "probe_runs"
    __table_args__ = (CheckConstraint(_in("kind", PROBE_RUN_KINDS), name="kind_known"),)

    id: Mapped[str] = mapped_column(UUID_LEN, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), index=True)
    gpu_uuid: Mapped[str | None] = mapped_column(String(96))
    gpu_family_id: Mapped[str | None] = mapped_column(ForeignKey("gpu_families.id"))
    weights: Mapped[str | None] = mapped_column(String(16))
    provenance: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    source_file: Mapped[str | None] = mapped_column(Text)
    source_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    notes: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    measurements: Mapped[list[Measurement]] = relationship(back_populates="probe_run", cascade="all, delete-orphan")
    calibrations: Mapped[list[Calibration]] = relationship(back_populates="probe_run", cascade="all, delete-orphan")


class Measurement(Base):
    """One cell of one run: (gpu family, model, stage, recipe, batch, height, width)."""

    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint(
            "probe_run_id",
            "gpu_family_id",
            "model_id",
            "stage",
            "recipe_id",
            "batch",
            "height",
            "width",
            name="uq_measurements_cell_per_run",
        ),
        ForeignKeyConstraint(["model_id", "stage"], ["model_stages.model_id", "model_stages.stage"]),
        CheckConstraint(STAGE_CHECK, name="stage_known"),
        CheckConstraint(_in("status", MEASUREMENT_STATUSES), name="status_known"),
        CheckConstraint("weights IN ('real', 'synthetic')", name="weights_known"),
        CheckConstraint("source IN ('measured', 'estimated')", name="source_known"),
        CheckConstraint("batch >= 1", name="batch_positive"),
        CheckConstraint("height > 0 AND width > 0", name="size_positive"),
        CheckConstraint("latency_ms IS NULL OR latency_ms > 0", name="latency_positive"),
        CheckConstraint("status <> 'ok' OR latency_ms IS NOT NULL", name="ok_has_latency"),
        CheckConstraint(
            "latency_p95_ms IS NULL OR latency_ms IS NULL OR latency_p95_ms >= latency_ms",
            name="p95_above_median",
        ),
        CheckConstraint("peak_mem_gib IS NULL OR peak_mem_gib >= 0", name="memory_non_negative"),
        CheckConstraint("power_w IS NULL OR power_w >= 0", name="power_non_negative"),
        Index("ix_measurements_cell", "gpu_family_id", "model_id", "stage", "recipe_id", "batch"),
        # The query filters (GET /v1/measurements?model=&stage=, what plans read) lead with model and stage.
        Index(
            "ix_measurements_model_stage", "model_id", "stage", "gpu_family_id", "recipe_id", "batch", "height", "width"
        ),
        Index("ix_measurements_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    probe_run_id: Mapped[str] = mapped_column(ForeignKey("probe_runs.id", ondelete="CASCADE"), index=True)
    gpu_family_id: Mapped[str] = mapped_column(ForeignKey("gpu_families.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    stage: Mapped[str] = mapped_column(String(32))
    recipe_id: Mapped[str] = mapped_column(ForeignKey("recipes.id"))
    batch: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    latency_spread: Mapped[float | None] = mapped_column(Float)
    windows: Mapped[int | None] = mapped_column(Integer)
    calls: Mapped[int | None] = mapped_column(Integer)
    peak_mem_gib: Mapped[float | None] = mapped_column(Float)
    power_w: Mapped[float | None] = mapped_column(Float)
    energy_j_per_image: Mapped[float | None] = mapped_column(Float)
    gpu_util: Mapped[float | None] = mapped_column(Float)
    achieved_tflops: Mapped[float | None] = mapped_column(Float)
    achieved_tbps: Mapped[float | None] = mapped_column(Float)
    tflops_per_call: Mapped[float | None] = mapped_column(Float)
    bound: Mapped[str | None] = mapped_column(String(16))
    psnr_image: Mapped[float | None] = mapped_column(Float)
    ssim_image: Mapped[float | None] = mapped_column(Float)
    psnr_latent: Mapped[float | None] = mapped_column(Float)
    quality_weights: Mapped[str | None] = mapped_column(String(16))
    weights: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    measured_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    provenance: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    quarantine_reason: Mapped[str | None] = mapped_column(Text)
    """Why the cell is held back from plans until an operator accepts it (`planner.crud.admission`)."""

    probe_run: Mapped[ProbeRun] = relationship(back_populates="measurements")


class Calibration(Base):
    """Measured ceilings of one GPU, compared with its family's catalog figures."""

    __tablename__ = "calibrations"
    __table_args__ = (
        CheckConstraint("bf16_tflops IS NULL OR bf16_tflops >= 0", name="bf16_non_negative"),
        CheckConstraint("fp8_tflops IS NULL OR fp8_tflops >= 0", name="fp8_non_negative"),
        CheckConstraint("memory_tbps IS NULL OR memory_tbps >= 0", name="memory_non_negative"),
        CheckConstraint("h2d_gbps IS NULL OR h2d_gbps >= 0", name="h2d_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    probe_run_id: Mapped[str] = mapped_column(ForeignKey("probe_runs.id", ondelete="CASCADE"), index=True)
    gpu_uuid: Mapped[str | None] = mapped_column(String(96), index=True)
    gpu_family_id: Mapped[str | None] = mapped_column(ForeignKey("gpu_families.id"))
    bf16_tflops: Mapped[float | None] = mapped_column(Float)
    fp8_tflops: Mapped[float | None] = mapped_column(Float)
    memory_tbps: Mapped[float | None] = mapped_column(Float)
    h2d_gbps: Mapped[float | None] = mapped_column(Float)
    ratios: Mapped[dict[str, float]] = mapped_column(JsonType, default=dict)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_reason: Mapped[str | None] = mapped_column(Text)
    measured_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    probe_run: Mapped[ProbeRun] = relationship(back_populates="calibrations")


class ProbeRequest(Base):
    """Work the planner queues for a host's agent: a probe sweep or a calibration."""

    __tablename__ = "probe_requests"
    __table_args__ = (
        CheckConstraint("kind IN ('probe', 'calibrate')", name="kind_known"),
        CheckConstraint(_in("state", REQUEST_STATES), name="state_known"),
    )

    id: Mapped[str] = mapped_column(UUID_LEN, primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    result_run_id: Mapped[str | None] = mapped_column(String(36))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Fleet(Base):
    __tablename__ = "fleets"
    __table_args__ = (
        CheckConstraint("energy_price_per_kwh IS NULL OR energy_price_per_kwh >= 0", name="energy_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    energy_price_per_kwh: Mapped[float | None] = mapped_column(Float)
    availability_from_hosts: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    """Opt-in: a family's available count is its GPUs on active hosts (capped by `available` when set)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    families: Mapped[list[FleetFamily]] = relationship(back_populates="fleet", cascade="all, delete-orphan")
    workloads: Mapped[list[Workload]] = relationship(back_populates="fleet", cascade="all, delete-orphan")


class FleetFamily(Base):
    """A family a fleet may use, at the fleet's price, with an optional count available."""

    __tablename__ = "fleet_families"
    __table_args__ = (
        CheckConstraint("price_per_hour > 0", name="price_positive"),
        CheckConstraint("available IS NULL OR available >= 0", name="available_non_negative"),
        CheckConstraint("memory_gib IS NULL OR memory_gib > 0", name="memory_positive"),
    )

    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True)
    gpu_family_id: Mapped[str] = mapped_column(ForeignKey("gpu_families.id"), primary_key=True)
    price_per_hour: Mapped[float] = mapped_column(Float)
    available: Mapped[int | None] = mapped_column(Integer)
    memory_gib: Mapped[float | None] = mapped_column(Float)

    fleet: Mapped[Fleet] = relationship(back_populates="families")


class Workload(Base):
    """Demand: a model (or several acceptable ones), a size, a rate, a latency objective, a quality floor."""

    __tablename__ = "workloads"
    __table_args__ = (
        UniqueConstraint("fleet_id", "name"),
        CheckConstraint("rate > 0", name="rate_positive"),
        CheckConstraint("p95_latency_s IS NULL OR p95_latency_s > 0", name="latency_positive"),
        CheckConstraint("headroom >= 0", name="headroom_non_negative"),
        CheckConstraint("steps IS NULL OR steps > 0", name="steps_positive"),
        CheckConstraint("height > 0 AND width > 0", name="size_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    models: Mapped[list[str]] = mapped_column(JsonType)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int | None] = mapped_column(Integer)
    rate: Mapped[float] = mapped_column(Float)
    p95_latency_s: Mapped[float | None] = mapped_column(Float)
    headroom: Mapped[float] = mapped_column(Float, default=0.2)
    recipes: Mapped[dict[str, list[str]]] = mapped_column(JsonType, default=dict)
    quality: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    fleet: Mapped[Fleet] = relationship(back_populates="workloads")


class Plan(Base):
    """A solver answer for a fleet. At most one plan per fleet is active (a partial unique index)."""

    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint(_in("status", PLAN_STATUSES), name="status_known"),
        CheckConstraint("total_cost_per_hour >= 0", name="cost_non_negative"),
        Index(
            "uq_plans_one_active_per_fleet",
            "fleet_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    feasible: Mapped[bool] = mapped_column(Boolean, default=True)
    total_cost_per_hour: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    inputs: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    stale_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    groups: Mapped[list[PlanGroup]] = relationship(back_populates="plan", cascade="all, delete-orphan")
    routes: Mapped[list[RoutingEntry]] = relationship(back_populates="plan", cascade="all, delete-orphan")
    events: Mapped[list[PlanEvent]] = relationship(back_populates="plan", cascade="all, delete-orphan")


class PlanGroup(Base):
    __tablename__ = "plan_groups"
    __table_args__ = (
        UniqueConstraint("plan_id", "workload_name", "group_index"),
        CheckConstraint("batch >= 1", name="batch_positive"),
        CheckConstraint("replicas >= 0", name="replicas_non_negative"),
        CheckConstraint("throughput >= 0", name="throughput_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"), index=True)
    workload_name: Mapped[str] = mapped_column(String(200))
    group_index: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    stages: Mapped[list[str]] = mapped_column(JsonType)
    gpu_family_id: Mapped[str] = mapped_column(ForeignKey("gpu_families.id"))
    recipes: Mapped[dict[str, str]] = mapped_column(JsonType)
    batch: Mapped[int] = mapped_column(Integer)
    replicas: Mapped[float] = mapped_column(Float)
    throughput: Mapped[float] = mapped_column(Float)
    utilization: Mapped[float | None] = mapped_column(Float)

    plan: Mapped[Plan] = relationship(back_populates="groups")


class RoutingEntry(Base):
    """One pool of the routing table: a queue per (workload, group, family) with its planned capacity."""

    __tablename__ = "routing_entries"
    __table_args__ = (
        UniqueConstraint("plan_id", "pool"),
        CheckConstraint("capacity >= 0", name="capacity_non_negative"),
        CheckConstraint("weight >= 0", name="weight_non_negative"),
        CheckConstraint("batch >= 1", name="batch_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"), index=True)
    pool: Mapped[str] = mapped_column(String(255))
    workload_name: Mapped[str] = mapped_column(String(200))
    group_index: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    stages: Mapped[list[str]] = mapped_column(JsonType)
    gpu_family_id: Mapped[str] = mapped_column(ForeignKey("gpu_families.id"))
    recipes: Mapped[dict[str, str]] = mapped_column(JsonType)
    batch: Mapped[int] = mapped_column(Integer)
    replicas: Mapped[float] = mapped_column(Float)
    capacity: Mapped[float] = mapped_column(Float)
    weight: Mapped[float] = mapped_column(Float)

    plan: Mapped[Plan] = relationship(back_populates="routes")


class PlanEvent(Base):
    """Something that happened to a plan: activated, superseded, marked stale by drift (with why)."""

    __tablename__ = "plan_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    plan: Mapped[Plan] = relationship(back_populates="events")


class Job(Base):
    """One generation request. The idempotency key makes a resubmission return the same job."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("state", JOB_STATES), name="state_known"),
        CheckConstraint("height > 0 AND width > 0", name="size_positive"),
        CheckConstraint("steps IS NULL OR steps > 0", name="steps_positive"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_jobs_state_pool", "state", "pool"),
    )

    id: Mapped[str] = mapped_column(UUID_LEN, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    workload_name: Mapped[str] = mapped_column(String(200), index=True)
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id", ondelete="SET NULL"))
    routing_version: Mapped[int | None] = mapped_column(Integer)
    pool: Mapped[str | None] = mapped_column(String(255))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    result_path: Mapped[str | None] = mapped_column(Text)
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    weights: Mapped[str | None] = mapped_column(String(16))
    """Which weights made the image: `real` (the model's folder) or `synthetic` (random weights: noise)."""
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class StoreMeta(Base):
    """Key-value facts about the store itself (e.g. the digest of the catalogs it was seeded from)."""

    __tablename__ = "store_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
