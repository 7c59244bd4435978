"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 20:14:30.312276
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import planner.db.base

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "fleets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("energy_price_per_kwh", sa.Float(), nullable=True),
        sa.Column("created_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "energy_price_per_kwh IS NULL OR energy_price_per_kwh >= 0", name=op.f("ck_fleets_energy_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleets")),
        sa.UniqueConstraint("name", name=op.f("uq_fleets_name")),
    )
    op.create_table(
        "gpu_families",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("vendor", sa.String(length=32), nullable=False),
        sa.Column("memory_gib", sa.Float(), nullable=False),
        sa.Column("memory_bandwidth_tbps", sa.Float(), nullable=True),
        sa.Column(
            "tflops", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("tdp_w", sa.Float(), nullable=True),
        sa.Column(
            "nvml_patterns",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("compute_capability", sa.String(length=16), nullable=True),
        sa.Column("in_catalog", sa.Boolean(), nullable=False),
        sa.Column(
            "unverified", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "sources", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("updated_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "memory_bandwidth_tbps IS NULL OR memory_bandwidth_tbps > 0",
            name=op.f("ck_gpu_families_bandwidth_positive"),
        ),
        sa.CheckConstraint("memory_gib > 0", name=op.f("ck_gpu_families_memory_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gpu_families")),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "labels", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("driver_version", sa.String(length=64), nullable=True),
        sa.Column("cuda_version", sa.String(length=64), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("torch_version", sa.String(length=64), nullable=True),
        sa.Column(
            "telemetry", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("registered_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('active', 'stale', 'lost', 'draining')", name=op.f("ck_hosts_status_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("architecture", sa.String(length=32), nullable=False),
        sa.Column("distilled_from", sa.String(length=64), nullable=True),
        sa.Column("default_steps", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("guidance_scale", sa.Float(), nullable=False),
        sa.Column("cfg", sa.Boolean(), nullable=False),
        sa.Column("text_tokens", sa.Integer(), nullable=False),
        sa.Column("in_catalog", sa.Boolean(), nullable=False),
        sa.CheckConstraint("default_steps > 0", name=op.f("ck_models_steps_positive")),
        sa.CheckConstraint("guidance_scale >= 0", name=op.f("ck_models_guidance_non_negative")),
        sa.CheckConstraint("height > 0 AND width > 0", name=op.f("ck_models_size_positive")),
        sa.ForeignKeyConstraint(["distilled_from"], ["models.id"], name=op.f("fk_models_distilled_from_models")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
    )
    op.create_table(
        "recipes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "stages", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "options", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("in_catalog", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipes")),
    )
    op.create_table(
        "store_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_store_meta")),
    )
    op.create_table(
        "fleet_families",
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("gpu_family_id", sa.String(length=64), nullable=False),
        sa.Column("price_per_hour", sa.Float(), nullable=False),
        sa.Column("available", sa.Integer(), nullable=True),
        sa.Column("memory_gib", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "available IS NULL OR available >= 0", name=op.f("ck_fleet_families_available_non_negative")
        ),
        sa.CheckConstraint("memory_gib IS NULL OR memory_gib > 0", name=op.f("ck_fleet_families_memory_positive")),
        sa.CheckConstraint("price_per_hour > 0", name=op.f("ck_fleet_families_price_positive")),
        sa.ForeignKeyConstraint(
            ["fleet_id"], ["fleets.id"], name=op.f("fk_fleet_families_fleet_id_fleets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["gpu_family_id"], ["gpu_families.id"], name=op.f("fk_fleet_families_gpu_family_id_gpu_families")
        ),
        sa.PrimaryKeyConstraint("fleet_id", "gpu_family_id", name=op.f("pk_fleet_families")),
    )
    op.create_table(
        "gpu_prices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("gpu_family_id", sa.String(length=64), nullable=False),
        sa.Column("price_per_hour", sa.Float(), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=False),
        sa.Column("offering", sa.String(length=100), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("as_of", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_override", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("created_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("price_per_hour > 0", name=op.f("ck_gpu_prices_price_positive")),
        sa.ForeignKeyConstraint(
            ["gpu_family_id"],
            ["gpu_families.id"],
            name=op.f("fk_gpu_prices_gpu_family_id_gpu_families"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gpu_prices")),
        sa.UniqueConstraint(
            "gpu_family_id",
            "provider",
            "offering",
            "as_of",
            name=op.f("uq_gpu_prices_gpu_family_id_provider_offering_as_of"),
        ),
    )
    with op.batch_alter_table("gpu_prices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gpu_prices_gpu_family_id"), ["gpu_family_id"], unique=False)

    op.create_table(
        "gpus",
        sa.Column("uuid", sa.String(length=96), nullable=False),
        sa.Column("host_id", sa.String(length=36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("product_name", sa.String(length=255), nullable=False),
        sa.Column("gpu_family_id", sa.String(length=64), nullable=True),
        sa.Column("memory_gib", sa.Float(), nullable=True),
        sa.Column("compute_capability", sa.String(length=16), nullable=True),
        sa.Column("mig_mode", sa.Boolean(), nullable=False),
        sa.Column("power_limit_w", sa.Float(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("flag_reason", sa.Text(), nullable=True),
        sa.Column(
            "telemetry", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("last_seen_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint('"index" >= 0', name=op.f("ck_gpus_index_non_negative")),
        sa.CheckConstraint("memory_gib IS NULL OR memory_gib > 0", name=op.f("ck_gpus_memory_positive")),
        sa.ForeignKeyConstraint(
            ["gpu_family_id"], ["gpu_families.id"], name=op.f("fk_gpus_gpu_family_id_gpu_families")
        ),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_gpus_host_id_hosts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_gpus")),
        sa.UniqueConstraint("host_id", "index", name=op.f("uq_gpus_host_id_index")),
    )
    with op.batch_alter_table("gpus", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gpus_host_id"), ["host_id"], unique=False)

    op.create_table(
        "model_stages",
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column(
            "components", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("tflops_per_call", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "stage IN ('text_encoder', 'denoiser', 'vae_decoder')", name=op.f("ck_model_stages_stage_known")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_stages_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", "stage", name=op.f("pk_model_stages")),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("feasible", sa.Boolean(), nullable=False),
        sa.Column("total_cost_per_hour", sa.Float(), nullable=False),
        sa.Column(
            "result", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "inputs", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("stale_reason", sa.Text(), nullable=True),
        sa.Column("created_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("activated_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('draft', 'active', 'stale', 'superseded')", name=op.f("ck_plans_status_known")),
        sa.CheckConstraint("total_cost_per_hour >= 0", name=op.f("ck_plans_cost_non_negative")),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], name=op.f("fk_plans_fleet_id_fleets"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
    )
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plans_fleet_id"), ["fleet_id"], unique=False)
        batch_op.create_index(
            "uq_plans_one_active_per_fleet",
            ["fleet_id"],
            unique=True,
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )

    op.create_table(
        "probe_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("host_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column(
            "spec", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("result_run_id", sa.String(length=36), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('probe', 'calibrate')", name=op.f("ck_probe_requests_kind_known")),
        sa.CheckConstraint(
            "state IN ('queued', 'claimed', 'done', 'failed')", name=op.f("ck_probe_requests_state_known")
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_probe_requests_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_probe_requests")),
    )
    with op.batch_alter_table("probe_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_probe_requests_host_id"), ["host_id"], unique=False)

    op.create_table(
        "probe_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host_id", sa.String(length=36), nullable=True),
        sa.Column("gpu_uuid", sa.String(length=96), nullable=True),
        sa.Column("gpu_family_id", sa.String(length=64), nullable=True),
        sa.Column("weights", sa.String(length=16), nullable=True),
        sa.Column(
            "provenance", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("source_file", sa.Text(), nullable=True),
        sa.Column("source_sha256", sa.String(length=64), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("started_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("created_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('probe', 'calibration', 'import')", name=op.f("ck_probe_runs_kind_known")),
        sa.ForeignKeyConstraint(
            ["gpu_family_id"], ["gpu_families.id"], name=op.f("fk_probe_runs_gpu_family_id_gpu_families")
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_probe_runs_host_id_hosts"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_probe_runs")),
    )
    with op.batch_alter_table("probe_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_probe_runs_host_id"), ["host_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_probe_runs_source_sha256"), ["source_sha256"], unique=False)

    op.create_table(
        "workloads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "models", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("p95_latency_s", sa.Float(), nullable=True),
        sa.Column("headroom", sa.Float(), nullable=False),
        sa.Column(
            "recipes", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "quality", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("created_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("headroom >= 0", name=op.f("ck_workloads_headroom_non_negative")),
        sa.CheckConstraint("height > 0 AND width > 0", name=op.f("ck_workloads_size_positive")),
        sa.CheckConstraint("p95_latency_s IS NULL OR p95_latency_s > 0", name=op.f("ck_workloads_latency_positive")),
        sa.CheckConstraint("rate > 0", name=op.f("ck_workloads_rate_positive")),
        sa.CheckConstraint("steps IS NULL OR steps > 0", name=op.f("ck_workloads_steps_positive")),
        sa.ForeignKeyConstraint(
            ["fleet_id"], ["fleets.id"], name=op.f("fk_workloads_fleet_id_fleets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workloads")),
        sa.UniqueConstraint("fleet_id", "name", name=op.f("uq_workloads_fleet_id_name")),
    )
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workloads_fleet_id"), ["fleet_id"], unique=False)

    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("probe_run_id", sa.String(length=36), nullable=False),
        sa.Column("gpu_uuid", sa.String(length=96), nullable=True),
        sa.Column("gpu_family_id", sa.String(length=64), nullable=True),
        sa.Column("bf16_tflops", sa.Float(), nullable=True),
        sa.Column("fp8_tflops", sa.Float(), nullable=True),
        sa.Column("memory_tbps", sa.Float(), nullable=True),
        sa.Column("h2d_gbps", sa.Float(), nullable=True),
        sa.Column(
            "ratios", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("flag_reason", sa.Text(), nullable=True),
        sa.Column("measured_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("bf16_tflops IS NULL OR bf16_tflops >= 0", name=op.f("ck_calibrations_bf16_non_negative")),
        sa.CheckConstraint("fp8_tflops IS NULL OR fp8_tflops >= 0", name=op.f("ck_calibrations_fp8_non_negative")),
        sa.CheckConstraint("h2d_gbps IS NULL OR h2d_gbps >= 0", name=op.f("ck_calibrations_h2d_non_negative")),
        sa.CheckConstraint("memory_tbps IS NULL OR memory_tbps >= 0", name=op.f("ck_calibrations_memory_non_negative")),
        sa.ForeignKeyConstraint(
            ["gpu_family_id"], ["gpu_families.id"], name=op.f("fk_calibrations_gpu_family_id_gpu_families")
        ),
        sa.ForeignKeyConstraint(
            ["probe_run_id"],
            ["probe_runs.id"],
            name=op.f("fk_calibrations_probe_run_id_probe_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calibrations")),
    )
    with op.batch_alter_table("calibrations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_calibrations_gpu_uuid"), ["gpu_uuid"], unique=False)
        batch_op.create_index(batch_op.f("ix_calibrations_probe_run_id"), ["probe_run_id"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("workload_name", sa.String(length=200), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=True),
        sa.Column("routing_version", sa.Integer(), nullable=True),
        sa.Column("pool", sa.String(length=255), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("result_path", sa.Text(), nullable=True),
        sa.Column("result_sha256", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("started_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed', 'dead')", name=op.f("ck_jobs_state_known")
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_non_negative")),
        sa.CheckConstraint("height > 0 AND width > 0", name=op.f("ck_jobs_size_positive")),
        sa.CheckConstraint("steps IS NULL OR steps > 0", name=op.f("ck_jobs_steps_positive")),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_jobs_plan_id_plans"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_state_pool", ["state", "pool"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_workload_name"), ["workload_name"], unique=False)

    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("probe_run_id", sa.String(length=36), nullable=False),
        sa.Column("gpu_family_id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("recipe_id", sa.String(length=64), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("latency_p95_ms", sa.Float(), nullable=True),
        sa.Column("latency_spread", sa.Float(), nullable=True),
        sa.Column("windows", sa.Integer(), nullable=True),
        sa.Column("calls", sa.Integer(), nullable=True),
        sa.Column("peak_mem_gib", sa.Float(), nullable=True),
        sa.Column("power_w", sa.Float(), nullable=True),
        sa.Column("energy_j_per_image", sa.Float(), nullable=True),
        sa.Column("gpu_util", sa.Float(), nullable=True),
        sa.Column("achieved_tflops", sa.Float(), nullable=True),
        sa.Column("achieved_tbps", sa.Float(), nullable=True),
        sa.Column("tflops_per_call", sa.Float(), nullable=True),
        sa.Column("bound", sa.String(length=16), nullable=True),
        sa.Column("psnr_image", sa.Float(), nullable=True),
        sa.Column("ssim_image", sa.Float(), nullable=True),
        sa.Column("psnr_latent", sa.Float(), nullable=True),
        sa.Column("quality_weights", sa.String(length=16), nullable=True),
        sa.Column("weights", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("measured_at", planner.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column(
            "provenance", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.CheckConstraint("source IN ('measured', 'estimated')", name=op.f("ck_measurements_source_known")),
        sa.CheckConstraint(
            "stage IN ('text_encoder', 'denoiser', 'vae_decoder')", name=op.f("ck_measurements_stage_known")
        ),
        sa.CheckConstraint("status <> 'ok' OR latency_ms IS NOT NULL", name=op.f("ck_measurements_ok_has_latency")),
        sa.CheckConstraint(
            "status IN ('ok', 'oom', 'failed', 'unsupported')", name=op.f("ck_measurements_status_known")
        ),
        sa.CheckConstraint("weights IN ('real', 'synthetic')", name=op.f("ck_measurements_weights_known")),
        sa.CheckConstraint("batch >= 1", name=op.f("ck_measurements_batch_positive")),
        sa.CheckConstraint("height > 0 AND width > 0", name=op.f("ck_measurements_size_positive")),
        sa.CheckConstraint("latency_ms IS NULL OR latency_ms > 0", name=op.f("ck_measurements_latency_positive")),
        sa.CheckConstraint(
            "latency_p95_ms IS NULL OR latency_ms IS NULL OR latency_p95_ms >= latency_ms",
            name=op.f("ck_measurements_p95_above_median"),
        ),
        sa.CheckConstraint(
            "peak_mem_gib IS NULL OR peak_mem_gib >= 0", name=op.f("ck_measurements_memory_non_negative")
        ),
        sa.CheckConstraint("power_w IS NULL OR power_w >= 0", name=op.f("ck_measurements_power_non_negative")),
        sa.ForeignKeyConstraint(
            ["gpu_family_id"], ["gpu_families.id"], name=op.f("fk_measurements_gpu_family_id_gpu_families")
        ),
        sa.ForeignKeyConstraint(
            ["model_id", "stage"],
            ["model_stages.model_id", "model_stages.stage"],
            name=op.f("fk_measurements_model_id_model_stages"),
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_measurements_model_id_models")),
        sa.ForeignKeyConstraint(
            ["probe_run_id"],
            ["probe_runs.id"],
            name=op.f("fk_measurements_probe_run_id_probe_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["recipe_id"], ["recipes.id"], name=op.f("fk_measurements_recipe_id_recipes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_measurements")),
        sa.UniqueConstraint(
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
    )
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.create_index(
            "ix_measurements_cell", ["gpu_family_id", "model_id", "stage", "recipe_id", "batch"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_measurements_probe_run_id"), ["probe_run_id"], unique=False)

    op.create_table(
        "plan_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "data", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("created_at", planner.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_plan_events_plan_id_plans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_events")),
    )
    with op.batch_alter_table("plan_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_events_plan_id"), ["plan_id"], unique=False)

    op.create_table(
        "plan_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("workload_name", sa.String(length=200), nullable=False),
        sa.Column("group_index", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column(
            "stages", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("gpu_family_id", sa.String(length=64), nullable=False),
        sa.Column(
            "recipes", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("replicas", sa.Float(), nullable=False),
        sa.Column("throughput", sa.Float(), nullable=False),
        sa.Column("utilization", sa.Float(), nullable=True),
        sa.CheckConstraint("batch >= 1", name=op.f("ck_plan_groups_batch_positive")),
        sa.CheckConstraint("replicas >= 0", name=op.f("ck_plan_groups_replicas_non_negative")),
        sa.CheckConstraint("throughput >= 0", name=op.f("ck_plan_groups_throughput_non_negative")),
        sa.ForeignKeyConstraint(
            ["gpu_family_id"], ["gpu_families.id"], name=op.f("fk_plan_groups_gpu_family_id_gpu_families")
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_plan_groups_model_id_models")),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_plan_groups_plan_id_plans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_groups")),
        sa.UniqueConstraint(
            "plan_id", "workload_name", "group_index", name=op.f("uq_plan_groups_plan_id_workload_name_group_index")
        ),
    )
    with op.batch_alter_table("plan_groups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_groups_plan_id"), ["plan_id"], unique=False)

    op.create_table(
        "routing_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("pool", sa.String(length=255), nullable=False),
        sa.Column("workload_name", sa.String(length=200), nullable=False),
        sa.Column("group_index", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column(
            "stages", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("gpu_family_id", sa.String(length=64), nullable=False),
        sa.Column(
            "recipes", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("replicas", sa.Float(), nullable=False),
        sa.Column("capacity", sa.Float(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.CheckConstraint("batch >= 1", name=op.f("ck_routing_entries_batch_positive")),
        sa.CheckConstraint("capacity >= 0", name=op.f("ck_routing_entries_capacity_non_negative")),
        sa.CheckConstraint("weight >= 0", name=op.f("ck_routing_entries_weight_non_negative")),
        sa.ForeignKeyConstraint(
            ["gpu_family_id"], ["gpu_families.id"], name=op.f("fk_routing_entries_gpu_family_id_gpu_families")
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_routing_entries_model_id_models")),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_routing_entries_plan_id_plans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_entries")),
        sa.UniqueConstraint("plan_id", "pool", name=op.f("uq_routing_entries_plan_id_pool")),
    )
    with op.batch_alter_table("routing_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routing_entries_plan_id"), ["plan_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("routing_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routing_entries_plan_id"))

    op.drop_table("routing_entries")
    with op.batch_alter_table("plan_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_groups_plan_id"))

    op.drop_table("plan_groups")
    with op.batch_alter_table("plan_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_events_plan_id"))

    op.drop_table("plan_events")
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_measurements_probe_run_id"))
        batch_op.drop_index("ix_measurements_cell")

    op.drop_table("measurements")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_workload_name"))
        batch_op.drop_index("ix_jobs_state_pool")

    op.drop_table("jobs")
    with op.batch_alter_table("calibrations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calibrations_probe_run_id"))
        batch_op.drop_index(batch_op.f("ix_calibrations_gpu_uuid"))

    op.drop_table("calibrations")
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workloads_fleet_id"))

    op.drop_table("workloads")
    with op.batch_alter_table("probe_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_probe_runs_source_sha256"))
        batch_op.drop_index(batch_op.f("ix_probe_runs_host_id"))

    op.drop_table("probe_runs")
    with op.batch_alter_table("probe_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_probe_requests_host_id"))

    op.drop_table("probe_requests")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_plans_one_active_per_fleet",
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )
        batch_op.drop_index(batch_op.f("ix_plans_fleet_id"))

    op.drop_table("plans")
    op.drop_table("model_stages")
    with op.batch_alter_table("gpus", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gpus_host_id"))

    op.drop_table("gpus")
    with op.batch_alter_table("gpu_prices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gpu_prices_gpu_family_id"))

    op.drop_table("gpu_prices")
    op.drop_table("fleet_families")
    op.drop_table("store_meta")
    op.drop_table("recipes")
    op.drop_table("models")
    op.drop_table("hosts")
    op.drop_table("gpu_families")
    op.drop_table("fleets")
