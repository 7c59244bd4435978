"""deploy/systemd: the agent, worker and planner units run real commands as a non-root user, with settings that
load; the GPU units' hardening leaves the GPUs' device nodes reachable (NVML, CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.core.errors import ConfigError
from tests.deploy.project import (
    SYSTEMD_DIR,
    agent_settings,
    check_invocation,
    env_file,
    env_names_in,
    invocations_in_shell,
    planner_settings,
    read_unit,
    scheduler_settings,
    unknown_env_names,
)

UNITS = sorted(SYSTEMD_DIR.glob("*.service"))
GPU_UNITS = [u for u in UNITS if "planner" not in u.name]
# Options that hide /dev/nvidia* or forbid what CUDA does: PrivateDevices and a device allow-list (ProtectClock
# adds one for the RTC) hide the GPUs; MemoryDenyWriteExecute breaks CUDA's and torch.compile's generated code.
BREAKS_NVML = ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "MemoryDenyWriteExecute")


def test_there_is_an_agent_unit_a_worker_unit_and_a_planner_unit() -> None:
    assert [u.name for u in UNITS] == [
        "gpu-fleet-agent.service",
        "gpu-fleet-planner.service",
        "gpu-fleet-worker@.service",
    ]


@pytest.mark.parametrize("path", GPU_UNITS, ids=lambda p: p.name)
def test_unit_runs_a_real_command_as_a_service_user_and_restarts(path: Path) -> None:
    unit = read_unit(path)
    [start] = unit.get("Service", "ExecStart")
    [inv] = invocations_in_shell(start.replace("%i", "sdxl-prod.0.h100-sxm-80gb"), path.name)
    assert check_invocation(inv) == []
    assert inv.args[:1] == (("run",) if "agent" in path.name else ("worker",))
    assert unit.get("Service", "User") == ["gpu-fleet"]
    assert unit.get("Service", "Restart") == ["on-failure"]
    assert unit.get("Service", "EnvironmentFile"), "settings come from an EnvironmentFile"
    assert unit.get("Service", "SupplementaryGroups") == ["video"]  # where the site gives the GPUs to a group
    assert unit.get("Service", "NoNewPrivileges") == ["yes"]
    assert unit.get("Service", "ProtectSystem") == ["strict"]
    for option in BREAKS_NVML:
        assert not unit.get("Service", option), f"{path.name}: {option}= would break NVML or CUDA"
    assert unit.get("Install", "WantedBy") == ["multi-user.target"]


def test_settings_named_in_units_and_environment_files_are_fields_and_load() -> None:
    for path in SYSTEMD_DIR.iterdir():
        assert unknown_env_names(env_names_in(path.read_text())) == [], path
    agent_unit = read_unit(SYSTEMD_DIR / "gpu-fleet-agent.service")
    inline = dict(e.split("=", 1) for e in agent_unit.get("Service", "Environment"))
    agent = {**env_file(SYSTEMD_DIR / "agent.env.example"), **inline, "AGENT_ENROLLMENT_TOKEN": "x" * 32}
    settings = agent_settings(agent)
    # The state directory systemd creates (StateDirectory=, owned by the user, 0700) is the agent's.
    assert str(settings.state_dir) == "/var/lib/" + agent_unit.get("Service", "StateDirectory")[0]
    assert agent_unit.get("Service", "StateDirectoryMode") == ["0700"]
    worker_unit = read_unit(SYSTEMD_DIR / "gpu-fleet-worker@.service")
    worker = {**env_file(SYSTEMD_DIR / "worker.env.example"), **env_file(SYSTEMD_DIR / "worker-pool.env.example")}
    worker["SCHEDULER_HOST_ID"] = "42"
    scheduler = scheduler_settings(worker)
    # Under ProtectSystem=strict the results folder must be listed as writable.
    assert str(scheduler.results_dir) in worker_unit.get("Service", "ReadWritePaths")
    assert worker_unit.get("Service", "EnvironmentFile") == [
        "/etc/gpu-fleet/worker.env",
        "-/etc/gpu-fleet/worker-%i.env",
    ]


def test_the_planner_unit_migrates_before_it_serves() -> None:
    unit = read_unit(SYSTEMD_DIR / "gpu-fleet-planner.service")
    [pre] = unit.get("Service", "ExecStartPre")
    [start] = unit.get("Service", "ExecStart")
    [migrate] = invocations_in_shell(pre, "ExecStartPre")
    [serve] = invocations_in_shell(start, "ExecStart")
    assert migrate.args == ("db", "upgrade")
    assert serve.args == ("serve",)
    assert check_invocation(migrate) == check_invocation(serve) == []
    assert unit.get("Service", "User") == ["gpu-fleet"]
    env = {
        **env_file(SYSTEMD_DIR / "planner.env.example"),
        "PLANNER_ADMIN_TOKEN": "a" * 32,
        "PLANNER_ENROLLMENT_TOKEN": "e" * 32,
    }
    planner = planner_settings(env)
    assert planner.environment == "production"
    assert planner.api_host == "0.0.0.0"
    with pytest.raises(ConfigError, match="PLANNER_ADMIN_TOKEN"):  # the example alone does not start a planner
        planner_settings(env_file(SYSTEMD_DIR / "planner.env.example"))
    assert str(scheduler_settings(env).results_dir) in unit.get("Service", "ReadWritePaths")


def test_redis_urls_carry_a_password_and_a_refused_token_is_not_restarted() -> None:
    from agent.daemon import EXIT_TOKEN_REFUSED

    systemd = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
    for name in ("planner.env.example", "worker.env.example"):
        for line in (systemd / name).read_text().splitlines():
            if line.startswith(("SCHEDULER_BROKER_URL=", "SCHEDULER_RESULT_BACKEND=")):
                assert ":REDIS_PASSWORD@" in line, (name, line)
    unit = (systemd / "gpu-fleet-agent.service").read_text()
    assert f"RestartPreventExitStatus={EXIT_TOKEN_REFUSED}" in unit
