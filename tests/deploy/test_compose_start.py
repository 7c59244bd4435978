"""The planner starts exactly as the compose file starts it, and answers /readyz.

The command is the compose file's, run by `sh` as the container runs it; the environment is the compose file's
(interpolated from .env.example with the secrets filled in), with only what points at the compose network
replaced: a PostgreSQL database this test creates on 127.0.0.1, and a free port on 127.0.0.1. `planner` on the
PATH is this checkout's (`python -m planner`), as `pip install .` makes it in the image. The compose health check
runs too, against that port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKENDS, drop_database, new_database_url
from tests.deploy.project import REPO, healthcheck_argv, service_argv, service_environment
from tests.deploy.test_compose import SECRETS, services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    if "postgresql" not in BACKENDS:  # the run was limited on purpose (PLANNER_TEST_DATABASES=sqlite)
        pytest.skip("PLANNER_TEST_DATABASES excludes postgresql")
    url, handle = new_database_url("postgresql", tmp_path, "compose")
    yield url
    drop_database(handle)


def console_scripts(tmp_path: Path) -> Path:
    """A bin folder whose `planner` runs this checkout, as the image's console script runs the installed one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "planner"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m planner "$@"\n')
    script.chmod(0o755)
    return bin_dir


@pytest.mark.postgres
@pytest.mark.slow
def test_the_planner_starts_as_compose_starts_it_and_is_ready(database: str, tmp_path: Path) -> None:
    service = services()["planner"]
    command = service_argv(service)
    env = service_environment(service)
    port = free_port()
    replaced = {
        "PLANNER_DATABASE_URL": database,
        "SCHEDULER_DATABASE_URL": database,
        "PLANNER_API_HOST": "127.0.0.1",
        "PLANNER_API_PORT": str(port),
    }
    assert set(replaced) <= set(env), "the test replaces only what the compose file sets"
    env.update(replaced)
    base = {k: os.environ[k] for k in ("HOME", "LANG", "TZ") if k in os.environ}
    path = f"{console_scripts(tmp_path)}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    server = subprocess.Popen(
        command,
        env={**base, "PATH": path, "PYTHONPATH": str(REPO), **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        ready = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        if ready is None:
            server.kill()
            pytest.fail(f"the planner never answered; exit {server.poll()}:\n{server.communicate()[0][-4000:]}")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready"}

        # The store was migrated and seeded by `planner db upgrade`: the catalog and the reference measurements.
        admin = {"Authorization": f"Bearer {SECRETS['PLANNER_ADMIN_TOKEN']}"}
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=admin, timeout=10)
        assert "sdxl" in [m["id"] for m in models.json()]
        measurements = httpx.get(f"http://127.0.0.1:{port}/v1/measurements?limit=1", headers=admin, timeout=10)
        assert measurements.json()["total"] > 0
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 401

        # The compose health check, against this port, passes.
        check = [sys.executable if a == "python" else a for a in healthcheck_argv(service)]
        check = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in check]
        assert subprocess.run(check, timeout=30, check=False).returncode == 0

        # `exec planner serve`: the process compose signals is the server itself, and it stops cleanly: uvicorn
        # shuts the app down (lifespan), then re-raises SIGTERM so the exit status says how it ended (143 in a shell).
        os.kill(server.pid, signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
        assert server.returncode in (0, -signal.SIGTERM), output[-4000:]
        assert "store at revision" in output
        assert "Application shutdown complete." in output
        assert "Finished server process" in output
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.communicate()
