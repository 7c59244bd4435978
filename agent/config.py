"""The agent's settings, declared once: every default lives here, read from `AGENT_*` variables.

A fleet installs the same agent everywhere and configures it by environment (a DaemonSet, a systemd unit), so
every knob is a field here rather than a constant in the module that uses it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from platformdirs import user_data_dir
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

APP_NAME = "gpu-fleet-agent"


def default_state_dir() -> Path:
    """Where the agent keeps its token, spool and probe state: /var/lib for root (a daemon), else the user's."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib") / APP_NAME
    return Path(user_data_dir(APP_NAME, appauthor=False))


class AgentSettings(BaseSettings):
    """Agent settings. Environment variables: `AGENT_<FIELD>` (e.g. `AGENT_PLANNER_URL`)."""

    model_config = SettingsConfigDict(env_prefix="AGENT_", env_file=".env", extra="ignore")

    planner_url: str = Field(default="http://127.0.0.1:8000", description="base URL of the planner service")
    enrollment_token: SecretStr | None = Field(
        default=None, description="the planner's enrollment (or admin) token, used once to register this host"
    )
    state_dir: Path = Field(default_factory=default_state_dir)
    token_file: Path | None = Field(default=None, description="host token file (mode 0600); default state_dir/token")
    spool_dir: Path | None = Field(default=None, description="results waiting for the planner; default state_dir/spool")
    host_name: str = Field(default_factory=socket.gethostname)
    labels: dict[str, str] = Field(default_factory=dict, description="free labels sent at registration (JSON)")
    node_name: str | None = Field(
        default=None,
        description="the Kubernetes node this agent runs on (downward API `spec.nodeName`): its GPU Feature "
        "Discovery labels are read through the Kubernetes API and sent at registration",
    )
    node_label_prefixes: list[str] = Field(
        default_factory=lambda: ["nvidia.com/"],
        description="which node labels are sent (JSON list of key prefixes); AGENT_LABELS win over them",
    )
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    poll_interval_s: float = Field(default=30.0, gt=0, description="how often the daemon asks for queued requests")
    flush_interval_s: float = Field(default=30.0, gt=0, description="how often the daemon resends spooled runs")
    request_timeout_s: float = Field(default=10.0, gt=0)
    retry_attempts: int = Field(default=4, ge=1, description="attempts per request before a result stays spooled")
    retry_max_wait_s: float = Field(default=8.0, gt=0)
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve the daemon's Prometheus metrics (agent_*) on this port"
    )
    calibration_flag_ratio: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="a ceiling measured below this fraction of the family's catalog figure flags the GPU",
    )

    @property
    def resolved_token_file(self) -> Path:
        return self.token_file or self.state_dir / "token"

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir or self.state_dir / "spool"


def get_settings() -> AgentSettings:
    """The process's settings, read from the environment (not cached: tests change the environment)."""
    return AgentSettings()
