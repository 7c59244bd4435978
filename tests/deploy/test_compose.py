"""deploy/compose: the compose file and the two Dockerfiles, checked against the project.

Commands and options are real (the typer apps' click trees), environment variables are Settings fields and their
values load, ports agree with the serve and metrics settings, health checks hit routes the app has, build contexts,
Dockerfiles and COPY sources exist, and the trial's fleet, workload and plan are accepted by the API and route to
the pool the CPU worker serves.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from planner.api.main import create_app
from planner.core.config import Settings
from tests.deploy.conftest import Routes
from tests.deploy.project import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    REPO,
    agent_settings,
    check_invocation,
    compose,
    compose_raw,
    env_file,
    env_names_in,
    healthcheck_argv,
    interpolate,
    interpolation_names,
    invocations_in_argv,
    load_settings,
    planner_settings,
    scheduler_settings,
    service_argv,
    service_environment,
    unknown_env_names,
    urls_in,
)

SECRETS = {
    "POSTGRES_PASSWORD": "0123456789abcdef0123456789abcdef",
    "REDIS_PASSWORD": "fedcba9876543210fedcba9876543210",
    "PLANNER_SUBMITTER_TOKEN": "compose-submitter-token-0123456789abcdef",
    "PLANNER_ADMIN_TOKEN": "compose-admin-token-0123456789abcdef",
    "PLANNER_ENROLLMENT_TOKEN": "compose-enrollment-token-0123456789abcdef",
}
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"


def variables() -> dict[str, str]:
    """.env as a user fills it in: the example's values, the secrets set."""
    return {**env_file(ENV_EXAMPLE), **SECRETS}


def services() -> dict[str, Any]:
    result: dict[str, Any] = compose(variables())["services"]
    return result


def test_the_compose_file_has_the_trial_services_with_health_checks_and_volumes() -> None:
    svc = services()
    assert {"postgres", "redis", "planner", "worker"} <= set(svc)
    assert healthcheck_argv(svc["postgres"])[-1].startswith("pg_isready")
    assert healthcheck_argv(svc["redis"]) == ["redis-cli", "ping"]
    named = set(compose_raw()["volumes"])
    for name, service in svc.items():
        assert service.get("healthcheck") or name == "agent", f"{name} has no health check"
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            assert source in named, f"{name}: volume {source} is not declared"
    # The planner waits for a healthy store and broker, the worker for a healthy planner.
    assert svc["planner"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert svc["worker"]["depends_on"]["planner"] == {"condition": "service_healthy"}


def test_redis_requires_its_password_and_every_service_has_limits() -> None:
    svc = services()
    redis = svc["redis"]
    assert "--requirepass" in " ".join(redis["command"])
    assert service_environment(redis)["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    for name, service in svc.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory"), f"{name} has no memory limit"
        assert limits.get("cpus"), f"{name} has no CPU limit"


def test_the_planner_migrates_then_serves() -> None:
    argv = service_argv(services()["planner"])
    invocations = invocations_in_argv(argv, "planner")
    assert [inv.args[:2] for inv in invocations] == [("db", "upgrade"), ("serve",)]
    assert "&&" in argv[-1]
    assert "exec planner serve" in argv[-1]


def test_every_command_and_option_is_real() -> None:
    problems: list[str] = []
    seen = 0
    for name, service in services().items():
        for argv in (service_argv(service), healthcheck_argv(service)):
            for inv in invocations_in_argv(argv, f"compose {name}"):
                seen += 1
                problems += check_invocation(inv)
    assert seen >= 4
    assert problems == []


def test_every_variable_is_a_settings_field_and_every_service_environment_loads() -> None:
    text = COMPOSE_FILE.read_text() + ENV_EXAMPLE.read_text()
    assert unknown_env_names(env_names_in(text)) == []
    for service in services().values():
        load_settings(service_environment(service))  # a bad value or an unsafe combination raises, naming it
    assert planner_settings(service_environment(services()["planner"])).environment == "production"


def test_interpolation_variables_are_documented_and_secrets_are_required() -> None:
    raw = COMPOSE_FILE.read_text()
    assert interpolation_names(raw) <= set(env_file(ENV_EXAMPLE)), "document every ${VAR} in .env.example"
    for secret in SECRETS:
        assert env_file(ENV_EXAMPLE)[secret] == "", f"{secret} must be left for the user to fill in"
        with pytest.raises(ValueError, match=secret):  # compose refuses to start without it
            interpolate(compose_raw(), {**variables(), secret: ""})


def test_ports_and_health_checks_agree_with_the_settings_and_the_app(routes: Routes) -> None:
    svc = services()
    planner = planner_settings(service_environment(svc["planner"]))
    api_port: int = planner.api_port
    assert planner.api_host == "0.0.0.0"  # reachable from outside the container
    assert [str(p).rsplit(":", 1)[-1] for p in svc["planner"]["ports"]] == [str(api_port)]
    health = " ".join(healthcheck_argv(svc["planner"]))
    assert urls_in(health) == [("127.0.0.1", api_port, "/readyz")]
    assert routes.matches("/readyz")

    worker = scheduler_settings(service_environment(svc["worker"]))
    metrics_port = worker.metrics_port
    assert metrics_port is not None
    assert [str(p).rsplit(":", 1)[-1] for p in svc["worker"]["ports"]] == [str(metrics_port)]
    assert urls_in(" ".join(healthcheck_argv(svc["worker"]))) == [("127.0.0.1", metrics_port, "/metrics")]

    agent = agent_settings(service_environment(svc["agent"]))
    assert agent.metrics_port is not None
    assert [str(p).rsplit(":", 1)[-1] for p in svc["agent"]["ports"]] == [str(agent.metrics_port)]

    # Services reach each other by service name and the port the other one listens on.
    agent_url = service_environment(svc["agent"])["AGENT_PLANNER_URL"]
    assert urls_in(agent_url) == [("planner", api_port, "/")]
    for name in ("planner", "worker"):
        sched = scheduler_settings(service_environment(svc[name]))
        assert sched.broker_url == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"  # Redis needs its password
        assert urls_in(sched.broker_url.replace(f"redis://:{SECRETS['REDIS_PASSWORD']}@", "http://")) == [
            ("redis", 6379, "/0")
        ]
        assert "@postgres:5432/" in sched.database_url
    # The API serves the result images the worker writes: one volume, one path.
    assert svc["planner"]["volumes"] == svc["worker"]["volumes"] == ["results:/data/results"]
    for name in ("planner", "worker"):
        assert service_environment(svc[name])["SCHEDULER_RESULTS_DIR"] == "/data/results"


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0] in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            assert not any(w.startswith("--from") for w in words), "no multi-stage copies expected"
            sources += args[:-1]
    return sources


def test_build_contexts_dockerfiles_and_copy_sources_exist() -> None:
    built = {name: s["build"] for name, s in services().items() if "build" in s}
    assert set(built) >= {"planner", "worker"}
    for name, build in built.items():
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == REPO, f"{name}: build from the repository root"
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().split()
        for source in _copy_sources(dockerfile):
            assert (context / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            assert f"!{source.rstrip('/')}" in [i.rstrip("/") for i in ignore], f"{source} is excluded from the context"
        for inv in invocations_in_argv(_cmd(dockerfile), dockerfile.name):
            assert check_invocation(inv) == []


def _cmd(dockerfile: Path) -> list[str]:
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1
    argv: list[str] = json.loads(lines[0][4:])
    return argv


def test_the_planner_image_has_no_torch_and_the_agent_image_the_agent_extra() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert any(dep.startswith("torch") for dep in extras["agent"])
    assert not any(dep.startswith("torch") for dep in pyproject["project"]["dependencies"])
    planner = (COMPOSE_DIR / "planner.Dockerfile").read_text()
    agent = (COMPOSE_DIR / "agent.Dockerfile").read_text()
    assert re.search(r"^RUN pip install \. ", planner, re.M), "the planner image installs the base package only"
    assert "torch" not in "\n".join(line for line in planner.splitlines() if not line.startswith("#"))
    assert 'pip install ".[agent]"' in agent
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", agent, re.M)
    assert base
    assert "cuda" in base.group(1)
    assert base.group(1).startswith("pytorch/pytorch:")
    for text in (planner, agent):
        assert unknown_env_names(env_names_in(text)) == []
        assert "USER 10001" in text  # non-root, one uid in both images: they share the results volume
    worker = services()["worker"]
    assert worker["image"].startswith("gpu-fleet-agent:")  # torch: the worker builds stages
    assert services()["planner"]["image"].startswith("gpu-fleet-planner:")


def test_the_trial_fleet_workload_and_plan_route_to_the_workers_pool(tmp_path: Path) -> None:
    trial = COMPOSE_DIR / "trial"
    settings = Settings(
        environment="test",
        admin_token=SecretStr(SECRETS["PLANNER_ADMIN_TOKEN"]),
        database_url=f"sqlite:///{tmp_path / 'trial.db'}",
        seed_reference_data=False,
        heartbeat_sweep_s=0,
    )
    admin = {"Authorization": f"Bearer {SECRETS['PLANNER_ADMIN_TOKEN']}"}
    fleet_name = services()["worker"]["environment"]["SCHEDULER_FLEET"]
    with TestClient(create_app(settings)) as client:
        fleet = json.loads((trial / "fleet.json").read_text())
        assert fleet["name"] == fleet_name
        assert client.post("/v1/fleets", json=fleet, headers=admin).status_code == 201
        workload = json.loads((trial / "workload.json").read_text())
        assert client.post(f"/v1/fleets/{fleet_name}/workloads", json=workload, headers=admin).status_code == 201
        plan = json.loads((trial / "plan.json").read_text())
        resp = client.post(f"/v1/fleets/{fleet_name}/plans", json=plan, headers=admin)
        assert resp.status_code == 201, resp.text
        routing = client.get(f"/v1/fleets/{fleet_name}/routing", headers=admin).json()
    pools = [p["pool"] for p in routing["pools"]]
    worker_argv = service_argv(services()["worker"])
    assert worker_argv[worker_argv.index("--pool") + 1] in pools
    assert env_file(ENV_EXAMPLE)["WORKER_POOL"] in pools
    result = plan["result"]["workloads"][0]
    assert abs(result["cost_per_image"] - result["cost_per_hour"] / 3600 / workload["rate"]) < 1e-6
