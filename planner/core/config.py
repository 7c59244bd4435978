"""The planner's settings, declared once: every default lives here, read from `PLANNER_*` variables.

Outside development the settings refuse unsafe defaults (an admin token left at its placeholder), the way
FastAPI's full-stack template does: a fleet's planner must not start with a guessable credential.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from planner.core import solver_defaults
from planner.core.errors import ConfigError

DEFAULT_ADMIN_TOKEN = "change-me"
MIN_TOKEN_LENGTH = 16
APP_NAME = "gpu-fleet-planner"


def default_data_dir() -> Path:
    """The user's data directory for the embedded store (e.g. ~/.local/share/gpu-fleet-planner)."""
    return Path(user_data_dir(APP_NAME, appauthor=False))


def default_database_url() -> str:
    return f"sqlite:///{default_data_dir() / 'planner.db'}"


class Settings(BaseSettings):
    """Planner settings. Environment variables: `PLANNER_<FIELD>` (e.g. `PLANNER_DATABASE_URL`)."""

    model_config = SettingsConfigDict(env_prefix="PLANNER_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = Field(
        default_factory=default_database_url,
        description="SQLAlchemy URL: sqlite:///path (embedded, default) or postgresql+psycopg://... (a fleet)",
    )
    admin_token: SecretStr = SecretStr(DEFAULT_ADMIN_TOKEN)
    enrollment_token: SecretStr | None = Field(
        default=None,
        description="optional secret that can only register hosts (POST /v1/hosts), e.g. for agent DaemonSets",
    )
    submitter_token: SecretStr | None = Field(
        default=None,
        description="optional secret that can only submit jobs and read them (POST/GET /v1/jobs), for the services "
        "that generate images; not the admin token",
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes of `planner serve`")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    db_pool_pre_ping: bool = Field(
        default=False,
        description="the service pings a pooled connection before each use (a round trip per request); off: a "
        "connection a database restart dropped fails one request, then the pool reconnects all of them",
    )
    seed_reference_data: bool = Field(
        default=True, description="seed catalogs and the shipped reference measurements into an empty store"
    )
    heartbeat_stale_s: float = Field(default=60.0, gt=0, description="no heartbeat this long: host is stale")
    heartbeat_lost_s: float = Field(default=300.0, gt=0, description="no heartbeat this long: host is lost")
    heartbeat_sweep_s: float = Field(
        default=15.0, ge=0, description="how often the service writes hosts' computed status to the store; 0: never"
    )
    memory_reserve_gib: float = Field(
        default=solver_defaults.MEMORY_RESERVE_GIB,
        ge=0,
        description="GPU memory a plan leaves free (CUDA context, allocator fragmentation)",
    )
    max_page_size: int = Field(default=1000, ge=1)
    dev_mode: bool = Field(
        default=False,
        description="`planner serve` may run with the placeholder admin token on 127.0.0.1 (a laptop); off, "
        "serve refuses to start until PLANNER_ADMIN_TOKEN is set",
    )
    measurement_outlier_ratio: float = Field(
        default=1.5, gt=1, description="a cell this many times faster or slower than other sources' median is held back"
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="largest request body (413 above it)")
    max_probe_run_bytes: int = Field(
        default=16 << 20, ge=1024, description="largest POST /v1/probe-runs body (10,000 cells fit in ~7 MB)"
    )
    enrollment_per_minute: int = Field(
        default=30, ge=0, description="hosts the enrollment token may register per minute, fleet-wide; 0: no limit"
    )
    host_approval: bool = Field(
        default=False,
        description="a host registered with the enrollment token counts toward availability only after an "
        "operator approves it (POST /v1/hosts/{id}/approve)",
    )
    db_connect_timeout_s: float = Field(default=5.0, gt=0, description="PostgreSQL connect timeout")
    db_statement_timeout_s: float = Field(default=30.0, gt=0, description="PostgreSQL statement timeout")
    db_pool_timeout_s: float = Field(default=5.0, gt=0, description="wait for a pooled connection at most this long")
    probe_request_lease_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="a claimed probe request not completed within this long returns to the queue",
    )

    @field_validator("submitter_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`PLANNER_SUBMITTER_TOKEN=` left empty in an env file: no submitter token (jobs need the admin's)."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        admin = self.admin_token.get_secret_value()
        enrollment = self.enrollment_token.get_secret_value() if self.enrollment_token is not None else None
        submitter = self.submitter_token.get_secret_value() if self.submitter_token is not None else None
        if self.environment != "development":
            if admin == DEFAULT_ADMIN_TOKEN:
                raise ConfigError(
                    f"PLANNER_ADMIN_TOKEN is left at its default while PLANNER_ENVIRONMENT={self.environment}; "
                    "set PLANNER_ADMIN_TOKEN to a long random secret (e.g. `openssl rand -hex 32`)."
                )
            named = (
                ("PLANNER_ADMIN_TOKEN", admin),
                ("PLANNER_ENROLLMENT_TOKEN", enrollment),
                ("PLANNER_SUBMITTER_TOKEN", submitter),
            )
            for name, value in named:
                if value is not None and len(value) < MIN_TOKEN_LENGTH:
                    raise ConfigError(
                        f"{name} is shorter than {MIN_TOKEN_LENGTH} characters while "
                        f"PLANNER_ENVIRONMENT={self.environment}; use a long random secret (`openssl rand -hex 32`)."
                    )
        if enrollment is not None and (enrollment == admin or not enrollment):
            raise ConfigError(
                "PLANNER_ENROLLMENT_TOKEN is empty or equal to PLANNER_ADMIN_TOKEN; it can only register hosts, so "
                "it must be a different secret (or unset it)."
            )
        if submitter is not None and (not submitter or submitter in (admin, enrollment)):
            raise ConfigError(
                "PLANNER_SUBMITTER_TOKEN is empty or equal to another token; it can only submit jobs, so it must be "
                "a secret of its own (or unset it)."
            )
        if self.heartbeat_lost_s <= self.heartbeat_stale_s:
            raise ConfigError(
                "PLANNER_HEARTBEAT_LOST_S must be longer than PLANNER_HEARTBEAT_STALE_S; raise the former."
            )
        return self

    def check_serving(self) -> None:
        """Refuse to serve the API with the placeholder admin token, unless in explicit dev mode on loopback.

        `PLANNER_DEV_MODE=true` (or `planner serve --dev`) keeps the placeholder for a laptop, on 127.0.0.1 only:
        anywhere else (the container image listens on 0.0.0.0) the placeholder would let anyone who can reach
        the port administer the fleet, and a token nobody set is a token nobody rotates.
        """
        if self.admin_token.get_secret_value() != DEFAULT_ADMIN_TOKEN:
            return
        if not self.dev_mode:
            raise ConfigError(
                "PLANNER_ADMIN_TOKEN is not set; `planner serve` needs it (a long random secret, e.g. "
                "`export PLANNER_ADMIN_TOKEN=$(openssl rand -hex 32)`). For a laptop only, `planner serve --dev` "
                f"(PLANNER_DEV_MODE=true) serves on 127.0.0.1 with the development token {DEFAULT_ADMIN_TOKEN!r}."
            )
        if not _is_loopback(self.api_host):
            raise ConfigError(
                f"PLANNER_ADMIN_TOKEN is left at its default while the API listens on {self.api_host}, beyond this "
                "machine; dev mode serves on 127.0.0.1 only. Set PLANNER_ADMIN_TOKEN to a long random secret "
                "(e.g. `openssl rand -hex 32`), or listen on 127.0.0.1 (PLANNER_API_HOST or --host)."
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
